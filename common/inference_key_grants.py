"""`check_grants`: the inference-key set a desired state carries, checked on both ends."""

from __future__ import annotations

import re
from collections.abc import Sequence

from common.artifacts import check_sha256
from common.control import InferenceKeyGrant
from common.errors import InvalidArgument

MAX_INFERENCE_KEYS = 10_000
MAX_KEY_ID_CHARS = 20  # a decimal 64-bit id
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
