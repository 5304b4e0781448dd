"""`InferenceKeyState`: the inference keys an agent accepts, kept on disk for when it is alone.

The control plane sends every live key (by sha256, with its routing role and team) in each
desired state. A set that passes `check_grants` replaces the previous one and is written
atomically to `state_dir/inference-keys.json` (0600); a desired state without a set (an older
control plane) keeps the last one. At start the kept set is loaded, so a site whose control
plane is down still knows its callers (design principle 3); a damaged file is logged and
ignored (no key is accepted until the control plane sends the set again: fail closed).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

from common.control import InferenceKeyGrant, ItemState, ItemStatus
from common.errors import InvalidArgument
from common.files import atomic_write, ensure_private_directory
from common.inference_key_grants import MAX_INFERENCE_KEYS, caller_for, check_grants
from common.policy.routing import Caller

log = logging.getLogger(__name__)

INFERENCE_KEYS_FILE = "inference-keys.json"
FORMAT_VERSION = 1
MAX_FILE_BYTES = MAX_INFERENCE_KEYS * 512  # a grant takes about 200 bytes of JSON
MAX_ERROR_CHARS = 1000


class InferenceKeyState:
    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self.path = state_dir / INFERENCE_KEYS_FILE
        self._lock = threading.Lock()  # one apply at a time; readers need none
        self._by_hash: Mapping[str, InferenceKeyGrant] = MappingProxyType({})
        self._item: ItemStatus | None = None
        self._kept = False  # the set in force is the one on disk

    @property
    def grants(self) -> tuple[InferenceKeyGrant, ...]:
        """The keys accepted now, ordered by id."""
        return tuple(sorted(self._by_hash.values(), key=lambda g: int(g.key_id)))

    def status_item(self) -> ItemStatus | None:
        """("inference_keys", count, ready or failed with why); None while no key is accepted
        and nothing failed (as there is no "policy" item without a policy)."""
        return self._item

    def authenticate(self, authorization_header: str | None) -> Caller | None:
        """The caller of a `Bearer <key>` header with a live key; None for anything else."""
        return caller_for(authorization_header, self._by_hash)

    def load(self) -> None:
        """At start: the kept set, if any and undamaged."""
        with self._lock:
            try:
                with self.path.open("rb") as file:
                    raw = file.read(MAX_FILE_BYTES + 1)
            except FileNotFoundError:
                return
            except OSError as exc:
                log.error("cannot read the kept inference keys %s: %s", self.path, exc)
                return
            try:
                if len(raw) > MAX_FILE_BYTES:
                    raise ValueError(f"more than {MAX_FILE_BYTES} bytes")
                grants = _parse(json.loads(raw))
            except (ValueError, KeyError, TypeError, RecursionError, InvalidArgument) as exc:
                log.error("ignoring the damaged kept inference keys %s: %s", self.path, exc)
                return
            self._install(grants, error="")
            self._kept = True

    def apply(self, wanted: Sequence[InferenceKeyGrant] | None) -> None:
        """Makes `wanted` the accepted set; None changes nothing; an invalid set is refused
        (the previous one stays) and reported in the status item."""
        if wanted is None:
            return
        with self._lock:
            try:
                grants = check_grants(wanted)
            except InvalidArgument as exc:
                log.error("keeping the previous inference keys: %s", exc)
                error = f"the inference keys are invalid: {exc}"[:MAX_ERROR_CHARS]
                self._item = ItemStatus("inference_keys", "", ItemState.FAILED, error)
                return
            if self._kept and {g.key_hash: g for g in grants} == dict(self._by_hash):
                return
            error = ""
            try:
                self._persist(grants)
            except OSError as exc:  # accepted now; a restart falls back to the kept set
                log.error("cannot keep the inference keys: %s", exc)
                error = f"accepted, but not kept on disk: {exc}"[:MAX_ERROR_CHARS]
            self._install(grants, error=error)
            self._kept = not error

    # -- internals ------------------------------------------------------------------------

    def _install(self, grants: tuple[InferenceKeyGrant, ...], *, error: str) -> None:
        self._by_hash = MappingProxyType({g.key_hash: g for g in grants})
        state = ItemState.FAILED if error else ItemState.READY
        item = ItemStatus("inference_keys", str(len(grants)), state, error)
        self._item = item if grants or error else None
        log.info("%d inference keys accepted", len(grants))

    def _persist(self, grants: tuple[InferenceKeyGrant, ...]) -> None:
        document = {
            "format": FORMAT_VERSION,
            "keys": [
                {"key_id": g.key_id, "key_hash": g.key_hash, "role": g.role, "team": g.team}
                for g in grants
            ],
        }
        ensure_private_directory(self._state_dir)
        atomic_write(self.path, json.dumps(document).encode() + b"\n", 0o600)


def _parse(document: object) -> tuple[InferenceKeyGrant, ...]:
    if not isinstance(document, dict) or document.get("format") != FORMAT_VERSION:
        raise ValueError("unknown format")
    keys = document["keys"]
    if not isinstance(keys, list):
        raise ValueError("keys is not a list")
    if len(keys) > MAX_INFERENCE_KEYS:
        raise ValueError(f"more than {MAX_INFERENCE_KEYS} keys")
    grants = []
    for item in keys:
        if not isinstance(item, dict):
            raise ValueError("a key is not an object")
        grants.append(
            InferenceKeyGrant(
                key_id=item["key_id"],
                key_hash=item["key_hash"],
                role=item["role"],
                team=item["team"],
            )
        )
    return check_grants(grants)
