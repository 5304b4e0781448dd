"""Base64 runs of a prompt decoded, so that what they hide can be scanned like the prompt."""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterator

# A base64 block may be wrapped over lines (PEM bodies: 64 columns, MIME: 76).
_LINE_BREAK = re.compile(r"[ \t]*\r?\n[ \t]*")
# The short last line of a wrapped block (with its padding).
_LAST_LINE = re.compile(r"[A-Za-z0-9+/_-]{1,15}={0,2}(?![A-Za-z0-9+/_=-])")
_PADDING = re.compile(r"={1,2}")
# Wrapped lines at least this long make a short line after them part of the block.
_MIN_WRAP_WIDTH = 16
# A run that does not decode to text, up to this long and not a multiple of four characters
# long, is decoded again without its first (length % 4) characters: base64 is written in
# groups of four, so that many may be a word glued before it ("refNDEx...").
_MAX_REALIGNED_RUN = 512
_CONTROL_BYTES = bytes(b for b in range(32) if b not in (9, 10, 13)) + b"\x7f"


def decode_base64_blocks(
    normalized: str, tokens: tuple[tuple[int, int], ...]
) -> Iterator[tuple[int, int, bytes, str | None]]:
    """(start, end, decoded bytes, decoded text or None when binary) for each base64 block.

    Blocks are the given tokens (runs of at least 12 base64 characters), joined with the lines
    that follow them when those are further lines of the same wrapped block, with their '='
    padding. Runs that do not decode are skipped.
    """
    index = 0
    count = len(tokens)
    while index < count:
        start, end = tokens[index]
        first = normalized[start:end]
        index += 1
        if first.islower() or first.isdigit() or (first.isalpha() and first.istitle()):
            # Base64 of text or of a key has capitals; hex digests, UUIDs, snake_case
            # identifiers and long words have none, or only a first one.
            continue
        pieces = [first]
        width = end - start
        while True:
            line_break = _LINE_BREAK.match(normalized, end)
            if line_break is None:
                break
            following = line_break.end()
            if index < count and tokens[index][0] == following:
                end = tokens[index][1]
                index += 1
                pieces.append(normalized[following:end])
                continue
            if width >= _MIN_WRAP_WIDTH:
                last = _LAST_LINE.match(normalized, following)
                # as encoders write it: the whole block a multiple of four characters
                if last is not None and (sum(map(len, pieces)) + len(last.group())) % 4 == 0:
                    end = last.end()
                    pieces.append(last.group())
            break
        padding = _PADDING.match(normalized, end)
        if padding is not None:
            end = padding.end()
            pieces.append(padding.group())
        payload = "".join(pieces)
        decoded = _decode(payload)
        if decoded is None:
            continue
        text = _as_text(decoded)
        skip = len(payload) % 4
        if text is None and skip and len(payload) <= _MAX_REALIGNED_RUN:
            shifted = _decode(payload[skip:])
            if shifted is not None and (shifted_text := _as_text(shifted)) is not None:
                decoded, text = shifted, shifted_text
        yield start, end, decoded, text


def _decode(payload: str) -> bytes | None:
    body = payload.rstrip("=")
    if "-" in body or "_" in body:
        body = body.replace("-", "+").replace("_", "/")
    if len(body) % 4 == 1:
        body = body[:-1]
    if len(body) < 4:
        return None
    try:
        return binascii.a2b_base64(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None


def _as_text(data: bytes) -> str | None:
    """`data` as text when it looks like text: UTF-8 with at most one bad byte in ten."""
    text = data.decode("utf-8", "replace")
    bad = text.count("\ufffd") + len(data) - len(data.translate(None, _CONTROL_BYTES))
    return text if bad * 10 <= len(text) else None
