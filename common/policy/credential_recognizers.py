"""Recognizers of credentials: private keys, cloud access keys, secrets and API tokens."""

from __future__ import annotations

import re
from collections.abc import Iterator

from common.policy.prepared_text import PreparedText

Span = tuple[int, int]
# Key ids, secret keys and API tokens are at least this long (an AWS key id: 20).
_MIN_CREDENTIAL_LENGTH = 16

_PEM_HEADER = re.compile(
    r"(-{2,}[ \t]*)?(?<![a-z])(begin|end)\s+(?:[a-z0-9]+\s+){0,3}?private\s+key(?:\s+block)?"
    r"[ \t]*(-{2,})?"
)
_PEM_FOOTER = re.compile(
    r"-{2,}[ \t]*end\s+(?:[a-z0-9]+\s+){0,3}?private\s+key(?:\s+block)?[ \t]*-{2,}"
)
_PEM_BODY = re.compile(r"(?:\s*(?:\\n)?[a-z0-9+/=:,\-]{16,})+")
_PEM_BODY_NEXT = re.compile(r"[ \t]*(?:\r?\n|\\n)[ \t]*[a-z0-9+/=]{40,}")
_PUTTY_HEADER = re.compile(r"putty-user-key-file-\d+\s*:")
_OPENSSH_MAGIC = b"openssh-key-v1\x00"
_MAX_KEY_BLOCK = 65_536


def _der_private_key(data: bytes) -> bool:
    """DER of a private key: PKCS#1 RSAPrivateKey, PKCS#8 PrivateKeyInfo, SEC1 ECPrivateKey
    (a SEQUENCE starting with INTEGER version 0 or 1, then an INTEGER, SEQUENCE or OCTET STRING).
    Certificates and public keys start with a SEQUENCE inside instead."""
    if len(data) < 8 or data[0] != 0x30:
        return False
    length = data[1]
    offset = 2 + (length & 0x7F) if length & 0x80 else 2
    if length & 0x80 and not 1 <= length & 0x7F <= 4:
        return False
    return data[offset : offset + 3] in (b"\x02\x01\x00", b"\x02\x01\x01") and data[
        offset + 3 : offset + 4
    ] in (b"\x02", b"\x30", b"\x04")


def find_private_keys(text: PreparedText) -> Iterator[Span]:
    """PEM/OpenSSH/PGP "BEGIN ... PRIVATE KEY" blocks (any case and spacing; without dashes only
    when a base64 body follows), PuTTY key files, and base64 that decodes to a private key's
    DER or to an OpenSSH key (a key body without its header)."""
    lowered = text.lowered
    private = lowered.find("private")
    covered = -1
    footers = _Footers(lowered)
    while private != -1:
        if private >= covered:
            for header in _PEM_HEADER.finditer(lowered, max(0, private - 80), private + 48):
                span = _pem_block(lowered, header, footers)
                if span is not None and span[1] > covered:
                    yield span
                    covered = span[1]
        private = lowered.find("private", max(private + 1, covered))
    if "putty-user-key-file" in lowered:
        for match in _PUTTY_HEADER.finditer(lowered):
            yield match.span()
    for start, end, data in text.binary_blobs():
        if data.startswith(_OPENSSH_MAGIC) or _der_private_key(data):
            yield start, end


class _Footers:
    """The first END ... PRIVATE KEY line after a position, searched for once per footer (not
    once per header: a prompt of many headers and no footer stays linear)."""

    __slots__ = ("_found", "_lowered", "_none_after")

    def __init__(self, lowered: str) -> None:
        self._lowered = lowered
        self._found: re.Match[str] | None = None
        self._none_after = len(lowered) + 1

    def after(self, position: int) -> re.Match[str] | None:
        if self._found is not None and self._found.start() >= position:
            return self._found
        if position >= self._none_after:
            return None
        self._found = _PEM_FOOTER.search(self._lowered, position)
        if self._found is None:
            self._none_after = position
        return self._found


