"""Inference-key grants: the set a desired state carries, checked on both ends, and the
caller an `Authorization` value names among them (agents and the gateway alike)."""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

from common.artifacts import check_sha256
from common.control import InferenceKeyGrant
from common.errors import InvalidArgument
from common.policy.routing import Caller

MAX_INFERENCE_KEYS = 10_000
MAX_KEY_ID_CHARS = 20  # a decimal 64-bit id
MAX_HEADER_CHARS = 512  # an Authorization header longer than this is no key of ours
_IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,63}")
_KEY_ID = re.compile(r"[1-9][0-9]{0,19}")


def check_grants(grants: Sequence[InferenceKeyGrant]) -> tuple[InferenceKeyGrant, ...]:
    """The grants as a tuple, or InvalidArgument naming the first bad one: more than
    MAX_INFERENCE_KEYS, an id that is not a positive decimal, a hash that is not lowercase hex
    sha256, a role or team that is not an identifier, or a hash or id given twice."""
    if len(grants) > MAX_INFERENCE_KEYS:
        raise InvalidArgument(f"more than {MAX_INFERENCE_KEYS} inference keys")
    hashes: set[str] = set()
    ids: set[str] = set()
    for index, grant in enumerate(grants):
        where = f"inference key {index}"
        if not isinstance(grant, InferenceKeyGrant):
            raise InvalidArgument(f"{where} is not an inference key grant")
        if not isinstance(grant.key_id, str) or _KEY_ID.fullmatch(grant.key_id) is None:
            raise InvalidArgument(f"{where}: the id must be a positive decimal number")
        check_sha256(grant.key_hash, f"{where}: the key hash")
        for what, value in (("role", grant.role), ("team", grant.team)):
            if not isinstance(value, str) or _IDENTIFIER.fullmatch(value) is None:
                raise InvalidArgument(
                    f"{where}: the {what} must be 1 to 63 characters of A-Z a-z 0-9 . _ -"
                )
        if grant.key_hash in hashes or grant.key_id in ids:
            raise InvalidArgument(f"{where}: the key is given twice")
        hashes.add(grant.key_hash)
        ids.add(grant.key_id)
    return tuple(grants)


def caller_for(
    authorization_header: str | None, by_hash: Mapping[str, InferenceKeyGrant]
) -> Caller | None:
    """The caller of a `Bearer <key>` header whose key's sha256 is in `by_hash`; None for
    anything else (no header, another scheme, an unknown or oversized key)."""
    if not isinstance(authorization_header, str) or len(authorization_header) > MAX_HEADER_CHARS:
        return None
    scheme, _, key = authorization_header.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    key_hash = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    grant = by_hash.get(key_hash)
    if grant is None or not hmac.compare_digest(grant.key_hash, key_hash):
        return None
    return Caller(role=grant.role, team=grant.team, key_id=grant.key_id)
