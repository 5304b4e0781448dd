"""Unicode normalisation of prompt text, with a map from normalised offsets back to the original."""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right

# Letters of other scripts that look like Latin ones: "АKIA" with a Cyrillic А must still read
# as an AWS key id. Only the look-alikes that matter for ids, keywords and key headers.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic capitals and small letters
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
        "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q",
        "Ԝ": "W", "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x",
        "ѕ": "s", "і": "i", "ј": "j", "ԛ": "q", "ԝ": "w", "һ": "h", "ԁ": "d", "ɡ": "g",
        # Greek capitals and small letters
        "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
        "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "ο": "o", "ν": "v",
        "κ": "k", "ρ": "p", "τ": "t", "υ": "u", "ι": "i",
    }
)  # fmt: skip

# Invisible characters that are not of a format/control category but render as nothing.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
# Prompt characters that need a look: anything outside printable ASCII, tab and newlines.
_SPECIAL_RUN = re.compile(r"[^\t\n\r\x20-\x7e]+")
# ord -> replacement, filled as characters are met; cleared when it grows past this many.
_CHAR_MAP: dict[int, str] = {}
_CHAR_MAP_LIMIT = 65_536
# Characters whose replacement is not exactly one character (removed, or expanded).
_IRREGULAR: set[str] = set()


def normalize_char(char: str) -> str:
    """What one character becomes before detection: removed, ASCII-folded or NFKC-normalised.

    Zero-width and other format characters, controls (but tab and newlines) and lone
    surrogates are removed; Unicode spaces become a space, line separators a newline, dashes a
    hyphen, decimal digits of any script their ASCII digit; the rest is NFKC (full-width forms,
    ligatures, superscripts) with Cyrillic/Greek look-alikes of Latin letters folded.
    """
    code = ord(char)
    if code < 0x80:
        return char if 0x20 <= code < 0x7F or char in "\t\n\r" else ""
    category = unicodedata.category(char)
    if (
        category in ("Cc", "Cf", "Cs")
        or char in _INVISIBLE
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
    ):
        return ""
    if category == "Zs":
        return " "
    if category in ("Zl", "Zp"):
        return "\n"
    if category == "Pd" or char == "\u2212":
        return "-"
    digit = unicodedata.decimal(char, None)
    if digit is not None:
        return str(digit)
    folded = unicodedata.normalize("NFKC", char).translate(_CONFUSABLES)
    if folded.isascii():
        return folded
    return "".join(_fold_after_nfkc(c) for c in folded)


def _fold_after_nfkc(char: str) -> str:
    if char.isascii():
        return char
    digit = unicodedata.decimal(char, None)
    if digit is not None:
        return str(digit)
    category = unicodedata.category(char)
    if category in ("Cc", "Cf", "Cs"):
        return ""
    if category == "Zs":
        return " "
    return "-" if category == "Pd" else char


def _maps_one_to_one(run: str) -> bool:
    """Whether each character of `run` maps to exactly one character: then the run can be
    translated at once. Puts the run's characters in the map first (unless there are too many
    distinct ones to keep: then False, and the run is normalised character by character)."""
    chars = set(run)
    if len(chars) > _CHAR_MAP_LIMIT:
        return False
    missing = [c for c in chars if ord(c) not in _CHAR_MAP]
    if missing:
        if len(_CHAR_MAP) + len(missing) > _CHAR_MAP_LIMIT:
            _CHAR_MAP.clear()
            _IRREGULAR.clear()
            missing = list(chars)
        for char in missing:
            replacement = normalize_char(char)
            _CHAR_MAP[ord(char)] = replacement
            if len(replacement) != 1:
                _IRREGULAR.add(char)
    return chars.isdisjoint(_IRREGULAR)


def normalize_fragment(text: str) -> str:
    """The normalised form of a short string (a keyword), as prepared prompts are normalised."""
    return normalize_with_offsets(text)[0]


