"""A regex pattern's structure: sequences, alternatives and repeats of character-set atoms."""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import regex

MAX_GROUP_DEPTH = 40

# One character per kind the analysis tells apart; an atom is the set of these it matches.
UNIVERSE = "".join(
    dict.fromkeys("aA0_ \t\n\r!-.@" + string.printable + "\x00\x7féßÆЖжαΩ中٣\u00a0\u2028İǅ😀")
)
EXOTIC = 1 << len(UNIVERSE)  # characters outside the universe (\p{Greek}, [^...])
ANY = (1 << len(UNIVERSE)) - 1 | EXOTIC
_COUNT = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_FUZZY = re.compile(r"\{[\d\s<=]*[eids]")
_FLAGS = re.compile(r"\(\?((?:[abefiLmprsuwx]|V[01])*)(?:-([abefiLmprsuwx]*))?([:)])")


class PatternRefused(Exception):
    """The pattern uses something this check does not accept; the message says what."""


@dataclass(frozen=True, slots=True)
class Atom:
    bits: int  # the UNIVERSE characters it matches (and EXOTIC)
    offset: int


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Tree, ...]


@dataclass(frozen=True, slots=True)
class Alt:
    options: tuple[Tree, ...]


@dataclass(frozen=True, slots=True)
class Repeat:
    body: Tree
    low: int
    high: int | None


@dataclass(frozen=True, slots=True)
class Look:
    body: Tree  # zero width; its inside is checked on its own


Tree = Atom | Seq | Alt | Repeat | Look
EMPTY = Seq(())


def _check_flags(pattern: str, flags: int) -> None:
    """VERSION1 and verbose patterns read differently; policies use neither."""
    if flags & regex.VERSION1:
        raise PatternRefused("uses VERSION1 syntax; policies use the default (VERSION0) syntax")
    if flags & regex.VERBOSE or re.search(r"\(\?[a-zA-Z0-9]*x", pattern):
        raise PatternRefused("uses verbose mode (?x), which policies do not allow")


def parse_pattern(pattern: str, flags: int) -> Tree:
    """The tree of a pattern that compiled with `flags`; PatternRefused for what is not followed."""
    _check_flags(pattern, flags)
    try:
        return _Parser(pattern, flags).parse()
    except (ValueError, IndexError):  # a construct this reader does not know
        raise PatternRefused("uses syntax the safety check cannot follow") from None


