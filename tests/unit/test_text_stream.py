"""TextStream: UTF-8 reassembly across token pieces and stop-sequence holdback."""

from __future__ import annotations

from collections.abc import Iterable

from agent.engine.text_stream import TextStream


def feed_all(stream: TextStream, pieces: Iterable[bytes]) -> list[str]:
    return [stream.feed(piece) for piece in pieces]


def test_without_stop_sequences_everything_is_released_at_once() -> None:
    stream = TextStream(())
    assert feed_all(stream, [b"Hello", b", ", b"world"]) == ["Hello", ", ", "world"]
    assert stream.finish() == ""
    assert not stream.stopped


def test_empty_stop_sequences_are_ignored() -> None:
    stream = TextStream(("",))
    assert stream.feed(b"abc") == "abc"
    assert not stream.stopped


def test_text_that_may_start_a_stop_sequence_is_held_back() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"Hello E") == "Hello "
    assert stream.feed(b"N") == ""
    # "ENx" cannot become "END": all of it is released.
    assert stream.feed(b"x") == "ENx"
    assert not stream.stopped


def test_text_that_cannot_start_a_stop_sequence_is_released_immediately() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"Hello") == "Hello"


def test_stop_sequence_in_one_piece_cuts_the_text_before_it() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"Hello END and more") == "Hello "
    assert stream.stopped


def test_stop_sequence_split_across_several_pieces() -> None:
    stream = TextStream(("<|end|>",))
    released = feed_all(stream, [b"answer <", b"|e", b"n", b"d|", b">", b" trailing"])
    assert released == ["answer ", "", "", "", "", ""]
    assert stream.stopped


def test_partial_stop_match_that_fails_later_releases_the_held_text() -> None:
    stream = TextStream(("<|end|>",))
    assert feed_all(stream, [b"a <|e", b"nx"]) == ["a ", "<|enx"]
    assert not stream.stopped
    assert stream.finish() == ""


def test_text_before_a_stop_in_a_later_piece_is_released() -> None:
    stream = TextStream(("STOP",))
    assert stream.feed(b"one ST") == "one "
    assert stream.feed(b"x two STOP three") == "STx two "
    assert stream.stopped


def test_earliest_of_several_stop_sequences_wins() -> None:
    stream = TextStream(("second", "first"))
    assert stream.feed(b"text first then second") == "text "
    assert stream.stopped


def test_earliest_stop_wins_even_when_listed_last_and_longer() -> None:
    stream = TextStream(("B", "AAAA"))
    assert stream.feed(b"xAAAAyB") == "x"
    assert stream.stopped


def test_holdback_covers_the_longest_stop_sequence() -> None:
    stream = TextStream(("x", "abcd"))
    assert stream.feed(b"--abc") == "--"
    assert stream.feed(b"d") == ""
    assert stream.stopped


def test_after_a_stop_further_pieces_release_nothing() -> None:
    stream = TextStream(("END",))
    assert stream.feed(b"ok END") == "ok "
    assert stream.feed(b"more text") == ""
    assert stream.feed(b"END") == ""
    assert stream.finish() == ""
    assert stream.stopped


def test_finish_releases_held_text_when_no_stop_matched() -> None:
    stream = TextStream(("<|end|>",))
    assert stream.feed(b"done <|en") == "done "
    assert stream.finish() == "<|en"
    assert not stream.stopped


def test_two_byte_character_fed_one_byte_at_a_time() -> None:
    stream = TextStream(())
    pieces = [bytes([b]) for b in "é".encode()]
    assert len(pieces) == 2
    assert feed_all(stream, pieces) == ["", "é"]


def test_emoji_split_into_four_pieces() -> None:
    stream = TextStream(("STOP",))
    encoded = "🙂".encode()
    assert len(encoded) == 4
    released = feed_all(stream, [b"hi ", *(bytes([b]) for b in encoded), b"!"])
    assert released == ["hi ", "", "", "", "🙂", "!"]
    assert "".join(released) == "hi 🙂!"


def test_multibyte_split_inside_a_stop_sequence() -> None:
    stream = TextStream(("fin€",))
    euro = "€".encode()
    released = feed_all(stream, [b"x fin", euro[:1], euro[1:2], euro[2:], b"after"])
    assert "".join(released) == "x "
    assert stream.stopped


def test_multibyte_stop_prefix_that_does_not_match_is_released_whole() -> None:
    stream = TextStream(("é!",))
    e_acute = "é".encode()
    released = feed_all(stream, [b"caf", e_acute[:1], e_acute[1:], b"s"])
    assert released == ["caf", "", "", "és"]
    assert not stream.stopped


def test_incomplete_character_at_the_end_becomes_a_replacement_character() -> None:
    stream = TextStream(())
    assert stream.feed(b"ok" + "é".encode()[:1]) == "ok"
    assert stream.finish() == "\ufffd"


def test_invalid_bytes_are_replaced_not_raised() -> None:
    stream = TextStream(())
    assert stream.feed(b"a\xffb") == "a\ufffdb"
