"""Custom detector patterns: compiled with `regex`, refused when they can backtrack without end."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache

import regex

from common.policy.regex_structure import (
    EXOTIC,
    UNIVERSE,
    Alt,
    Atom,
    Look,
    PatternRefused,
    Repeat,
    Tree,
    parse_pattern,
)

MAX_PATTERN_CHARS = 512
PROBE_TIMEOUT_S = 0.1  # ordinary patterns take microseconds on the probe texts
PROBE_CHARS = 512  # quadratic searches take ~3 ms on it, cubic ones ~300 ms
PROBE_BUDGET_S = 0.5  # all probes of one pattern together
MAX_POSITIONS = 400  # character matchers after counted repeats are unrolled
MAX_PRODUCT_STEPS = 200_000
_UNROLL = 8  # {n,m} with both at most this is unrolled exactly; larger counts loop
_MATCHES_EMPTY = "can match empty text, so it would flag every request"
_TOO_COMPLEX = "is too complex to check for catastrophic backtracking; simplify it"


@lru_cache(maxsize=1024)
def check_pattern(pattern: str) -> str | None:
    """What is wrong with a detector pattern (a sentence fragment), or None when it is safe."""
    if not pattern:
        return "must not be empty"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS}"
    try:
        compiled = regex.compile(pattern)
    except (regex.error, ValueError, OverflowError) as exc:
        return f"does not compile: {exc}"
    try:
        tree = parse_pattern(pattern, compiled.flags)
        automaton = _Automaton()
        matches_empty = automaton.build(tree).nullable > 0
        spot = automaton.ambiguous_at()
    except PatternRefused as exc:
        return str(exc)
    if spot is not None:
        return (
            f"can backtrack catastrophically: the repetition near {pattern[spot : spot + 20]!r} "
            f"(offset {spot}) can match the same text in more than one way, as in (a+)+, "
            "(a|aa)* or (\\w+\\s?)*; make the repeated parts exclusive"
        )
    return _MATCHES_EMPTY if matches_empty else _probe(compiled, automaton.bits)


def _probe(compiled: regex.Pattern[str], bits: list[int]) -> str | None:
    """Searches crafted texts (repeated characters the pattern matches) with a timeout."""
    try:
        for text in ("", "a", " ", "0 a!", "\n"):
            if any(m.start() == m.end() for m in compiled.finditer(text, timeout=PROBE_TIMEOUT_S)):
                return _MATCHES_EMPTY
        reps = [UNIVERSE[(b & -b).bit_length() - 1] for b in bits if b & (EXOTIC - 1)]
        used = 0
        for b in bits:
            used |= b
        killer = next((c for c in "!\x00~#" if not used >> UNIVERSE.index(c) & 1), "\x00")
        singles = list(dict.fromkeys(reps))[:12]
        pumps = [*singles, "".join(reps)[:64], *(a + b for a in singles[:4] for b in singles[:4])]
        deadline = time.monotonic() + PROBE_BUDGET_S
        for pump in dict.fromkeys(p for p in pumps if p):
            body = pump * (PROBE_CHARS // len(pump) + 1)
            for text in (body, body + killer):
                compiled.search(text, timeout=PROBE_TIMEOUT_S)
            if time.monotonic() > deadline:
                return (
                    f"takes more than {PROBE_BUDGET_S:g} s on crafted {PROBE_CHARS}-character "
                    "texts (slow backtracking)"
                )
    except TimeoutError:
        return (
            f"takes more than {PROBE_TIMEOUT_S:g} s on a crafted {PROBE_CHARS}-character text "
            "(catastrophic backtracking)"
        )
    return None


@dataclass(slots=True)
class _Frag:
    nullable: int  # ways to match empty text, capped at 2
    first: dict[int, int]  # position -> ways to enter the fragment there
    last: dict[int, int]  # position -> ways to leave the fragment after it


def _add(a: dict[int, int], b: dict[int, int], times: int = 1) -> dict[int, int]:
    merged = dict(a)
    for key, count in b.items():
        merged[key] = min(2, merged.get(key, 0) + count * times)
    return {key: count for key, count in merged.items() if count}


class _Automaton:
    """A position automaton that counts ways: two ways to one step is an ambiguity."""

    def __init__(self) -> None:
        self.bits: list[int] = []
        self.offsets: list[int] = []
        self.follow: list[dict[int, int]] = []

    def build(self, tree: Tree) -> _Frag:
        if isinstance(tree, Atom):
            if len(self.bits) >= MAX_POSITIONS:
                raise PatternRefused(_TOO_COMPLEX)
            self.bits.append(tree.bits)
            self.offsets.append(tree.offset)
            self.follow.append({})
            return _Frag(0, {len(self.bits) - 1: 1}, {len(self.bits) - 1: 1})
        if isinstance(tree, Alt):
            frags = [self.build(option) for option in tree.options]
            first: dict[int, int] = {}
            last: dict[int, int] = {}
            for frag in frags:
                first, last = _add(first, frag.first), _add(last, frag.last)
            return _Frag(min(2, sum(f.nullable for f in frags)), first, last)
        if isinstance(tree, Look):
            self.build(tree.body)
            return _Frag(1, {}, {})
        if isinstance(tree, Repeat):
            return self._repeat(tree)
        frag = _Frag(1, {}, {})
        for item in tree.items:
            frag = self._concat(frag, self.build(item))
        return frag

    def _link(self, last: dict[int, int], first: dict[int, int]) -> None:
        for p, a in last.items():
            self.follow[p] = _add(self.follow[p], first, a)

    def _concat(self, a: _Frag, b: _Frag) -> _Frag:
        self._link(a.last, b.first)
        first = _add(a.first, b.first, a.nullable)
        return _Frag(min(2, a.nullable * b.nullable), first, _add(b.last, a.last, b.nullable))

    def _repeat(self, tree: Repeat) -> _Frag:
        low, high = tree.low, tree.high
        if high is not None and (high > _UNROLL or low > _UNROLL):
            low, high = min(low, _UNROLL), None  # a long count backtracks like a loop
        frag = _Frag(1, {}, {})
        for _ in range(max(low - (high is None), 0)):
            frag = self._concat(frag, self.build(tree.body))
        if high is None:
            loop = self.build(tree.body)
            self._link(loop.last, loop.first)
            nullable = loop.nullable if low else min(2, loop.nullable + 1)
            return self._concat(frag, _Frag(nullable, loop.first, loop.last))
        tail: _Frag | None = None
        for _ in range(high - low):  # (A(A(A)?)?)?: one way per count
            inner = self.build(tree.body)
            tail = inner if tail is None else self._concat(inner, tail)
            tail = _Frag(min(2, tail.nullable + 1), tail.first, tail.last)
        return frag if tail is None else self._concat(frag, tail)

    def ambiguous_at(self) -> int | None:
        """Offset of a loop that reads one text two ways (exponential backtracking), or None."""
        component = _components(self.follow)
        for p, successors in enumerate(self.follow):
            for q, count in successors.items():
                if count >= 2 and component[p] == component[q]:
                    return self.offsets[q]
        steps = 0
        seen = {(p, p) for p in range(len(self.bits))}
        queue = list(seen)
        while queue:
            a, b = queue.pop()
            for a2 in self.follow[a]:
                if component[a2] != component[a]:
                    continue
                for b2 in self.follow[b]:
                    steps += 1
                    if steps > MAX_PRODUCT_STEPS:
                        raise PatternRefused(_TOO_COMPLEX)
                    if component[b2] != component[b] or not self.bits[a2] & self.bits[b2]:
                        continue
                    if a != b and a2 == b2:  # two ways apart met again inside one loop
                        return self.offsets[min(a, b)]
                    pair = (min(a2, b2), max(a2, b2))
                    if pair not in seen:
                        seen.add(pair)
                        queue.append(pair)
        return None


def _components(follow: list[dict[int, int]]) -> list[int]:
    """Strongly connected component of each position (Kosaraju, without recursion)."""
    count = len(follow)
    order: list[int] = []
    visited = [False] * count
    for start in range(count):
        if visited[start]:
            continue
        visited[start] = True
        stack = [(start, iter(follow[start]))]
        while stack:
            node, successors = stack[-1]
            nxt = next((s for s in successors if not visited[s]), None)
            if nxt is None:
                stack.pop()
                order.append(node)
            else:
                visited[nxt] = True
                stack.append((nxt, iter(follow[nxt])))
    reverse: list[list[int]] = [[] for _ in range(count)]
    for p, edges in enumerate(follow):
        for q in edges:
            reverse[q].append(p)
    component = [-1] * count
    for root in reversed(order):
        if component[root] != -1:
            continue
        component[root], pending = root, [root]
        while pending:
            for q in reverse[pending.pop()]:
                if component[q] == -1:
                    component[q] = root
                    pending.append(q)
    return component
