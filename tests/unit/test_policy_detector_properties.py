"""Property tests of the detectors: valid identifiers hidden in random text are found however they
are written (separators, zero-width characters, full-width digits, base64), and scan never raises.
"""

from __future__ import annotations

import random
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.policy.checksums import IBAN_LENGTHS
from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.detectors import Scan, builtin_detector, keyword_detector, scan
from tests.sensitive_corpus import (
    CARD_PREFIXES,
    IBAN_COUNTRIES,
    LETTER_BANK_CODES,
    ZERO_WIDTH,
    iban_check_digits,
    luhn_check_digit,
    mixed_case,
    pem_body,
    private_key_pem,
    to_base64,
    to_fullwidth,
)

PROPERTIES = settings(
    max_examples=150,
    deadline=None,  # a shared two-core machine: timing varies
    database=None,  # nothing written into the checkout
    suppress_health_check=[HealthCheck.too_slow],
)
BUILTINS = [
    builtin_detector(kind, name=kind, level="restricted") for kind in BUILTIN_DETECTOR_KINDS
]
SEPARATORS = (" ", "-", ".", "/", " - ", "\n", "\r\n", "\u00a0", "\u2009", "\u3000", "\u2013")

# Words and punctuation around the value: random text that cannot itself be part of a number.
surrounding = st.text(alphabet=string.ascii_letters + " .,;:!?()'\"\n", max_size=120)


@st.composite
def card_numbers(draw: st.DrawFn) -> str:
    prefix, length = draw(st.sampled_from(CARD_PREFIXES))
    rest = draw(st.text(alphabet=string.digits, min_size=length - len(prefix) - 1, max_size=19))
    body = prefix + rest[: length - len(prefix) - 1]
    return body + luhn_check_digit(body)


@st.composite
def ibans(draw: st.DrawFn) -> str:
    country = draw(st.sampled_from(IBAN_COUNTRIES))
    length = IBAN_LENGTHS[country] - 4
    letters = LETTER_BANK_CODES.get(country, 0)
    bank = draw(st.text(alphabet=string.ascii_uppercase, min_size=letters, max_size=letters))
    account = draw(st.text(alphabet=string.digits, min_size=length - letters, max_size=length))
    bban = bank + account[: length - letters]
    return country + iban_check_digits(country, bban) + bban


@st.composite
def ssns(draw: st.DrawFn) -> str:
    area = draw(st.integers(1, 899).filter(lambda a: a != 666))
    group = draw(st.integers(1, 99))
    serial = draw(st.integers(1, 9999))
    return f"{area:03d}{group:02d}{serial:04d}"


@st.composite
def separated(draw: st.DrawFn, value: str, *, max_chunk: int = 4) -> str:
    """`value` cut into random chunks with a random separator (or none) in each gap."""
    chunks = []
    position = 0
    while position < len(value):
        size = draw(st.integers(1, max_chunk))
        chunks.append(value[position : position + size])
        position += size
    written = chunks[0]
    for chunk in chunks[1:]:
        written += draw(st.sampled_from(("", *SEPARATORS))) + chunk
    return written


@st.composite
def zero_width(draw: st.DrawFn, value: str) -> str:
    return "".join(c + draw(st.sampled_from(("", "", *ZERO_WIDTH))) for c in value)


def written_forms(value: str) -> st.SearchStrategy[str]:
    """How a prompt built to evade detection may write `value`."""
    return st.one_of(
        st.just(value),
        separated(value),
        separated(value).map(to_fullwidth),
        zero_width(value),
        separated(value).flatmap(zero_width),
        st.just(to_base64(value)),
        st.just(to_base64(f"the number is {value}.", wrap=16)),
    )


def find_kind(text: str, kind: str) -> list[tuple[int, int]]:
    result = scan(text, [builtin_detector(kind, name=kind, level="restricted")])
    assert result.failures == ()
    return [(f.start, f.end) for f in result.findings]


def assert_found(kind: str, before: str, written: str, after: str) -> None:
    text = f"{before} {written} {after}"
    start = len(before) + 1
    end = start + len(written)
    spans = find_kind(text, kind)
    assert any(s < end and start < e for s, e in spans), (kind, text, spans)


@PROPERTIES
@given(data=st.data(), before=surrounding, after=surrounding)
def test_any_valid_card_is_found_however_written(
    data: st.DataObject, before: str, after: str
) -> None:
    card = data.draw(card_numbers())
    assert_found("payment_card", before, data.draw(written_forms(card)), after)


@PROPERTIES
@given(data=st.data(), before=surrounding, after=surrounding)
def test_any_valid_iban_is_found_however_written(
    data: st.DataObject, before: str, after: str
) -> None:
    iban = data.draw(ibans())
    if data.draw(st.booleans()):
        iban = mixed_case(iban, random.Random(data.draw(st.integers(0, 1000))))
    assert_found("iban", before, data.draw(written_forms(iban)), after)


@PROPERTIES
@given(data=st.data(), before=surrounding, after=surrounding)
def test_any_valid_ssn_is_found_however_written(
    data: st.DataObject, before: str, after: str
) -> None:
    ssn = data.draw(ssns())
    separator = data.draw(st.sampled_from(SEPARATORS))
    grouped = separator.join((ssn[:3], ssn[3:5], ssn[5:]))
    spaced = separator.join(ssn)
    form = data.draw(
        st.one_of(
            st.just(grouped),
            st.just(spaced),
            st.just(to_fullwidth(grouped)),
            zero_width(grouped),
            st.just(to_base64(grouped)),
        )
    )
    assert_found("us_ssn", before, form, after)


@PROPERTIES
@given(seed=st.integers(0, 2**32), form=st.integers(0, 4), before=surrounding, after=surrounding)
def test_any_private_key_is_found_however_written(
    seed: int, form: int, before: str, after: str
) -> None:
    pem = private_key_pem(random.Random(seed))
    written = [
        pem,
        to_base64(pem),
        to_base64(pem, wrap=76),
        pem_body(pem),
        mixed_case(pem.split("\n", 1)[0], random.Random(seed)) + "\n" + pem.split("\n", 1)[1],
    ][form]
    assert_found("private_key", before, written, after)


def _check(result: Scan, text: str) -> None:
    assert all(0 <= f.start <= f.end <= len(text) for f in result.findings)
    assert result.failures == ()


EVERYTHING = st.characters(exclude_categories=())  # lone surrogates included
PIECES = st.sampled_from(
    (
        "4111 1111 1111 1111", "DE89 3704", "123-45-6789", "@", "a@b.co", "::", ":", "1.2.3.4",
        "-----BEGIN PRIVATE KEY-----", "-----END", "password=", "Bearer ", "AKIA", "eyJ",
        "NDExMSAxMTEx", "=", "\u200b", "４", "\x00", "\ud800", "ﬁ", "İ", "\n", " ", "0",
    )
)  # fmt: skip


@PROPERTIES
@given(text=st.text(alphabet=EVERYTHING, max_size=400))
def test_scan_never_raises_on_arbitrary_text(text: str) -> None:
    _check(scan(text, BUILTINS), text)


@PROPERTIES
@given(parts=st.lists(st.one_of(PIECES, st.text(alphabet=EVERYTHING, max_size=8)), max_size=60))
def test_scan_never_raises_on_text_made_of_detector_triggers(parts: list[str]) -> None:
    text = "".join(parts)
    detectors = [*BUILTINS, keyword_detector("k", ["private key", "ﬁle"], level="internal")]
    _check(scan(text, detectors), text)
