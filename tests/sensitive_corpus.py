"""A deterministic (seeded) generator of labelled prompts for the detector tests and benchmark.

Sensitive prompts of each built-in detector kind, plain and in evasive variants (separators,
zero-width characters, full-width digits, base64, mixed case, split across lines), and
realistic non-sensitive prompts full of look-alikes (Luhn-invalid card numbers, IBANs with bad
check digits, never-issued SSNs, dates, versions, UUIDs, order numbers, code).
"""

from __future__ import annotations

import base64
import json
import random
import string
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.policy.checksums import IBAN_LENGTHS

ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")
SEPARATORS = (" ", "-", ".", "/", "\u200b", " - ", "\n", "\u00a0", "\u2009")


@dataclass(frozen=True)
class LabelledPrompt:
    text: str
    kinds: frozenset[str]  # the built-in kinds it contains; empty: not sensitive
    variant: str  # "plain", "separators", "fullwidth", "base64", ... or the look-alike's name
    spans: tuple[tuple[int, int], ...] = ()  # where the sensitive values are in `text`


# ---------------------------------------------------------------------------- valid values

CARD_PREFIXES: tuple[tuple[str, int], ...] = (
    ("4", 16), ("4", 13), ("4", 19), ("51", 16), ("55", 16), ("2221", 16), ("2720", 16),
    ("34", 15), ("37", 15), ("6011", 16), ("65", 16), ("62", 17), ("3528", 16), ("36", 14),
    ("300", 14), ("5018", 12), ("6759", 19),
)  # fmt: skip


def luhn_check_digit(body: str) -> str:
    total = 0
    for index, char in enumerate(reversed(body)):
        digit = int(char)
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return str((10 - total % 10) % 10)


def valid_card(rng: random.Random) -> str:
    prefix, length = rng.choice(CARD_PREFIXES)
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + luhn_check_digit(body)


def invalid_card(rng: random.Random) -> str:
    """A card-shaped number whose Luhn check digit is wrong."""
    card = valid_card(rng)
    wrong = (int(card[-1]) + rng.randint(1, 9)) % 10
    return card[:-1] + str(wrong)


LETTER_BANK_CODES = {"GB": 4, "NL": 4, "IE": 4, "MT": 4, "BG": 4, "QA": 4, "KW": 4, "JO": 4}
IBAN_COUNTRIES = (
    "DE", "FR", "GB", "ES", "IT", "NL", "BE", "CH", "AT", "PL", "SE", "NO", "DK", "FI", "IE",
    "PT", "MT", "BG", "QA", "KW", "JO", "SA", "TR", "RO", "HU", "CZ", "LU", "LI",
)  # fmt: skip


def iban_check_digits(country: str, bban: str) -> str:
    rearranged = bban + country + "00"
    number = "".join(str(int(c, 36)) for c in rearranged)
    return f"{98 - int(number) % 97:02d}"


def valid_iban(rng: random.Random, country: str | None = None) -> str:
    country = country or rng.choice(IBAN_COUNTRIES)
    length = IBAN_LENGTHS[country] - 4
    letters = LETTER_BANK_CODES.get(country, 0)
    bban = "".join(rng.choice(string.ascii_uppercase) for _ in range(letters)) + "".join(
        rng.choice(string.digits) for _ in range(length - letters)
    )
    return country + iban_check_digits(country, bban) + bban


def invalid_iban(rng: random.Random) -> str:
    iban = valid_iban(rng)
    wrong = (int(iban[2:4]) + rng.randint(1, 50)) % 97 + 2
    return f"{iban[:2]}{wrong:02d}{iban[4:]}"


def group_iban(iban: str, separator: str = " ") -> str:
    return separator.join(iban[i : i + 4] for i in range(0, len(iban), 4))


def valid_ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}{rng.randint(1, 99):02d}{rng.randint(1, 9999):04d}"


def invalid_ssn(rng: random.Random) -> str:
    """SSN-shaped but never issued: area 000, 666 or 9xx, group 00 or serial 0000."""
    area, group, serial = rng.randint(1, 899), rng.randint(1, 99), rng.randint(1, 9999)
    flaw = rng.randrange(5)
    if flaw == 0:
        area = 0
    elif flaw == 1:
        area = 666
    elif flaw == 2:
        area = rng.randint(900, 999)
    elif flaw == 3:
        group = 0
    else:
        serial = 0
    return f"{area:03d}{group:02d}{serial:04d}"


