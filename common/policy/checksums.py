"""The checks that tell a real identifier from a look-alike: Luhn, card networks, IBAN, SSN."""

from __future__ import annotations

from functools import lru_cache

# Luhn: every second digit from the right doubled, digits of the product summed.
_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")

# ISO 13616 IBAN lengths by country (SWIFT IBAN registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
IBAN_MAX_LENGTH = max(IBAN_LENGTHS.values())
_IBAN_LETTERS = {chr(c): str(c - ord("A") + 10) for c in range(ord("A"), ord("Z") + 1)}


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a string of ASCII digits."""
    data = digits.encode("ascii")
    total = sum(data[-1::-2]) + sum(data[-2::-2].translate(_DOUBLED)) - 48 * len(data)
    return total % 10 == 0


_ALL_CARD_LENGTHS = (19, 18, 17, 16, 15, 14, 13, 12)


@lru_cache(maxsize=10_000)
def card_lengths(prefix: str) -> tuple[int, ...]:
    """The lengths, longest first, a card number starting with these four digits may have
    (its network's, by the IIN): none for a prefix no network uses.

    Visa 4 (13, 16, 19 digits); Mastercard 51-55 and 2221-2720 (16); American Express 34, 37
    (15); Diners Club 300-305, 36, 38, 39 (14-19); JCB 3528-3589 (16-19); Discover, UnionPay
    and Maestro 6 (12-19); Maestro 50, 56-59 (12-19). Nothing else (no 0, 1, 7, 8, 9).
    """
    first, two, four = prefix[0], int(prefix[:2]), int(prefix[:4])
    if first == "4":
        return (19, 16, 13)
    if first == "6" or two in (50, 56, 57, 58, 59):
        return _ALL_CARD_LENGTHS
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return (16,)
    if two in (34, 37):
        return (15,)
    if two in (36, 38, 39) or 300 <= int(prefix[:3]) <= 305:
        return _ALL_CARD_LENGTHS[:-2]
    if 3528 <= four <= 3589:
        return _ALL_CARD_LENGTHS[:4]
    return ()


def card_network_matches(digits: str) -> bool:
    """Whether a number of this length may be a card of the network its prefix names."""
    return len(digits) >= 12 and len(digits) in card_lengths(digits[:4])


def iban_valid(iban: str) -> bool:
    """An IBAN without separators, upper case: known country, its length, mod 97 == 1."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban[2:4].isdigit():
        return False
    if not (iban.isascii() and iban.isalnum()):
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(_IBAN_LETTERS.get(c, c) for c in rearranged)
    return int(number) % 97 == 1


def us_ssn_valid(digits: str) -> bool:
    """Nine digits AAAGGSSSS outside the never-issued ranges: area 000, 666, 900-999; group 00;
    serial 0000."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def ipv4_octets_valid(octets: list[str]) -> bool:
    """Four decimal octets 0-255 without leading zeros."""
    return len(octets) == 4 and all(
        0 < len(o) <= 3 and o.isdigit() and (o == "0" or o[0] != "0") and int(o) <= 255
        for o in octets
    )