def _pem_block(lowered: str, header: re.Match[str], footers: _Footers) -> Span | None:
    dashes = header.group(1) is not None or header.group(3) is not None
    start, end = header.span()
    if header.group(2) == "end":
        return (start, end) if dashes else None
    if not dashes and _PEM_BODY_NEXT.match(lowered, end) is None:
        return None
    footer = footers.after(end)
    if footer is not None and footer.end() - end <= _MAX_KEY_BLOCK:
        return start, footer.end()
    body = _PEM_BODY.match(lowered, end, min(len(lowered), end + _MAX_KEY_BLOCK))
    return start, body.end() if body is not None else end


_AWS_KEY_ID = re.compile(r"(?<![a-z0-9])(?:akia|asia)[a-z0-9]{16}(?![a-z0-9])")
# What comes before a value, matched up to the value's start (endpos makes \Z match there).
_AWS_SECRET_BEFORE = re.compile(r"secret_?access_?key[\"']?\s*[:=]\s*[\"']?\Z")
_GCP_KEY_ID_BEFORE = re.compile(r"\"private_key_id\"\s*:\s*\"\Z")
_AZURE_KEY_BEFORE = re.compile(r"(?<![a-z])(?:accountkey|sharedaccesskey)\s*=\s*\Z")
_HEX_40 = re.compile(r"[0-9a-f]{40}")


def find_cloud_access_keys(text: PreparedText) -> Iterator[Span]:
    """AWS access key ids (AKIA/ASIA + 16) and secret access keys (40 characters after
    aws_secret_access_key/SecretAccessKey), a GCP service account's private_key_id (40 hex
    digits), Azure storage AccountKey= and SharedAccessKey= values. All are long tokens, so
    only text.tokens() is looked at. (A service account's "private_key" itself is a PEM block:
    the private_key recognizer's.)"""
    lowered = text.lowered
    normalized = text.normalized
    for start, end in text.tokens():
        if end - start < _MIN_CREDENTIAL_LENGTH:
            continue
        for match in _AWS_KEY_ID.finditer(lowered, start, end):
            yield match.span()
        window = max(0, start - 48)
        if end - start == 40:
            if _AWS_SECRET_BEFORE.search(lowered, window, start) is not None or (
                _HEX_40.fullmatch(lowered, start, end) is not None
                and _GCP_KEY_ID_BEFORE.search(lowered, window, start) is not None
            ):
                yield start, end
        elif end - start >= 40 and _AZURE_KEY_BEFORE.search(lowered, window, start) is not None:
            padded = end
            while padded < len(normalized) and padded - end < 2 and normalized[padded] == "=":
                padded += 1
            yield start, padded


# Known token formats (GitHub, Slack, OpenAI/Anthropic-style sk-, GitLab, npm, Google API keys,
# Stripe, Hugging Face), matched in lower case inside long tokens.
_TOKEN_FORMATS = re.compile(
    r"(?<![a-z0-9])(?:"
    r"gh[pousr]_[a-z0-9]{36,251}"
    r"|github_pat_[a-z0-9_]{22,255}"
    r"|xox[abposre]-[a-z0-9-]{10,250}"
    r"|sk-(?:proj-|svcacct-|admin-|ant-[a-z]{3,5}\d\d-)?[a-z0-9_-]{32,}"
    r"|glpat-[a-z0-9_-]{20,}"
    r"|npm_[a-z0-9]{36}"
    r"|aiza[a-z0-9_-]{35}"
    r"|[rs]k_(?:live|test)_[a-z0-9]{16,}"
    r"|hf_[a-z0-9]{30,}"
    r")(?![a-z0-9])"
)
_JWT = re.compile(r"eyj[a-z0-9_-]{8,}\.eyj[a-z0-9_-]{8,}\.[a-z0-9_-]*")

