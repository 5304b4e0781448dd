"""A prompt prepared once per request for every detector: normalised text and shared features."""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable
from itertools import accumulate
from typing import NamedTuple, TypeVar, cast

from common.policy.encoded_text import decode_base64_blocks
from common.policy.text_normalization import OffsetMap, normalize_with_offsets

T = TypeVar("T")

# How deep base64 inside decoded base64 is followed (the prompt itself is depth 0).
MAX_DECODE_DEPTH = 2
# Decoded runs that are text are scanned together, joined by this: it breaks digit runs,
# phrases and tokens, so that nothing found spans two runs by accident.
_LAYER_SEPARATOR = "\n|\n"


def _character_class(byte: int) -> int:
    """One byte per character of the normalised text (non-ASCII as "?"): digits -> "0",
    letters -> "a", space and tab -> " ", controls but newlines -> NUL, the rest as it is."""
    char = chr(byte)
    if char.isdigit():
        return ord("0")
    if char.isalpha():
        return ord("a")
    if char in " \t":
        return ord(" ")
    if (byte < 0x20 and char not in "\n\r") or byte == 0x7F:
        return 0
    return byte


_CLASS_TABLE = bytes(_character_class(b) for b in range(128)) + bytes(range(128, 256))
# Base64 (standard and URL-safe) characters -> "b", everything else -> " ".
_TOKEN_TABLE = bytes(
    ord("b") if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/-_") else ord(" ")
    for b in range(256)
)
# 12 base64 characters are 9 bytes: nine digits.
MIN_TOKEN_LENGTH = 12
_TOKEN_NEEDLE = b"b" * MIN_TOKEN_LENGTH
MIN_RUN_DIGITS = 4
_MIN_UNDOTTED_DIGITS = 7
# Digit groups joined by up to three separators (spaces, newlines, - . / \ _ and parentheses).
_DIGIT_RUN = re.compile(rb"0(?:[ \n\r\-./\\_()]{0,3}0){%d,}" % (MIN_RUN_DIGITS - 1))
_SEPARATOR_BYTES = b" \t\n\r-./\\_()"
_SEPARATORS_TO_SPACE = bytes.maketrans(_SEPARATOR_BYTES, b" " * len(_SEPARATOR_BYTES))


class DigitRun(NamedTuple):
    """Digit groups joined by separators: "4111 1111-1111.1111", "123 45 6789", "10.0.0.1".

    Offsets are into the normalised text. bounds[i] is the number of digits before group i;
    bounds[-1] == len(digits).
    """

    start: int
    end: int
    digits: str
    groups: tuple[tuple[int, int], ...]
    bounds: tuple[int, ...]


