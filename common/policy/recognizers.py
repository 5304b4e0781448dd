"""The built-in recognizers of personal data (cards, IBANs, SSNs, emails, phones, IPs), by kind."""

# Each recognizer yields spans of a prepared text's normalised form. Every one starts from
# something cheap to find (the shared digit runs, long tokens, an "@", a literal) and runs its
# checks only there, so that an ordinary prompt costs a few passes of C-speed searching, not
# one regular-expression pass per recognizer. The credential recognizers are in
# common.policy.credential_recognizers; RECOGNIZERS (below) maps every built-in kind to one.

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from itertools import pairwise

from common.policy.checksums import (
    IBAN_LENGTHS,
    card_lengths,
    iban_valid,
    ipv4_octets_valid,
    luhn_valid,
    us_ssn_valid,
)
from common.policy.credential_recognizers import (
    find_cloud_access_keys,
    find_private_keys,
    find_secrets,
)
from common.policy.prepared_text import PreparedText

Span = tuple[int, int]
Recognizer = Callable[[PreparedText], Iterator[Span]]

_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _inside_uuid(normalized: str, start: int, end: int) -> bool:
    for match in _UUID.finditer(normalized, max(0, start - 36), min(len(normalized), end + 36)):
        if match.start() <= start and end <= match.end():
            return True
    return False


def _inside(spans: tuple[Span, ...], start: int, end: int) -> bool:
    return any(s <= start and end <= e for s, e in spans)


def _iban_spans(text: PreparedText) -> tuple[Span, ...]:
    return text.memo("iban", lambda: tuple(find_ibans(text)))


def _card_spans(text: PreparedText) -> tuple[Span, ...]:
    return text.memo("payment_card", lambda: tuple(find_payment_cards(text)))


def find_payment_cards(text: PreparedText) -> Iterator[Span]:
    """12-19 digits of whole digit groups, a card network's prefix and length, Luhn-valid,
    not part of an IBAN or a UUID."""
    normalized = text.normalized
    for run in text.digit_runs():
        bounds, digits, groups = run.bounds, run.digits, run.groups
        total = bounds[-1]
        if total < 12:
            continue
        after_plus = run.start > 0 and normalized[run.start - 1] == "+"  # a phone number
        count = len(groups)
        i = 0
        while i < count and total - bounds[i] >= 12:
            first = bounds[i]
            if digits[first] in "23456" and not (i == 0 and after_plus):
                for length in card_lengths(digits[first : first + 4]):  # the longest first
                    j = bisect_left(bounds, first + length, i + 1)
                    if j > count or bounds[j] != first + length:
                        continue  # no window of whole groups this long
                    start, end = groups[i][0], groups[j - 1][1]
                    if (
                        luhn_valid(digits[first : first + length])
                        and not _inside_uuid(normalized, start, end)
                        and not _inside(_iban_spans(text), start, end)
                    ):
                        yield start, end
                        i = j
                        break
                else:
                    i += 1
                continue
            i += 1


_SSN_CONTEXT = re.compile(r"(?<![a-z])(?:ssn|ss#|social\s+security|soc\.?\s*sec)")


def find_us_ssns(text: PreparedText) -> Iterator[Span]:
    """Nine digits grouped 3-2-4 or spaced out digit by digit ("1 2 3-4 5-6 7 8 9"), in issued
    ranges, not part of a card number, an IBAN or a dotted IPv4 address; nine digits in one
    group only after "SSN"/"social security" (within 40 characters)."""
    normalized = text.normalized
    for run in text.digit_runs():
        bounds, groups = run.bounds, run.groups
        total = bounds[-1]
        if total < 9:
            continue
        count = len(groups)
        i = 0
        while i < count and total - bounds[i] >= 9:
            first = bounds[i]
            j = bisect_left(bounds, first + 9, i + 1)
            if j <= count and bounds[j] == first + 9:
                start, end = groups[i][0], groups[j - 1][1]
                if j == i + 1:
                    shaped = (
                        _SSN_CONTEXT.search(text.lowered, max(0, start - 40), start) is not None
                    )
                else:
                    shaped = j - i == 9 or (
                        j - i == 3 and bounds[i + 1] - first == 3 and bounds[i + 2] - first == 5
                    )
                if (
                    shaped
                    and us_ssn_valid(run.digits[first : first + 9])
                    and not _inside(_card_spans(text), start, end)
                    and not _inside(_iban_spans(text), start, end)
                    and not _dotted_quad(normalized, groups[i:j])
                ):
                    yield start, end
                    i = j
                    continue
            i += 1


def _dotted_quad(normalized: str, groups: tuple[Span, ...]) -> bool:
    return len(groups) == 4 and all(normalized[a[1] : b[0]] == "." for a, b in pairwise(groups))


def _nanp_valid(area: str, exchange: str) -> bool:
    return area[0] in "23456789" and area[1:] != "11" and exchange[0] in "23456789"