# Names a credential is assigned to. Strong ones flag any real-looking value; weak ones
# ("token: ...") only a value that looks generated (letters and digits, or long).
_STRONG_KEYS = (
    "password", "passwd", "passwort", "passphrase", "passcode", "pwd", "pass",
    "apikey", "api_key", "api-key", "secretkey", "secret_key", "secret-key",
    "accesskey", "access_key", "access-key", "clientsecret", "client_secret", "client-secret",
    "privatekey", "private_key", "private-key", "signingkey", "signing_key",
    "encryptionkey", "encryption_key", "masterkey", "master_key",
    "authtoken", "auth_token", "auth-token", "accesstoken", "access_token", "access-token",
    "refreshtoken", "refresh_token", "refresh-token", "apitoken", "api_token", "api-token",
    "sessiontoken", "session_token", "bearertoken", "bearer_token",
)  # fmt: skip
_WEAK_KEYS = ("secret", "token", "auth", "credential", "credentials", "authorization")
# Keys that must not be the end of a longer word ("bypass", "compass", "oauth2token").
_BOUNDED_KEYS = frozenset(("pass", "pwd", "secret", "token", "auth", "credential", "credentials"))
# Keys by their last three characters, longest first: most ":" and "=" in prose have no
# entry here, the others a few keys to compare.
_KEYS_BY_ENDING: dict[str, tuple[str, ...]] = {}
for _key in sorted(_STRONG_KEYS + _WEAK_KEYS, key=len, reverse=True):
    _KEYS_BY_ENDING[_key[-3:]] = (*_KEYS_BY_ENDING.get(_key[-3:], ()), _key)
_QUOTES_AND_BLANKS = frozenset(" \t\"'`")
_VALUE = re.compile(
    r"[ \t]*(?:\"([^\"\r\n]{0,256})\"|'([^'\r\n]{0,256})'|`([^`\r\n]{0,256})`|([^\s\"'`,;]{1,256}))"
)
_AUTH_SCHEME = re.compile(
    r"[ \t]*[\"']?[ \t]*(?:bearer|basic|token|digest|negotiate|apikey|sso-key)[ \t]+"
    r"[a-z0-9._~+/=:-]{8,4096}"
)
_PASSWORD_IS = re.compile(
    r"pass(?:word|wd|phrase|code)\s+(?:is|was|will\s+be|would\s+be)\s*:?\s*[\"'“‘]?"
    r"([^\s\"'”’]{4,128})"
)
_BEARER = re.compile(r"bearer[ \t]+[a-z0-9._~+/-]{20,4096}=*")
_URL_CREDENTIALS = re.compile(r"://([^\s:/@?#]{1,128}):([^\s/@?#]{1,256})@")
_PLACEHOLDERS = frozenset(
    (
        "none", "null", "nil", "undefined", "true", "false", "yes", "no", "required",
        "optional", "string", "str", "int", "bool", "bytes", "text", "password", "passwd",
        "secret", "token", "pass", "pwd", "your_password", "yourpassword", "your-password",
        "<password>", "example", "redacted", "hidden", "masked", "removed", "omitted", "todo",
        "tbd", "n/a", "na", "env", "value", "placeholder", "dummy",
    )
)  # fmt: skip
_CODE_REFERENCE = re.compile(r"[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+")
_MASKED = frozenset("*x.•#?-_ ")
_CODE_CHARACTERS = frozenset("()[]{}")  # calls, indexing, templates


def _real_value(value: str, *, strong: bool) -> bool:
    """Whether an assigned value looks like a credential rather than a placeholder, a type, a
    variable or a call."""
    value = value.strip().rstrip(".,;:")
    lowered = value.lower()
    if len(value) < 4 or lowered in _PLACEHOLDERS or value[0] in "$<%@&":
        return False
    if not _CODE_CHARACTERS.isdisjoint(value) or set(lowered) <= _MASKED:
        return False
    if _CODE_REFERENCE.fullmatch(lowered) is not None:  # config.password, os.environ
        return False
    if strong:
        return True
    letters = any(c.isalpha() for c in value)
    digits = any(c.isdigit() for c in value)
    return len(value) >= 8 and ((letters and digits) or len(value) >= 20)


