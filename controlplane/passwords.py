"""Password hashing with scrypt (per-password salt, constant-time check) and password rules."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common.errors import InvalidArgument

SCHEME = "scrypt"
SCRYPT_N = 2**14  # 16 MiB of memory per hash with r=8
SCRYPT_R = 8
SCRYPT_P = 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
GENERATED_PASSWORD_BYTES = 18  # 24 URL-safe characters, 144 bits


def check_password(password: object) -> str:
    """A password: 12 to 1024 printable characters, else InvalidArgument (never echoing it)."""
    if not isinstance(password, str):
        raise InvalidArgument("a password must be a string")
    if not MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS:
        raise InvalidArgument(
            f"a password must be {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters"
        )
    if not password.isprintable():
        raise InvalidArgument("a password must not contain control characters")
    return password


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=HASH_BYTES,
        maxmem=256 * r * n,
    )


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$<salt hex>$<hash hex>`: the parameters travel with the hash."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches `stored` (compared in constant time); False when malformed."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = bytes.fromhex(digest)
        actual = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


# Checked against when the user does not exist, so such a login takes as long as a real one.
DUMMY_HASH = hash_password(generate_password())