def find_phone_numbers(text: PreparedText) -> Iterator[Span]:
    """International "+CC ..." (8-15 digits) and North American numbers grouped 3-3-4, with an
    optional leading 1 ("(212) 555-0147", "1-212-555-0147"); a bare run of ten digits is not."""
    normalized = text.normalized
    for run in text.digit_runs():
        bounds, digits, groups = run.bounds, run.digits, run.groups
        total = bounds[-1]
        if total < 7:
            continue
        start = run.start
        plus = start - 1 if start > 0 and normalized[start - 1] == "+" else -1
        if plus < 0 and start > 1 and normalized[start - 1] == " " and normalized[start - 2] == "+":
            plus = start - 2
        if plus >= 0:
            last = bisect_right(bounds, 15) - 1
            if bounds[last] >= 8 and digits[0] != "0":
                yield plus, groups[last - 1][1]
            continue
        sizes = [b - a for a, b in groups]
        count = len(groups)
        i = 0
        while i + 3 <= count:
            first = bounds[i]
            if (
                sizes[i] == 1
                and digits[first] == "1"
                and sizes[i + 1 : i + 4] == [3, 3, 4]
                and _nanp_valid(digits[first + 1 : first + 4], digits[first + 4 : first + 7])
            ):
                yield groups[i][0], groups[i + 3][1]
                i += 4
                continue
            if sizes[i : i + 3] == [3, 3, 4] and _nanp_valid(
                digits[first : first + 3], digits[first + 3 : first + 6]
            ):
                opening = groups[i][0] - 1
                begin = opening if opening >= 0 and normalized[opening] == "(" else groups[i][0]
                yield begin, groups[i + 2][1]
                i += 3
                continue
            i += 1


# Words that make "1.2.3.4" a version or a section number, not an address ("v1.2.3.4" too).
_NOT_AN_ADDRESS = frozenset(
    ("v", "version", "ver", "release", "build", "firmware", "kernel", "section", "sec", "§",
     "chapter", "clause", "step", "figure", "fig", "table", "rule", "item", "python", "node",
     "java", "ruby", "php", "perl", "rust", "go")
)  # fmt: skip
_HEX_COLON = frozenset("0123456789abcdef:")
_IPV6_MAX_LENGTH = 45
_IPV4_TAIL = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _find_ipv4(text: PreparedText) -> Iterator[Span]:
    normalized = text.normalized
    for run in text.digit_runs():
        groups = run.groups
        count = len(groups)
        if count < 4 or "." not in normalized[run.start : run.end]:
            continue
        k = 0
        while k < count:
            m = k  # the chain of groups joined by single dots starting at group k
            while m + 1 < count and groups[m][1] + 1 == groups[m + 1][0]:
                if normalized[groups[m][1]] != ".":
                    break
                m += 1
            if m - k == 3:
                start, end = groups[k][0], groups[m][1]
                octets = [normalized[a:b] for a, b in groups[k : m + 1]]
                if (
                    ipv4_octets_valid(octets)
                    and (start == 0 or not normalized[start - 1].isalnum())
                    and not _after_version_word(text.lowered, start)
                ):
                    yield start, end
            k = m + 1


def _after_version_word(lowered: str, start: int) -> bool:
    before = lowered[max(0, start - 24) : start].rstrip(" \t:#")
    words = before.split()
    if not words:
        return False
    return words[-1].lstrip("([\"'").rstrip(".") in _NOT_AN_ADDRESS


def _find_ipv6(text: PreparedText) -> Iterator[Span]:
    lowered = text.lowered
    double = "::" in lowered
    if not double and lowered.count(":") < 6:  # a full address has 7 colons (6 with IPv4)
        return
    length = len(lowered)
    covered = -1
    colon = lowered.find(":")
    while colon != -1:
        if colon >= covered and (
            (double and lowered.startswith("::", colon))
            or (
                0 < colon < length - 1
                and lowered[colon - 1] in _HEX_COLON
                and lowered[colon + 1] in _HEX_COLON
                and lowered.count(":", colon, colon + 36) >= 6
            )
        ):
            start = colon
            while (
                start > max(0, covered) and lowered[start - 1] in _HEX_COLON and colon - start < 40
            ):
                start -= 1
            end = colon
            while end < length and lowered[end] in _HEX_COLON and end - start < _IPV6_MAX_LENGTH:
                end += 1
            if end < length and lowered[end] == ".":  # an IPv4 tail: "::ffff:192.0.2.1"
                tail = _IPV4_TAIL.match(lowered, lowered.rfind(":", start, end) + 1)
                if tail is not None:
                    end = tail.end()
            covered = end
            if _ipv6_candidate(lowered, start, end):
                yield start, end
        colon = lowered.find(":", max(colon + 1, covered))