class OffsetMap:
    """Maps spans of a normalised text back to the original: a list of breakpoints.

    A linear segment maps each normalised character to one original character; an atomic one
    maps the several characters one original character expanded to (a ligature) to it.
    Removed characters have no segment: they fall between segments.
    """

    __slots__ = ("_linear", "_norm_starts", "_orig_ends", "_orig_starts")

    def __init__(
        self,
        norm_starts: list[int],
        orig_starts: list[int],
        orig_ends: list[int],
        linear: list[bool],
    ) -> None:
        self._norm_starts = norm_starts
        self._orig_starts = orig_starts
        self._orig_ends = orig_ends
        self._linear = linear

    def to_original(self, start: int, end: int) -> tuple[int, int]:
        norm_starts = self._norm_starts
        if not norm_starts:
            return 0, 0
        i = max(bisect_right(norm_starts, start) - 1, 0)
        if self._linear[i]:
            orig_start = self._orig_starts[i] + (start - norm_starts[i])
        else:
            orig_start = self._orig_starts[i]
        if end <= start:
            return orig_start, orig_start
        j = max(bisect_right(norm_starts, end - 1) - 1, 0)
        if self._linear[j]:
            orig_end = self._orig_starts[j] + (end - norm_starts[j])
        else:
            orig_end = self._orig_ends[j]
        return orig_start, orig_end


class _OffsetMapBuilder:
    __slots__ = ("linear", "norm_len", "norm_starts", "orig_ends", "orig_starts")

    def __init__(self) -> None:
        self.norm_len = 0
        self.norm_starts: list[int] = []
        self.orig_starts: list[int] = []
        self.orig_ends: list[int] = []
        self.linear: list[bool] = []

    def add_linear(self, start: int, end: int) -> None:
        """Original [start, end) became as many normalised characters, one for one."""
        if end <= start:
            return
        if self.linear and self.linear[-1] and self.orig_ends[-1] == start:
            self.orig_ends[-1] = end
        else:
            self.norm_starts.append(self.norm_len)
            self.orig_starts.append(start)
            self.orig_ends.append(end)
            self.linear.append(True)
        self.norm_len += end - start

    def add_atomic(self, start: int, end: int, length: int) -> None:
        """Original [start, end) became `length` (> 0) normalised characters."""
        self.norm_starts.append(self.norm_len)
        self.orig_starts.append(start)
        self.orig_ends.append(end)
        self.linear.append(False)
        self.norm_len += length

    def build(self) -> OffsetMap | None:
        if len(self.linear) == 1 and self.linear[0] and self.orig_starts[0] == 0:
            return None  # the identity
        return OffsetMap(self.norm_starts, self.orig_starts, self.orig_ends, self.linear)


def normalize_with_offsets(text: str) -> tuple[str, OffsetMap | None]:
    """`text` normalised (see normalize_char) and the map back (None: offsets are unchanged).

    Printable ASCII is kept as it is; only runs of other characters are looked at, a whole run
    at once (str.translate) when each of its characters maps to exactly one character.
    """
    parts: list[str] = []
    offsets = _OffsetMapBuilder()
    position = 0
    for match in _SPECIAL_RUN.finditer(text):
        start, end = match.span()
        if start > position:
            offsets.add_linear(position, start)
            parts.append(text[position:start])
        run = match.group()
        if _maps_one_to_one(run):
            offsets.add_linear(start, end)
            parts.append(run.translate(_CHAR_MAP))
        else:
            for index, char in enumerate(run, start):
                replacement = _CHAR_MAP.get(ord(char))
                if replacement is None:  # not kept, or the map was cleared meanwhile
                    replacement = normalize_char(char)
                if len(replacement) == 1:
                    offsets.add_linear(index, index + 1)
                elif replacement:
                    offsets.add_atomic(index, index + 1, len(replacement))
                else:
                    continue
                parts.append(replacement)
        position = end
    if position == 0:
        return text, None
    if position < len(text):
        offsets.add_linear(position, len(text))
        parts.append(text[position:])
    return "".join(parts), offsets.build()