def format_ssn(ssn: str, separator: str = "-") -> str:
    return f"{ssn[:3]}{separator}{ssn[3:5]}{separator}{ssn[5:]}"


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _openssh_ed25519(rng: random.Random) -> str:
    """An unencrypted OpenSSH Ed25519 private key file, deterministic (its check integer too)."""
    key = ed25519.Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public_blob = _ssh_string(b"ssh-ed25519") + _ssh_string(public)
    check = rng.randbytes(4)
    private = check + check + public_blob + _ssh_string(seed + public) + _ssh_string(b"user@host")
    private += bytes(range(1, 1 + (-len(private) % 8)))
    blob = (
        b"openssh-key-v1\x00"
        + _ssh_string(b"none")
        + _ssh_string(b"none")
        + _ssh_string(b"")
        + struct.pack(">I", 1)
        + _ssh_string(public_blob)
        + _ssh_string(private)
    )
    body = base64.b64encode(blob).decode()
    lines = "\n".join(body[i : i + 70] for i in range(0, len(body), 70))
    return f"-----BEGIN OPENSSH PRIVATE KEY-----\n{lines}\n-----END OPENSSH PRIVATE KEY-----\n"


def _rsa_shaped(rng: random.Random) -> str:
    """A PKCS#1 "RSA PRIVATE KEY" block with random numbers in the right DER structure."""
    integers = [b"\x00", b"\x00" + rng.randbytes(128), b"\x01\x00\x01"] + [
        b"\x00" + rng.randbytes(64) for _ in range(6)
    ]
    content = b"".join(b"\x02" + _der_length(len(i)) + i for i in integers)
    der = b"\x30" + _der_length(len(content)) + content
    body = base64.b64encode(der).decode()
    lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN RSA PRIVATE KEY-----\n{lines}\n-----END RSA PRIVATE KEY-----\n"


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def private_key_pem(rng: random.Random) -> str:
    """A private key file: EC (PKCS#8 or SEC1), OpenSSH Ed25519, or RSA-shaped PKCS#1."""
    choice = rng.randrange(4)
    if choice == 2:
        return _openssh_ed25519(rng)
    if choice == 3:
        return _rsa_shaped(rng)
    key = ec.derive_private_key(rng.getrandbits(250) + 1, ec.SECP256R1())
    private_format = (
        serialization.PrivateFormat.PKCS8
        if choice == 0
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    return key.private_bytes(
        serialization.Encoding.PEM, private_format, serialization.NoEncryption()
    ).decode()


def pem_body(pem: str) -> str:
    """The base64 lines of a PEM block, without its BEGIN/END lines."""
    return "\n".join(line for line in pem.strip().splitlines() if not line.startswith("-----"))


_BASE32 = string.ascii_uppercase + "234567"
_ALNUM = string.ascii_letters + string.digits


def _random(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def aws_key_id(rng: random.Random) -> str:
    return rng.choice(("AKIA", "ASIA")) + _random(rng, _BASE32, 16)


def aws_secret_key(rng: random.Random) -> str:
    return _random(rng, _ALNUM + "/+", 40)


def github_token(rng: random.Random) -> str:
    if rng.random() < 0.3:
        return "github_pat_" + _random(rng, _ALNUM, 22) + "_" + _random(rng, _ALNUM, 59)
    return (
        "gh"
        + rng.choice("pousr")
        + "_"
        + _random(rng, _ALNUM, 30)
        + str(rng.randint(100000, 999999))
    )


def jwt(rng: random.Random) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    header = part({"alg": "HS256", "typ": "JWT"})
    payload = part({"sub": str(rng.randint(1, 10**9)), "name": "Jane Roe", "iat": 1716200000})
    return f"{header}.{payload}.{base64.urlsafe_b64encode(rng.randbytes(32)).decode().rstrip('=')}"


def openai_style_key(rng: random.Random) -> str:
    return "sk-" + rng.choice(("", "proj-")) + _random(rng, _ALNUM, 44) + str(rng.randint(0, 9))


def slack_token(rng: random.Random) -> str:
    workspace, user = rng.randint(10**10, 10**11), rng.randint(10**10, 10**11)
    return f"xox{rng.choice('bpa')}-{workspace}-{user}-{_random(rng, _ALNUM, 24)}"


def password(rng: random.Random) -> str:
    word = rng.choice(("Summer", "Falcon", "Orange", "winter", "Dragon", "purple", "Monkey"))
    return word + str(rng.randint(10, 9999)) + rng.choice(("!", "#", "$", "", "?", "%"))


# ---------------------------------------------------------------------------- evasions


def with_separators(value: str, rng: random.Random, *, every: int | None = None) -> str:
    """`value` with one random separator kind between groups of `every` (random: 1-4) chars."""
    separator = rng.choice(SEPARATORS)
    step = every or rng.randint(1, 4)
    return separator.join(value[i : i + step] for i in range(0, len(value), step))


def with_zero_width(value: str, rng: random.Random) -> str:
    return "".join(c + (rng.choice(ZERO_WIDTH) if rng.random() < 0.5 else "") for c in value)


_FULLWIDTH = str.maketrans({chr(c): chr(c + 0xFEE0) for c in range(0x21, 0x7F)} | {" ": "\u3000"})
_OTHER_DIGITS = ("\u0660", "\u06f0", "\u0966", "\u09e6", "\uff10", "\U0001d7ce")  # zeros


def to_fullwidth(text: str) -> str:
    return text.translate(_FULLWIDTH)


def to_other_digits(text: str, rng: random.Random) -> str:
    """Digits of another script (Arabic-Indic, Devanagari, Bengali, full-width, mathematical)."""
    zero = ord(rng.choice(_OTHER_DIGITS))
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in text)


def to_base64(text: str, *, wrap: int = 0) -> str:
    encoded = base64.b64encode(text.encode()).decode()
    if not wrap:
        return encoded
    return "\n".join(encoded[i : i + wrap] for i in range(0, len(encoded), wrap))


def mixed_case(text: str, rng: random.Random) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


def split_lines(value: str, rng: random.Random) -> str:
    cut = rng.randint(1, max(1, len(value) - 1))
    return value[:cut] + rng.choice(("\n", "\r\n", " \n")) + value[cut:]


# ---------------------------------------------------------------------------- prose

_PROSE = (
    "Could you summarise the attached meeting notes for the regional team?",
    "The quarterly report shows revenue grew 12% to $4.2M in Q3 2024, ahead of plan.",
    "Please draft a polite reply declining the invitation for 14 March at 10:30.",
    "We upgraded the cluster to Python 3.11.4 and Kubernetes 1.29.2 last week.",
    "Translate the following paragraph into German, keeping the formal tone.",
    "Order 48213 shipped on 2024-05-06 and should arrive within 3-5 business days.",
    "The build 2024.05.17 fixed issue #1432 and improved latency by 18 ms at p99.",
    "Write a haiku about autumn leaves falling on a quiet river.",
    "Our office at 221B Baker Street opens at 9:00 and closes at 17:30.",
    "Explain the difference between TCP and UDP for a junior engineer.",
    "The invoice total is 1,249.99 EUR including 19% VAT, due in 30 days.",
    "Refactor this function so it handles empty lists and returns None.",
    "Attendance: 42 people in room 3.14, 17 online; next session on 2024/06/12.",
    "The model was trained for 3 epochs with a learning rate of 2e-5 and batch size 32.",
    "Set max_tokens: 512 and temperature: 0.2 for the summarisation endpoint.",
    "The password reset page must explain the rules: at least 12 characters.",
    "If the password is incorrect three times, lock the account for 15 minutes.",
    "Users in the Asia region see higher latency since release 4.2.1.",
    "The token count of the prompt was 1,024 and the answer used 256 tokens.",
    "Compare scikit-learn and sk-learn-style APIs for the onboarding doc.",
    "Meeting ID 845 2291 7730, passcode on the calendar invite.",
    "Tracking number 1Z999AA10123456784 was updated this morning.",
    "ISBN 978-3-16-148410-0 is the second edition of the handbook.",
    "The request id was 123e4567-e89b-12d3-a456-426614174000 in the logs.",
    "Commit 9fceb02d0ae598e95dc970b74767f19372d61af8 introduced the regression.",
    "Section 2.1.3.4 of the contract covers liability; see also clause 7.2.",
    "def connect(user, password=None):\n    password = password or getpass.getpass()",
    "config.password must be read from the environment, never hard-coded.",
    "The ratio was 3:2 and the time 12:30:45 when the job finished.",
    "Call the helpdesk on extension 4412 if the badge reader fails.",
)


# Chat prose without numbers, codes or code: the cheapest kind of prompt to classify.
_PLAIN = (
    "Could you rewrite this paragraph so that it sounds friendlier and less formal?",
    "Summarise the main arguments of the article in a few short bullet points.",
    "What are the trade-offs between a monolith and microservices for a small team?",
    "Please translate the following note into French and keep the polite tone.",
    "Suggest three names for a bakery that specialises in sourdough bread.",
    "Explain how a hash map works to someone who has never programmed before.",
    "Draft an email asking the landlord when the heating will be repaired.",
    "Which questions should I ask in an interview for a product manager role?",
)


def plain_text(rng: random.Random, size: int) -> str:
    """About `size` characters of chat prose without digits or code."""
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(_PLAIN)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(rng.choice(_PROSE) for _ in range(sentences))


def benign_text(rng: random.Random, size: int) -> str:
    """About `size` characters of ordinary prompt prose with look-alike numbers."""
    parts: list[str] = []
    length = 0
    while length < size:
        sentence = rng.choice(_PROSE)
        parts.append(sentence)
        length += len(sentence) + 1
    return " ".join(parts)[:size]


# ---------------------------------------------------------------------------- prompts

_Maker = Callable[[random.Random], tuple[str, str]]  # -> (value as written, variant)


def _card(rng: random.Random) -> tuple[str, str]:
    card = valid_card(rng)
    variant = rng.choice(("plain", "grouped", "separators", "zero_width", "fullwidth", "digits"))
    if variant == "grouped":
        return with_separators(card, rng, every=4), variant
    if variant == "separators":
        return with_separators(card, rng), variant
    if variant == "zero_width":
        return with_zero_width(card, rng), variant
    if variant == "fullwidth":
        return to_fullwidth(with_separators(card, rng, every=4)), variant
    if variant == "digits":
        return to_other_digits(card, rng), variant
    return card, variant


def _iban(rng: random.Random) -> tuple[str, str]:
    iban = valid_iban(rng)
    variant = rng.choice(("plain", "grouped", "separators", "mixed_case", "zero_width", "split"))
    if variant == "grouped":
        return group_iban(iban), variant
    if variant == "separators":
        return with_separators(iban, rng), variant
    if variant == "mixed_case":
        return mixed_case(group_iban(iban), rng), variant
    if variant == "zero_width":
        return with_zero_width(iban, rng), variant
    if variant == "split":
        return split_lines(group_iban(iban), rng), variant
    return iban, variant


def _ssn(rng: random.Random) -> tuple[str, str]:
    ssn = valid_ssn(rng)
    variant = rng.choice(("plain", "spaces", "dots", "slashes", "zero_width", "fullwidth"))
    separator = {"spaces": " ", "dots": ".", "slashes": "/", "fullwidth": "-"}.get(variant, "-")
    value = format_ssn(ssn, separator)
    if variant == "zero_width":
        value = with_zero_width(value, rng)
    elif variant == "fullwidth":
        value = to_fullwidth(value)
    return value, variant


def _email(rng: random.Random) -> tuple[str, str]:
    user = rng.choice(("jane.doe", "m.mueller", "ops-team", "j_smith+billing", "anna.k"))
    domain = rng.choice(("example.com", "corp.example.org", "mail.example.co.uk", "example.de"))
    value = f"{user}{rng.randint(1, 99)}@{domain}"
    return (value.upper(), "mixed_case") if rng.random() < 0.2 else (value, "plain")


def _phone(rng: random.Random) -> tuple[str, str]:
    area = rng.choice([a for a in range(201, 990) if a % 100 != 11 and (a // 10) % 10 != 9])
    exchange, line = rng.randint(200, 999), rng.randint(0, 9999)
    forms = (
        f"({area}) {exchange}-{line:04d}",
        f"{area}-{exchange}-{line:04d}",
        f"{area}.{exchange}.{line:04d}",
        f"+1 {area} {exchange} {line:04d}",
        f"1-{area}-{exchange}-{line:04d}",
        f"+44 20 {rng.randint(7000, 8999)} {rng.randint(1000, 9999)}",
        f"+49 30 {rng.randint(10000000, 99999999)}",
        "+33 1 " + " ".join(str(rng.randint(10, 99)) for _ in range(4)),
    )
    return rng.choice(forms), "plain"


def _ip(rng: random.Random) -> tuple[str, str]:
    if rng.random() < 0.6:
        return ".".join(str(rng.randint(1, 254)) for _ in range(4)), "ipv4"
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return "2001:db8::" + ":".join(groups[5:]), "ipv6_compressed"
    return ":".join([groups[0], f"{rng.randint(1, 0xFFFF):x}", *groups[2:]]), "ipv6"


def _private_key(rng: random.Random) -> tuple[str, str]:
    pem = private_key_pem(rng)
    variant = rng.choice(("plain", "base64", "body_only", "mixed_case", "json_escaped"))
    if variant == "base64":
        return to_base64(pem, wrap=rng.choice((0, 76))), variant
    if variant == "body_only":
        return pem_body(pem), variant
    if variant == "mixed_case":
        lines = pem.splitlines()
        return "\n".join(
            [mixed_case(lines[0], rng), *lines[1:-1], mixed_case(lines[-1], rng)]
        ), variant
    if variant == "json_escaped":
        return json.dumps({"key": pem})[1:-1], variant
    return pem, variant


# The variants written to evade detection (the rest are ordinary ways of writing a value).
EVASIVE_VARIANTS = frozenset(
    ("separators", "zero_width", "fullwidth", "digits", "mixed_case", "split", "spaces", "dots",
     "slashes", "base64", "body_only", "json_escaped")
)  # fmt: skip


def _maybe_evasive(value: str, variant: str, rng: random.Random) -> tuple[str, str]:
    """Sometimes zero-width characters inside `value`, or `value` in base64."""
    roll = rng.random()
    if roll < 0.15:
        return with_zero_width(value, rng), "zero_width"
    if roll < 0.3:
        return to_base64(value, wrap=rng.choice((0, 76))), "base64"
    return value, variant


def _cloud(rng: random.Random) -> tuple[str, str]:
    return _maybe_evasive(*_cloud_value(rng), rng)


def _cloud_value(rng: random.Random) -> tuple[str, str]:
    choice = rng.randrange(4)
    if choice == 0:
        return aws_key_id(rng), "aws_key_id"
    if choice == 1:
        return f"aws_secret_access_key = {aws_secret_key(rng)}", "aws_secret"
    if choice == 2:
        account = {
            "type": "service_account",
            "project_id": "demo-project",
            "private_key_id": rng.randbytes(20).hex(),
            "client_email": "svc@demo-project.iam.gserviceaccount.com",
        }
        return json.dumps(account, indent=2), "gcp_service_account"
    key = base64.b64encode(rng.randbytes(64)).decode()
    return (
        f"DefaultEndpointsProtocol=https;AccountName=demo;AccountKey={key};"
        "EndpointSuffix=core.windows.net",
        "azure_account_key",
    )


def _secret(rng: random.Random) -> tuple[str, str]:
    return _maybe_evasive(*_secret_value(rng), rng)


def _secret_value(rng: random.Random) -> tuple[str, str]:
    choice = rng.randrange(8)
    if choice == 0:
        return f"password={password(rng)}", "assignment"
    if choice == 1:
        return f'"api_key": "{_random(rng, _ALNUM, 32)}"', "json"
    if choice == 2:
        return f"Authorization: Bearer {jwt(rng)}", "bearer_jwt"
    if choice == 3:
        return github_token(rng), "github"
    if choice == 4:
        return slack_token(rng), "slack"
    if choice == 5:
        return openai_style_key(rng), "sk"
    if choice == 6:
        return f"The wifi password is {password(rng)}", "prose"
    return f"DB_PASSWORD: {password(rng)}", "yaml"


_MAKERS: dict[str, tuple[_Maker, tuple[str, ...]]] = {
    "payment_card": (_card, ("Please refund the customer, card {v}, expiry 09/27.",
                             "My Visa is {v} — can you check why it was declined?",
                             "Charge {v} for the 3 licences on order 48213.")),
    "iban": (_iban, ("Wire the deposit to IBAN {v} by Friday.",
                     "Our new bank details: {v} (account holder: Acme GmbH).")),
    "us_ssn": (_ssn, ("Employee SSN {v} is missing from the W-2 form.",
                      "Her social security number is {v}, please verify.",
                      "Applicant: Jane Roe, born 1984-02-11, SSN: {v}")),
    "email": (_email, ("Forward the contract to {v} before noon.",
                       "Customer contact: {v}; prefers email over phone.")),
    "phone_number": (_phone, ("Call me back on {v} after 5 pm.",
                              "The vendor's hotline is {v}, ask for accounts.")),
    "ip_address": (_ip, ("The database listens on {v} port 5432.",
                         "Block traffic from {v} in the firewall.")),
    "private_key": (_private_key, ("Why does ssh reject this key?\n{v}\nThanks!",
                                   "Deploy key for the runner:\n{v}")),
    "cloud_access_key": (_cloud, ("Here is our config: {v}\nWhy does the upload fail?",
                                  "Please rotate {v} today, it leaked.")),
    "secret": (_secret, ("Debug this config please:\n{v}\nIt fails on startup.",
                         "Note for the on-call engineer: {v}")),
}  # fmt: skip

# Kinds a prompt of a variant contains besides its own (a credential assignment is a secret).
_ALSO = {
    ("cloud_access_key", "aws_secret"): frozenset({"secret"}),
    ("cloud_access_key", "gcp_service_account"): frozenset({"email"}),  # its client_email
}
_ALSO_IN_CONTENT = {"aws_secret_access_key = ": "secret", '"client_email": ': "email"}


def sensitive_prompt(kind: str, rng: random.Random) -> LabelledPrompt:
    maker, templates = _MAKERS[kind]
    value, variant = maker(rng)
    template = rng.choice(templates)
    before, after = template.split("{v}")
    if rng.random() < 0.3:  # some longer context
        before = prose(rng, rng.randint(1, 3)) + " " + before
    text = before + value + after
    kinds = frozenset({kind}) | _ALSO.get((kind, variant), frozenset())
    if kind == "cloud_access_key" and variant in ("zero_width", "base64"):  # what it evades
        plain = base64.b64decode(value).decode() if variant == "base64" else value
        plain = "".join(c for c in plain if c not in ZERO_WIDTH)
        kinds |= {k for marker, k in _ALSO_IN_CONTENT.items() if marker in plain}
    return LabelledPrompt(text, kinds, variant, ((len(before), len(before) + len(value)),))


def _lookalikes(rng: random.Random) -> tuple[str, str]:
    choice = rng.randrange(12)
    if choice == 0:
        return f"Reference {with_separators(invalid_card(rng), rng, every=4)} failed validation.", (
            "luhn_invalid_card"
        )
    if choice == 1:
        return f"The IBAN {group_iban(invalid_iban(rng))} was rejected.", "bad_iban_check"
    if choice == 2:
        return f"Test record {format_ssn(invalid_ssn(rng))} (never issued).", "invalid_ssn_range"
    if choice == 3:
        return (
            f"Released v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)} on "
            f"{rng.randint(2019, 2025)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}.",
            "version_date",
        )
    if choice == 4:
        return f"Order {rng.randint(10**7, 10**12)} is delayed.", "order_number"
    if choice == 5:
        u = rng.randbytes(16).hex()
        return f"Trace {u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]} in the log.", "uuid"
    if choice == 6:
        return (
            f"Total: {rng.randint(1, 9999)}.{rng.randint(0, 99):02d} USD, "
            f"{rng.randint(1, 99)}% off.",
            "money",
        )
    if choice == 7:
        return (
            f"Meeting at {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}, room {rng.randint(100, 999)}.",
            "time",
        )
    if choice == 8:
        return f"Commit {rng.randbytes(20).hex()} fixed it.", "git_sha"
    if choice == 9:
        return (
            "Use `password = os.environ['DB_PASSWORD']` and `token: str` in the model; "
            "set max_tokens: 256.",
            "code",
        )
    if choice == 10:
        return f"Random reference {_random(rng, string.digits, 16)} from the legacy system.", (
            "random_16_digits"
        )
    return (
        f"ZIP {rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}, PO box {rng.randint(1, 999)}.",
        "zip",
    )


def benign_prompt(rng: random.Random) -> LabelledPrompt:
    text, variant = _lookalikes(rng)
    if rng.random() < 0.7:
        text = prose(rng, rng.randint(1, 4)) + " " + text
    else:
        text, variant = prose(rng, rng.randint(2, 6)), "prose"
    return LabelledPrompt(text, frozenset(), variant)


def generate_corpus(seed: int = 0, per_kind: int = 60, benign: int = 600) -> list[LabelledPrompt]:
    """`per_kind` sensitive prompts of each built-in kind and `benign` non-sensitive ones."""
    rng = random.Random(seed)
    prompts = [sensitive_prompt(kind, rng) for kind in _MAKERS for _ in range(per_kind)]
    prompts.extend(benign_prompt(rng) for _ in range(benign))
    return prompts


KINDS: tuple[str, ...] = tuple(_MAKERS)