def _ipv6_candidate(lowered: str, start: int, end: int) -> bool:
    if (start > 0 and (lowered[start - 1].isalnum() or lowered[start - 1] == "_")) or (
        end < len(lowered) and (lowered[end].isalnum() or lowered[end] == "_")
    ):
        return False
    candidate = lowered[start:end]
    if "::" not in candidate and candidate.count(":") < (6 if "." in candidate else 7):
        return False
    groups = [g for g in candidate.replace(".", ":").split(":") if g]
    if len(groups) < 2 or not any(c.isdigit() for c in candidate):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def find_ip_addresses(text: PreparedText) -> Iterator[Span]:
    """IPv4 dotted quads (octets 0-255, not a version or section number) and IPv6 addresses
    (validated by the ipaddress module; at least two groups and a digit)."""
    yield from _find_ipv4(text)
    yield from _find_ipv6(text)


_EMAIL_LOCAL_REVERSED = re.compile(r"[a-z0-9._%+\-]{1,64}")
_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)


def find_emails(text: PreparedText) -> Iterator[Span]:
    """local@domain.tld: found from each "@", the local part read leftwards."""
    normalized = text.normalized
    at = normalized.find("@")
    if at == -1:
        return
    reversed_lowered = text.reversed_lowered
    length = len(normalized)
    while at != -1:
        local = _EMAIL_LOCAL_REVERSED.match(reversed_lowered, length - at)
        if local is not None:
            start = at - (local.end() - local.start())
            while start < at and normalized[start] == ".":
                start += 1
            if start < at and normalized[at - 1] != ".":
                domain = _EMAIL_DOMAIN.match(normalized, at + 1, min(length, at + 256))
                if domain is not None:
                    yield start, domain.end()
                    at = normalized.find("@", domain.end())
                    continue
        at = normalized.find("@", at + 1)


# Where an IBAN starts, read leftwards from the start of a run of its digits in the reversed
# class bytes (letters "a", digits "0"): either the run's first two digits are the check digits
# and the country code is right before it, or the check digits and country code come before
# up to eight bank-code characters ("GB82 WEST 1234...", "KZ86 125K ZT50 0410...").
_S = rb"[ \n\r\-./\\_]{0,3}"
_IBAN_HEAD_BEFORE_CHECK_DIGITS = re.compile(_S + rb"a" + _S + rb"a(?![a0])")
_IBAN_HEAD_BEFORE_BANK_CODE = re.compile(
    _S + rb"(?:[a0]" + _S + rb"){0,8}?0" + _S + rb"0" + _S + rb"a" + _S + rb"a(?![a0])"
)
_IBAN_SEPARATORS = frozenset(" \t\r\n-./\\_")


def find_ibans(text: PreparedText) -> Iterator[Span]:
    """Country code, check digits and BBAN of the country's length, separators allowed
    anywhere, mod 97 == 1. Looked for before each run of eight or more digits (every IBAN
    format has one)."""
    normalized = text.normalized
    reversed_classes = text.memo("reversed classes", lambda: text.classes[::-1])
    length = len(normalized)
    seen: set[int] = set()
    for run in text.digit_runs():
        if run.bounds[-1] < 8:
            continue
        for head in (_IBAN_HEAD_BEFORE_CHECK_DIGITS, _IBAN_HEAD_BEFORE_BANK_CODE):
            match = head.match(reversed_classes, length - run.start)
            if match is None:
                continue
            start = length - match.end()
            if start in seen:
                continue
            seen.add(start)
            end = _iban_end(normalized, start)
            if end is not None:
                yield start, end
                break


def _iban_end(normalized: str, start: int) -> int | None:
    """Where the IBAN starting at `start` ends, if it is one."""
    chars: list[str] = []
    needed = 0
    separators = 0
    position = start
    end = start
    length = len(normalized)
    while position < length:
        char = normalized[position]
        if char.isascii() and char.isalnum():
            chars.append(char.upper())
            end = position + 1
            separators = 0
            if len(chars) == 2:
                needed = IBAN_LENGTHS.get("".join(chars), 0)
                if not needed:
                    return None
            elif len(chars) == needed:
                break
        elif char in _IBAN_SEPARATORS and separators < 3:
            separators += 1
        else:
            return None
        position += 1
    if not needed or len(chars) != needed:
        return None
    if end < length and normalized[end].isalnum():  # more glued on: a longer code
        return None
    return end if iban_valid("".join(chars)) else None


RECOGNIZERS: dict[str, Recognizer] = {
    "payment_card": find_payment_cards,
    "iban": find_ibans,
    "us_ssn": find_us_ssns,
    "email": find_emails,
    "phone_number": find_phone_numbers,
    "ip_address": find_ip_addresses,
    "private_key": find_private_keys,
    "cloud_access_key": find_cloud_access_keys,
    "secret": find_secrets,
}
