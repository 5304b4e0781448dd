"""`PolicyState`: the routing policy an agent enforces, kept on disk for when it is on its own.

The control plane sends its live policy in every desired state. A policy that parses (and
whose digest is the one sent) replaces the previous one and is written atomically to
`state_dir/routing-policy.json`; one that does not is reported as a failed "policy" status
item and the previous policy stays in force. At start the kept policy is loaded, so an agent
whose control plane is down enforces the last policy it had (design principle 3); without
one (nor an offline bundle's `policy.json`) the engine routes to on-premises models only.

`current_engine()` is what request handling asks, for every request: it never blocks and
never returns None (a `PolicyEngine(None)` stands for "no policy": local only).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from common.control import ItemState, ItemStatus, PolicyDocument
from common.files import atomic_write, ensure_private_directory
from common.policy.document import (
    MAX_DOCUMENT_BYTES,
    PolicyError,
    PolicyProblem,
    parse_policy,
)
from common.policy.routing import PolicyEngine

log = logging.getLogger(__name__)

POLICY_STATE_FILE = "routing-policy.json"
BUNDLE_POLICY_FILE = "policy.json"  # what an offline bundle installs (agent.bundle_import)
FORMAT_VERSION = 1
MAX_ERROR_CHARS = 1000  # a status item's error: the first problems


def _failure(exc: PolicyError) -> str:
    text = "; ".join(str(p) for p in exc.problems[:5])
    return f"the policy is invalid: {text}"[:MAX_ERROR_CHARS]


class PolicyState:
    def __init__(self, state_dir: Path) -> None:
        self._state_dir = state_dir
        self.path = state_dir / POLICY_STATE_FILE
        self._lock = threading.Lock()  # one apply at a time; readers need none
        self._engine = PolicyEngine(None)
        self._policy: PolicyDocument | None = None
        self._item: ItemStatus | None = None
        self._last_refused: PolicyDocument | None = None

    @property
    def policy(self) -> PolicyDocument | None:
        """The policy in force; None when there is none (version 0: an offline bundle's)."""
        return self._policy

    def current_engine(self) -> PolicyEngine:
        """The engine of the policy in force, for classifying and routing one request."""
        return self._engine

    def status_item(self) -> ItemStatus | None:
        """("policy", version, ready or failed with why); None before any policy arrived."""
        return self._item

    def load(self) -> None:
        """At start: the kept policy, else an offline bundle's; a damaged file is logged and
        ignored (the control plane sends the policy again; meanwhile: local models only)."""
        with self._lock:
            kept = self._read_kept()
            if kept is not None:
                self._install(kept, persist=False)
                return
            bundle = self._state_dir / BUNDLE_POLICY_FILE
            try:
                document = _read_bounded(bundle)
            except FileNotFoundError:
                return
            except OSError as exc:
                log.error("cannot read the bundle's routing policy %s: %s", bundle, exc)
                return
            try:
                policy = parse_policy(document, source=str(bundle))
            except PolicyError as exc:
                log.error("ignoring the bundle's routing policy: %s", exc)
                return
            self._install(PolicyDocument(0, policy.digest, document.decode()), persist=False)

    def apply(self, wanted: PolicyDocument | None) -> None:
        """Makes `wanted` the policy in force, or keeps the previous one and reports why not.
        None (a desired state without a policy) changes nothing."""
        if wanted is None:
            return
        with self._lock:
            current = self._policy
            if current is not None and (current.version, current.digest) == (
                wanted.version,
                wanted.digest,
            ):
                return
            if wanted == self._last_refused:
                return
            try:
                self._check(wanted)
            except PolicyError as exc:
                self._last_refused = wanted
                log.error(
                    "keeping the previous routing policy: version %d: %s", wanted.version, exc
                )
                error = _failure(exc)
                self._item = ItemStatus("policy", str(wanted.version), ItemState.FAILED, error)
                return
            self._install(wanted, persist=True)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _check(wanted: PolicyDocument) -> None:
        source = f"policy version {wanted.version}"
        data = wanted.document.encode("utf-8", "surrogatepass")
        if len(data) > MAX_DOCUMENT_BYTES:
            raise PolicyError(source, [_problem(f"more than {MAX_DOCUMENT_BYTES} bytes")])
        policy = parse_policy(data, source=source)
        if policy.digest != wanted.digest:
            raise PolicyError(
                source, [_problem(f"its digest is {policy.digest}, not the one sent")]
            )

    def _install(self, policy: PolicyDocument, *, persist: bool) -> None:
        engine = PolicyEngine(parse_policy(policy.document))
        error = ""
        if persist:
            try:
                self._persist(policy)
            except OSError as exc:  # enforced now; a restart falls back to the kept one
                log.error("cannot keep routing policy version %d: %s", policy.version, exc)
                error = f"enforced, but not kept on disk: {exc}"[:MAX_ERROR_CHARS]
        self._engine = engine
        self._policy = policy
        self._last_refused = None
        state = ItemState.FAILED if error else ItemState.READY
        self._item = ItemStatus("policy", str(policy.version), state, error, sha256=policy.digest)
        log.info("routing policy version %d in force (%s)", policy.version, policy.digest[:12])

    def _persist(self, policy: PolicyDocument) -> None:
        document = {
            "format": FORMAT_VERSION,
            "version": policy.version,
            "digest": policy.digest,
            "document": policy.document,
        }
        ensure_private_directory(self._state_dir)
        text = json.dumps(document, ensure_ascii=False)  # escapes at most double the size
        atomic_write(self.path, text.encode("utf-8", "surrogatepass") + b"\n", 0o600)

    def _read_kept(self) -> PolicyDocument | None:
        try:
            raw = _read_bounded(self.path, slack=MAX_DOCUMENT_BYTES + 64 * 1024)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the kept routing policy %s: %s", self.path, exc)
            return None
        try:
            kept = json.loads(raw)
            policy = PolicyDocument(
                version=_whole(kept["version"]),
                digest=str(kept["digest"]),
                document=kept["document"],
            )
            if kept.get("format") != FORMAT_VERSION or not isinstance(policy.document, str):
                raise ValueError("unknown format")
            self._check(policy)
        except (ValueError, KeyError, TypeError, RecursionError, PolicyError) as exc:
            log.error("ignoring the damaged kept routing policy %s: %s", self.path, exc)
            return None
        return policy


def _problem(message: str) -> PolicyProblem:
    return PolicyProblem("", 0, 0, message)


def _whole(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a version: {value!r}")
    return value


def _read_bounded(path: Path, slack: int = 0) -> bytes:
    """At most MAX_DOCUMENT_BYTES (+ slack for the JSON around it); larger files are refused."""
    limit = MAX_DOCUMENT_BYTES + slack
    with path.open("rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"{path} has more than {limit} bytes")
    return data