def _looks_chosen(value: str) -> bool:
    """A password named in prose ("the password is Summer2024!") has a digit, a symbol or a
    capital after its first letter; "the password is incorrect" has none."""
    value = value.rstrip(".,;:!?)")
    if len(value) < 4 or value.lower() in _PLACEHOLDERS:
        return False
    return any(not c.isalpha() for c in value) or any(c.isupper() for c in value[1:])


def _token_formats(text: PreparedText) -> Iterator[Span]:
    lowered = text.lowered
    for start, end in text.tokens():
        if end - start < _MIN_CREDENTIAL_LENGTH:
            continue
        for match in _TOKEN_FORMATS.finditer(lowered, start, end):
            if any(c.isdigit() for c in match.group()):
                yield match.span()
        if lowered.startswith("eyj", start):
            jwt = _JWT.match(lowered, start)
            if jwt is not None:
                yield jwt.span()


def _assignments(text: PreparedText) -> Iterator[Span]:
    """key = value, key: value, "key": "value", key => value, Authorization: Bearer ..."""
    lowered = text.lowered
    for operator in ("=", ":"):
        position = lowered.find(operator)
        while position != -1:
            if (position > 0 and lowered[position - 1] in _QUOTES_AND_BLANKS) or lowered[
                max(0, position - 3) : position
            ] in _KEYS_BY_ENDING:
                span = _assignment_at(text, position)
                if span is not None:
                    yield span
            position = lowered.find(operator, position + 1)


def _assignment_at(text: PreparedText, operator: int) -> Span | None:
    lowered = text.lowered
    key_end = operator
    while key_end > 0 and operator - key_end < 4 and lowered[key_end - 1] in " \t\"'`":
        key_end -= 1
    for name in _KEYS_BY_ENDING.get(lowered[max(0, key_end - 3) : key_end], ()):
        key_start = key_end - len(name)
        if key_start >= 0 and lowered.startswith(name, key_start):
            break
    else:
        return None
    length = len(lowered)
    if name in _BOUNDED_KEYS and key_start > 0 and lowered[key_start - 1].isalnum():
        return None
    if key_start > 0 and lowered[key_start - 1] in "\"'`":  # "api_key": ...
        key_start -= 1
    value_start = operator + 1
    if value_start < length and lowered[value_start] in "=>":  # ==, :=, =>
        value_start += 1
    if lowered.startswith("//", value_start):  # a URL, not a value
        return None
    if name in ("authorization", "auth"):
        scheme = _AUTH_SCHEME.match(lowered, value_start)
        if scheme is not None:
            return key_start, scheme.end()
    value = _VALUE.match(text.normalized, value_start)
    if value is None:
        return None
    assigned = next(g for g in value.groups() if g is not None)
    if _real_value(assigned, strong=name not in _WEAK_KEYS):
        return key_start, value.end()
    return None


def find_secrets(text: PreparedText) -> Iterator[Span]:
    """Credentials: assignments to credential names (password=..., "api_key": "...",
    Authorization: Bearer ...), "the password is ...", bare Bearer tokens, user:password@ in
    URLs, and known token formats (GitHub ghp_/gho_/github_pat_, Slack xox?-, sk-..., JWTs,
    GitLab, npm, Google, Stripe, Hugging Face)."""
    yield from _token_formats(text)
    yield from _assignments(text)
    lowered = text.lowered
    for match in _PASSWORD_IS.finditer(lowered):
        if (match.start() == 0 or not lowered[match.start() - 1].isalpha()) and _looks_chosen(
            text.normalized[match.start(1) : match.end(1)]
        ):
            yield match.start(), match.end()
    for match in _BEARER.finditer(lowered):
        if match.start() == 0 or not lowered[match.start() - 1].isalnum():
            yield match.span()
    for match in _URL_CREDENTIALS.finditer(text.normalized):
        if _real_value(match.group(2), strong=True):
            yield match.start(1), match.end()
