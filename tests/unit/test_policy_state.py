"""The agent's routing policy: applied, refused (previous kept), persisted, loaded at start."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.policy_state import BUNDLE_POLICY_FILE, POLICY_STATE_FILE, PolicyState
from common.control import ItemState, PolicyDocument
from common.policy.document import MAX_DOCUMENT_BYTES, parse_policy
from common.policy.routing import Caller
from tests.policy_documents import CLOUD, MINIMAL

UNKNOWN_LEVEL = MINIMAL.replace("max_level: internal", "max_level: secretish")


def document(version: int, text: str) -> PolicyDocument:
    return PolicyDocument(version, parse_policy(text).digest, text)


def route(state: PolicyState) -> tuple[str, ...]:
    return state.current_engine().decide(["hello"], Caller(role="dev")).targets


def test_without_a_policy_the_engine_is_local_only(tmp_path: Path) -> None:
    state = PolicyState(tmp_path)
    state.load()
    assert state.policy is None
    assert state.status_item() is None
    assert state.current_engine().policy is None
    assert route(state) == ()
    state.apply(None)
    assert state.policy is None


def test_a_policy_is_enforced_persisted_and_loaded_at_start(tmp_path: Path) -> None:
    state = PolicyState(tmp_path)
    state.apply(document(1, MINIMAL))
    assert route(state) == ("here",)
    item = state.status_item()
    assert item is not None
    assert (item.kind, item.name, item.state) == ("policy", "1", ItemState.READY)
    kept = json.loads((tmp_path / POLICY_STATE_FILE).read_text(encoding="utf-8"))
    assert (kept["version"], kept["document"]) == (1, MINIMAL)
    assert (tmp_path / POLICY_STATE_FILE).stat().st_mode & 0o777 == 0o600
    state.apply(document(2, CLOUD))
    restarted = PolicyState(tmp_path)
    restarted.load()
    assert restarted.policy == document(2, CLOUD)
    assert route(restarted) == ("cloud", "here")
    # A desired state without a policy (e.g. read back from disk) keeps the one in force.
    restarted.apply(None)
    assert restarted.policy == document(2, CLOUD)


@pytest.mark.parametrize(
    ("wanted", "message"),
    [
        (PolicyDocument(2, "0" * 64, UNKNOWN_LEVEL), "secretish"),
        (PolicyDocument(2, "0" * 64, ""), "invalid"),
        (PolicyDocument(2, "0" * 64, MINIMAL), "digest"),  # not the digest sent
        (PolicyDocument(2, "0" * 64, "# " + "x" * MAX_DOCUMENT_BYTES), "more than"),
        (PolicyDocument(2, "0" * 64, "version: 1\x1b[31m"), "invalid"),
    ],
)
def test_a_bad_policy_keeps_the_previous_one_and_says_why(
    tmp_path: Path, wanted: PolicyDocument, message: str
) -> None:
    state = PolicyState(tmp_path)
    state.apply(document(1, CLOUD))
    state.apply(wanted)
    assert state.policy == document(1, CLOUD)
    assert route(state) == ("cloud", "here")
    item = state.status_item()
    assert item is not None
    assert (item.name, item.state) == ("2", ItemState.FAILED)
    assert message in item.error
    assert len(item.error) <= 1000
    restarted = PolicyState(tmp_path)
    restarted.load()
    assert restarted.policy == document(1, CLOUD)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[]",
        json.dumps({"format": 1, "version": 1, "digest": "0" * 64, "document": MINIMAL}).encode(),
        json.dumps({"format": 9, "version": 1, "digest": "x", "document": MINIMAL}).encode(),
        json.dumps({"format": 1, "version": True, "digest": "x", "document": MINIMAL}).encode(),
        b"x" * (3 * MAX_DOCUMENT_BYTES),
    ],
)
def test_a_damaged_kept_policy_is_ignored(tmp_path: Path, content: bytes) -> None:
    (tmp_path / POLICY_STATE_FILE).write_bytes(content)
    state = PolicyState(tmp_path)
    state.load()
    assert state.policy is None
    assert route(state) == ()


def test_an_offline_bundles_policy_is_used_when_none_was_pushed(tmp_path: Path) -> None:
    as_json = json.dumps({"version": 1, **_minimal_dict()})
    (tmp_path / BUNDLE_POLICY_FILE).write_text(as_json, encoding="utf-8")
    state = PolicyState(tmp_path)
    state.load()
    assert state.policy is not None
    assert state.policy.version == 0
    assert route(state) == ("here",)
    # A pushed policy wins over it, and is what a restart loads.
    state.apply(document(1, CLOUD))
    restarted = PolicyState(tmp_path)
    restarted.load()
    assert restarted.policy == document(1, CLOUD)


def _minimal_dict() -> dict[str, object]:
    return {
        "roles": {"dev": {"max_level": "internal", "targets": ["here"]}},
        "targets": {"here": {"type": "local", "model": "smol"}},
        "routes": [{"name": "all", "targets": ["here"]}],
    }