class _Parser:
    """The pattern's structure: character matchers, sequences, alternatives, repeats."""

    def __init__(self, pattern: str, flags: int) -> None:
        self.p = pattern
        self.i = 0
        self.depth = 0
        self.flags = flags & (regex.IGNORECASE | regex.DOTALL | regex.ASCII)
        for letter, flag in (("i", regex.IGNORECASE), ("s", regex.DOTALL)):
            if re.search(rf"\(\?[a-zA-Z0-9]*{letter}", pattern):  # scoped flags: everywhere
                self.flags |= flag
        self.cache: dict[str, int] = {}

    def parse(self) -> Tree:
        tree = self._alternation()
        if self.i != len(self.p):
            raise PatternRefused(f"has an unbalanced ')' at offset {self.i}")
        return tree

    def _alternation(self) -> Tree:
        options = [self._sequence()]
        while self.p.startswith("|", self.i):
            self.i += 1
            options.append(self._sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def _sequence(self) -> Tree:
        items: list[Tree] = []
        while self.i < len(self.p) and self.p[self.i] not in "|)":
            items.append(self._quantified(self._atom()))
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def _quantified(self, item: Tree) -> Tree:
        p = self.p
        while self.i < len(p):
            char = p[self.i]
            if char in "*+?":
                low, high = {"*": (0, None), "+": (1, None), "?": (0, 1)}[char]
                self.i += 1
            elif char == "{" and (count := _COUNT.match(p, self.i)) and count.group() != "{}":
                low = int(count[1] or 0)
                high = low if count[2] is None else int(count[3]) if count[3] else None
                self.i = count.end()
            elif char == "{" and _FUZZY.match(p, self.i):
                raise PatternRefused(
                    "uses fuzzy matching ({e<=1} and the like), which is not allowed"
                )
            else:
                return item
            if p.startswith(("?", "+"), self.i):  # lazy or possessive: the same ambiguity
                self.i += 1
            item = Repeat(item, low, high)
        return item

    def _atom(self) -> Tree:
        p, i = self.p, self.i
        char = p[i]
        if char == "(":
            return self._group()
        if char == "\\":
            return self._escape()
        if char == "[":
            end = self._class_end(i)
        elif char in "^$":
            self.i += 1
            return EMPTY
        elif char in "*+?":
            raise PatternRefused(f"has nothing to repeat at offset {i}")
        else:
            end = i + 1
        self.i = end
        return self._charset(p[i:end] if char in "[." else regex.escape(char), i)

    def _group(self) -> Tree:
        p, i = self.p, self.i
        self.depth += 1
        if self.depth > MAX_GROUP_DEPTH:
            raise PatternRefused(f"nests groups deeper than {MAX_GROUP_DEPTH}")
        look = False
        if p.startswith("(?#", i):
            self.i = p.index(")", i) + 1
            self.depth -= 1
            return EMPTY
        if p.startswith("(?P=", i):
            self.i = p.index(")", i) + 1
            self.depth -= 1
            return Atom(ANY, i)  # a backreference: anything
        if p.startswith(("(?:", "(?>", "(?|"), i):
            self.i = i + 3
        elif p.startswith(("(?=", "(?!"), i) or p.startswith(("(?<=", "(?<!"), i):
            self.i, look = i + (3 if p[i + 2] in "=!" else 4), True
        elif p.startswith("(?P<", i) or (p.startswith("(?<", i) or p.startswith("(?'", i)):
            self.i = p.index(">" if p[i + 2] != "'" else "'", i + 3) + 1
        elif p.startswith("(?(", i):
            self.i = p.index(")", i + 3) + 1  # a conditional: both branches are alternatives
        elif p.startswith("(?", i):
            flags = _FLAGS.match(p, i)
            if flags is None:
                raise PatternRefused(f"uses {p[i : i + 6]!r} (offset {i}), which is not allowed")
            self.i = flags.end()
            if flags[3] == ")":
                self.depth -= 1
                return EMPTY
        else:
            self.i = i + 1
        body = self._alternation()
        if not p.startswith(")", self.i):
            raise PatternRefused(f"has an unclosed group at offset {i}")
        self.i += 1
        self.depth -= 1
        return Look(body) if look else body

    def _escape(self) -> Tree:
        p, i = self.p, self.i
        code = p[i + 1]
        end = i + 2
        if code in "bBAZzGKmM":
            self.i = end
            return EMPTY
        if code.isdigit():
            octal = re.match(r"0[0-7]{0,2}|[0-7]{3}", p[i + 1 : i + 4])
            if octal is None:  # \1 .. \99: a backreference
                self.i = i + 1 + len(re.match(r"\d\d?", p[i + 1 :]).group())  # type: ignore[union-attr]
                return Atom(ANY, i)
            end = i + 1 + len(octal.group())
        elif code == "g" and p.startswith("<", end):
            self.i = p.index(">", end) + 1
            return Atom(ANY, i)
        elif code in "pPNx" and p.startswith("{", end):
            end = p.index("}", end) + 1
        elif code in "pP":
            end += 1
        else:
            end += {"x": 2, "u": 4, "U": 8}.get(code, 0)
        self.i = end
        return Atom(ANY, i) if code == "X" else self._charset(p[i:end], i)

    def _class_end(self, i: int) -> int:
        p, j = self.p, i + 1
        j += p.startswith("^", j)
        j += p.startswith("]", j)
        while j < len(p):
            if p[j] == "\\":
                j += 2
                if p[j - 1] in "pPNx" and p.startswith("{", j):
                    j = p.index("}", j) + 1
            elif p.startswith("[:", j) and (close := p.find(":]", j + 2)) != -1:
                j = close + 2
            elif p[j] == "]":
                return j + 1
            else:
                j += 1
        raise PatternRefused(f"has an unterminated character class at offset {i}")

    def _charset(self, text: str, offset: int) -> Atom:
        if text not in self.cache:
            try:
                matcher = regex.compile(text, self.flags)
            except regex.error:
                self.cache[text] = ANY
            else:
                bits = 0
                for match in matcher.finditer(UNIVERSE):
                    bits |= 1 << match.start()
                if bits == 0 or bits.bit_count() > len(UNIVERSE) // 2:
                    bits |= EXOTIC
                self.cache[text] = bits
        return Atom(self.cache[text], offset)