class PreparedText:
    """One text, normalised once; detectors read `normalized` (or `lowered`) and report spans
    through `original_span`, which maps them to offsets in the prompt given to scan().

    Features several detectors need (digit runs, long tokens, decoded base64) are computed on
    first use and kept. `decoded()` is the text of the prompt's base64 runs, itself prepared.
    """

    __slots__ = (
        "_binary",
        "_classes",
        "_data",
        "_decoded",
        "_decoded_done",
        "_lowered",
        "_memo",
        "_offsets",
        "_parent",
        "_reversed_lowered",
        "_run_spans",
        "_run_starts",
        "_runs",
        "_tokens",
        "depth",
        "normalized",
        "original",
    )

    def __init__(
        self,
        original: str,
        normalized: str,
        offsets: OffsetMap | None,
        data: bytes,
        classes: bytes,
        *,
        depth: int = 0,
        parent: PreparedText | None = None,
        run_spans: tuple[tuple[int, int], ...] = (),
        run_starts: tuple[int, ...] = (),
    ) -> None:
        self.original = original
        self.normalized = normalized
        self.depth = depth
        self._offsets = offsets
        self._data = data
        self._classes = classes
        self._parent = parent
        self._run_spans = run_spans
        self._run_starts = run_starts
        self._lowered: str | None = None
        self._reversed_lowered: str | None = None
        self._runs: tuple[DigitRun, ...] | None = None
        self._tokens: tuple[tuple[int, int], ...] | None = None
        self._decoded: PreparedText | None = None
        self._binary: tuple[tuple[int, int, bytes], ...] = ()
        self._decoded_done = False
        self._memo: dict[str, object] = {}

    @property
    def lowered(self) -> str:
        """`normalized` in lower case, offset for offset."""
        if self._lowered is None:
            lowered = self.normalized.lower()
            if len(lowered) != len(self.normalized):  # e.g. "İ" lowers to two characters
                lowered = "".join(low if len(low := c.lower()) == 1 else c for c in self.normalized)
            self._lowered = lowered
        return self._lowered

    @property
    def reversed_lowered(self) -> str:
        """`lowered` backwards: lets a pattern be matched leftwards from a position."""
        if self._reversed_lowered is None:
            self._reversed_lowered = self.lowered[::-1]
        return self._reversed_lowered

    @property
    def classes(self) -> bytes:
        """One byte per normalised character: "0" digit, "a" letter, " " space/tab, else itself
        (non-ASCII characters as "?")."""
        return self._classes

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """compute(), once per text and key: lets one recognizer reuse another's result."""
        if key not in self._memo:
            self._memo[key] = compute()
        return cast(T, self._memo[key])

    def span(self, start: int, end: int) -> tuple[int, int]:
        """A span of `normalized` as a span of `original`."""
        if self._offsets is None:
            return start, end
        return self._offsets.to_original(start, end)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """A span of `normalized` as a span of the prompt given to scan(): for decoded text,
        the span of the encoded run(s) it came from."""
        orig_start, orig_end = self.span(start, end)
        parent = self._parent
        if parent is None:
            return orig_start, orig_end
        starts = self._run_starts
        first = max(bisect_right(starts, orig_start) - 1, 0)
        last = max(bisect_right(starts, max(orig_start, orig_end - 1)) - 1, 0)
        return parent.original_span(self._run_spans[first][0], self._run_spans[last][1])

    def digit_runs(self) -> tuple[DigitRun, ...]:
        """Runs of digits with the separators allowed inside numbers that some recognizer can
        use: seven or more digits (cards, SSNs, phone numbers, IBANs), or four or more with
        three dots (IPv4 addresses). A year or a version number costs little more than being
        found."""
        if self._runs is None:
            normalized = self.normalized
            classes = self._classes
            runs = []
            for match in _DIGIT_RUN.finditer(classes):
                chunk = match.group()
                start, end = match.span()
                if chunk.isdigit():  # one group
                    if end - start >= _MIN_UNDOTTED_DIGITS:
                        runs.append(
                            DigitRun(
                                start, end, normalized[start:end], ((start, end),), (0, end - start)
                            )
                        )
                    continue
                if chunk.count(b"0") < _MIN_UNDOTTED_DIGITS and chunk.count(b".") < 3:
                    continue
                groups = []
                bounds = [0]
                position = start
                for piece in chunk.translate(_SEPARATORS_TO_SPACE).split(b" "):
                    if piece:
                        groups.append((position, position + len(piece)))
                        bounds.append(bounds[-1] + len(piece))
                    position += len(piece) + 1
                digits = self._data[start:end].translate(None, _SEPARATOR_BYTES).decode("ascii")
                runs.append(DigitRun(start, end, digits, tuple(groups), tuple(bounds)))
            self._runs = tuple(runs)
        return self._runs

    def tokens(self) -> tuple[tuple[int, int], ...]:
        """Spans of runs of at least 12 base64/URL-safe characters ([A-Za-z0-9+/_-]): where
        encoded data, key ids and API tokens can be. Ordinary prose has few or none."""
        if self._tokens is None:
            mapped = self._data.translate(_TOKEN_TABLE)
            spans = []
            position = mapped.find(_TOKEN_NEEDLE)
            while position != -1:
                end = mapped.find(b" ", position)
                if end == -1:
                    end = len(mapped)
                spans.append((position, end))
                position = mapped.find(_TOKEN_NEEDLE, end)
            self._tokens = tuple(spans)
        return self._tokens

    def decoded(self) -> PreparedText | None:
        """The text that this text's base64 runs decode to, prepared (None when there is none or
        at the depth limit). Its spans map back to the runs they were decoded from."""
        self._decode()
        return self._decoded

    def binary_blobs(self) -> tuple[tuple[int, int, bytes], ...]:
        """Base64 runs that decode to binary data: (start, end, first 64 bytes)."""
        self._decode()
        return self._binary

    def _decode(self) -> None:
        if self._decoded_done:
            return
        self._decoded_done = True
        if self.depth >= MAX_DECODE_DEPTH or not self.tokens():
            return
        texts: list[str] = []
        text_spans: list[tuple[int, int]] = []
        binary: list[tuple[int, int, bytes]] = []
        for start, end, data, text in decode_base64_blocks(self.normalized, self.tokens()):
            if text is not None:
                texts.append(text)
                text_spans.append((start, end))
            else:
                binary.append((start, end, data[:64]))
        self._binary = tuple(binary)
        if texts:
            starts = tuple(
                accumulate((len(t) + len(_LAYER_SEPARATOR) for t in texts[:-1]), initial=0)
            )
            self._decoded = _prepare(
                _LAYER_SEPARATOR.join(texts),
                depth=self.depth + 1,
                parent=self,
                run_spans=tuple(text_spans),
                run_starts=starts,
            )


def prepare(text: str) -> PreparedText:
    """Normalise a prompt once for all detectors (see common.policy.text_normalization)."""
    if not isinstance(text, str):
        raise TypeError(f"a prompt is a str, not {type(text).__name__}")
    return _prepare(text)


def _prepare(
    text: str,
    *,
    depth: int = 0,
    parent: PreparedText | None = None,
    run_spans: tuple[tuple[int, int], ...] = (),
    run_starts: tuple[int, ...] = (),
) -> PreparedText:
    if text.isascii():
        data = text.encode("ascii")
        classes = data.translate(_CLASS_TABLE)
        if b"\x00" not in classes:  # printable ASCII, tabs and newlines: nothing to normalise
            return PreparedText(
                text,
                text,
                None,
                data,
                classes,
                depth=depth,
                parent=parent,
                run_spans=run_spans,
                run_starts=run_starts,
            )
    normalized, offsets = normalize_with_offsets(text)
    data = normalized.encode("ascii", "replace")
    return PreparedText(
        text,
        normalized,
        offsets,
        data,
        data.translate(_CLASS_TABLE),
        depth=depth,
        parent=parent,
        run_spans=run_spans,
        run_starts=run_starts,
    )
