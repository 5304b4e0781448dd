"""Masking a request's detector findings before it is sent to a cloud target with `redact`."""

# Each finding's span (offsets into one part, as `scan` reports them) is replaced by
# `[REDACTED:<detector>]`. Spans that overlap or touch are merged into one mask named after
# every detector involved; a span inside a base64 run is widened to the whole run (a partly
# masked run would still decode to part of what it hides), also over the lines of a wrapped
# block. The result is built from the original's pieces, so every offset keeps
# referring to the original text.
#
# Fail closed (design principle 4): a finding that names a part that does not exist or a span
# outside its part, or a classification in which a detector failed (what it would have found
# is unknown), raises RedactionError; the caller then treats the target as failed and never
# calls it.

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.policy.routing import Classification, PartFinding

__all__ = ["Redacted", "RedactionError", "mask", "redact"]

# Runs of base64 / URL-safe base64 characters as long as the detectors decode (12 or more): a
# span that overlaps or touches one is widened to all of it.
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_=-]{12,}")
# A wrapped block's lines are separated by a line break, with indentation around it.
_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
# Lines of a wrapped block are at least this long (PEM: 64, MIME: 76), but the last.
_MIN_WRAP_WIDTH = 16
_MAX_LISTED_DETECTORS = 4


class RedactionError(Exception):
    """The findings cannot be masked safely; the message never quotes the request's text."""


@dataclass(frozen=True)
class Redacted:
    parts: tuple[str, ...]
    masked: int  # how many masks were written (after merging)


def mask(detectors: Sequence[str]) -> str:
    """The text that replaces a span: `[REDACTED:cards]`, `[REDACTED:cards,emails]`."""
    names = sorted(set(detectors))
    listed = ",".join(names[:_MAX_LISTED_DETECTORS])
    more = len(names) - _MAX_LISTED_DETECTORS
    return f"[REDACTED:{listed}{f',+{more}' if more > 0 else ''}]"


def redact(parts: Sequence[str], classification: Classification) -> Redacted:
    """`parts` with every finding of `classification` masked; RedactionError when that cannot
    be done safely (a detector failed, or a finding does not fit its part)."""
    if classification.failures:
        names = ", ".join(sorted({failure.detector for failure in classification.failures}))
        raise RedactionError(f"detector {names} failed: what it would mask is unknown")
    by_part: dict[int, list[PartFinding]] = {}
    for item in classification.findings:
        _check(item, parts)
        by_part.setdefault(item.part, []).append(item)
    redacted = list(parts)
    masked = 0
    for index, items in by_part.items():
        spans = _merged(parts[index], items)
        masked += len(spans)
        redacted[index] = _replace(parts[index], spans)
    return Redacted(tuple(redacted), masked)


def _check(item: PartFinding, parts: Sequence[str]) -> None:
    finding = item.finding
    if not 0 <= item.part < len(parts):
        raise RedactionError(
            f"finding of detector {finding.detector} names part {item.part}, "
            f"but the request has {len(parts)}"
        )
    length = len(parts[item.part])
    if not 0 <= finding.start < finding.end <= length:
        raise RedactionError(
            f"finding of detector {finding.detector} spans {finding.start}..{finding.end}, "
            f"outside part {item.part} of {length} characters"
        )


def _merged(text: str, items: list[PartFinding]) -> list[tuple[int, int, list[str]]]:
    """Spans widened over base64 blocks, then merged where they overlap or touch; in order."""
    blocks = _base64_blocks(text)
    block_starts = [block[0] for block in blocks]
    spans = sorted(
        (
            *_widened(blocks, block_starts, item.finding.start, item.finding.end),
            item.finding.detector,
        )
        for item in items
    )
    merged: list[tuple[int, int, list[str]]] = []
    for start, end, detector in spans:
        if merged and start <= merged[-1][1]:
            last_start, last_end, names = merged[-1]
            names.append(detector)
            merged[-1] = (last_start, max(last_end, end), names)
        else:
            merged.append((start, end, [detector]))
    return merged


def _base64_blocks(text: str) -> list[tuple[int, int]]:
    """Base64 runs, a wrapped block's lines joined into one; in order, apart."""
    blocks: list[tuple[int, int]] = []
    for run in _BASE64_RUN.finditer(text):
        if blocks:
            last_start, last_end = blocks[-1]
            between = _LINE_BREAK.fullmatch(text, last_end, run.start())
            if between is not None and last_end - last_start >= _MIN_WRAP_WIDTH:
                blocks[-1] = (last_start, run.end())
                continue
        blocks.append(run.span())
    return blocks


def _widened(
    blocks: list[tuple[int, int]], block_starts: list[int], start: int, end: int
) -> tuple[int, int]:
    """The span grown to cover every base64 block it overlaps or touches."""
    index = bisect.bisect_right(block_starts, end) - 1  # the last block starting by `end`
    while index >= 0 and blocks[index][1] >= start:
        block_start, block_end = blocks[index]
        start, end = min(start, block_start), max(end, block_end)
        index -= 1
    return start, end


def _replace(text: str, spans: list[tuple[int, int, list[str]]]) -> str:
    """The text with each (sorted, disjoint) span replaced; built from the original's pieces,
    so that every offset refers to the original text (linear, unlike replacing in place)."""
    pieces: list[str] = []
    position = 0
    for start, end, names in spans:
        pieces += (text[position:start], mask(names))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)
