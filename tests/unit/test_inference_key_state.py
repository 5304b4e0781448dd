"""Inference keys on the agent: the checked set, its file, `authenticate`, the wire format."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest

from agent.control.client import MAX_MESSAGE_BYTES
from agent.inference_keys import INFERENCE_KEYS_FILE, MAX_FILE_BYTES, InferenceKeyState
from common.control import DesiredState, InferenceKeyGrant, ItemState, PolicyDocument
from common.errors import InvalidArgument
from common.inference_key_grants import MAX_INFERENCE_KEYS, check_grants
from common.policy.document import MAX_DOCUMENT_BYTES
from common.policy.routing import Caller
from common.proto_convert import desired_state_from_pb, desired_state_to_pb

KEY = "opi_" + "k" * 40
OTHER = "opi_" + "o" * 40


def grant(
    key: str, key_id: str = "1", role: str = "developer", team: str = "search"
) -> InferenceKeyGrant:
    return InferenceKeyGrant(key_id, hashlib.sha256(key.encode()).hexdigest(), role, team)


def test_a_live_bearer_key_gives_its_caller(tmp_path: Path) -> None:
    state = InferenceKeyState(tmp_path)
    assert state.authenticate(f"Bearer {KEY}") is None  # nothing accepted before a set
    state.apply((grant(KEY), grant(OTHER, "2", "analyst", "bi")))
    assert state.authenticate(f"Bearer {KEY}") == Caller("developer", "search", "1")
    assert state.authenticate(f"bearer  {OTHER} ") == Caller("analyst", "bi", "2")
    item = state.status_item()
    assert item is not None
    assert (item.kind, item.name, item.state) == ("inference_keys", "2", ItemState.READY)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        KEY,  # no scheme
        f"Basic {KEY}",
        f"Bearer {KEY}x",
        f"Bearer {KEY[:-1]}",
        f"Bearer {hashlib.sha256(KEY.encode()).hexdigest()}",  # the hash is no key
        "Bearer " + "k" * 100_000,
        "Bearer \udcff\x00",
    ],
)
def test_anything_else_is_refused(tmp_path: Path, header: str | None) -> None:
    state = InferenceKeyState(tmp_path)
    state.apply((grant(KEY),))
    assert state.authenticate(header) is None


def test_a_new_set_replaces_the_old_and_none_keeps_it(tmp_path: Path) -> None:
    state = InferenceKeyState(tmp_path)
    state.apply((grant(KEY),))
    state.apply(None)  # an older control plane: no set
    assert state.authenticate(f"Bearer {KEY}") is not None
    state.apply((grant(OTHER, "2"),))  # KEY revoked
    assert state.authenticate(f"Bearer {KEY}") is None
    assert state.authenticate(f"Bearer {OTHER}") is not None
    state.apply(())
    assert state.authenticate(f"Bearer {OTHER}") is None
    assert state.grants == ()
    assert state.status_item() is None  # no keys, nothing failed: no item
    restarted = InferenceKeyState(tmp_path)  # the empty set is kept: no key comes back
    restarted.load()
    assert restarted.grants == ()
    assert restarted.authenticate(f"Bearer {OTHER}") is None


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (grant(KEY, key_id="0"), "positive decimal"),
        (grant(KEY, key_id="x1"), "positive decimal"),
        (grant(KEY, key_id="1" * 21), "positive decimal"),
        (InferenceKeyGrant("1", "Z" * 64, "r", "t"), "lowercase hex"),
        (InferenceKeyGrant("1", "A" * 64, "r", "t"), "lowercase hex"),
        (InferenceKeyGrant("1", "a" * 63, "r", "t"), "lowercase hex"),
        (grant(KEY, role=""), "role"),
        (grant(KEY, role="a b"), "role"),
        (grant(KEY, team="t" * 64), "team"),
        (grant(KEY, team="../x"), "team"),
    ],
)
def test_an_invalid_set_is_refused_and_the_last_one_stays(
    tmp_path: Path, bad: InferenceKeyGrant, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        check_grants([bad])
    state = InferenceKeyState(tmp_path)
    state.apply((grant(OTHER, "2"),))
    state.apply((bad,))
    assert state.authenticate(f"Bearer {OTHER}") is not None
    item = state.status_item()
    assert item is not None
    assert item.state is ItemState.FAILED
    assert "invalid" in item.error


def test_duplicates_and_huge_counts_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="twice"):
        check_grants([grant(KEY, "1"), grant(KEY, "2")])
    with pytest.raises(InvalidArgument, match="twice"):
        check_grants([grant(KEY, "1"), grant(OTHER, "1")])
    many = [InferenceKeyGrant(str(i + 1), f"{i:064x}", "r", "t") for i in range(MAX_INFERENCE_KEYS)]
    assert len(check_grants(many)) == MAX_INFERENCE_KEYS
    too_many = [*many, InferenceKeyGrant("99999", "f" * 64, "r", "t")]
    with pytest.raises(InvalidArgument, match="more than"):
        check_grants(too_many)


def test_the_set_is_kept_on_disk_privately_and_loaded_at_start(tmp_path: Path) -> None:
    first = InferenceKeyState(tmp_path / "state")
    first.apply((grant(KEY),))
    path = tmp_path / "state" / INFERENCE_KEYS_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert KEY not in path.read_text()
    restarted = InferenceKeyState(tmp_path / "state")
    restarted.load()
    assert restarted.authenticate(f"Bearer {KEY}") == Caller("developer", "search", "1")


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b"\xff\xfe",
        b'{"format": 2, "keys": []}',
        b'{"format": 1, "keys": {}}',
        b'{"format": 1, "keys": [1]}',
        b'{"format": 1, "keys": [{"key_id": "1"}]}',
        b'{"format": 1, "keys": [{"key_id": 1, "key_hash": "'
        + b"a" * 64
        + b'", "role": "r", "team": "t"}]}',
        b'{"format": 1, "keys": [{"key_id": "1", "key_hash": "nothex", "role": "r", "team": "t"}]}',
        b"[" * 100_000 + b"]" * 100_000,
        b" " * (MAX_FILE_BYTES + 1),
    ],
)
def test_a_damaged_file_is_ignored_and_logged(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / INFERENCE_KEYS_FILE).write_bytes(content)
    state = InferenceKeyState(tmp_path)
    with caplog.at_level(logging.ERROR):
        state.load()
    assert state.grants == ()
    assert "damaged" in caplog.text
    assert state.status_item() is None


def test_a_set_that_cannot_be_kept_is_still_accepted_and_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    state = InferenceKeyState(blocker / "state")
    state.apply((grant(KEY),))
    assert state.authenticate(f"Bearer {KEY}") is not None
    item = state.status_item()
    assert item is not None
    assert item.state is ItemState.FAILED
    assert "not kept" in item.error


def test_the_wire_keeps_none_apart_from_empty_and_checks_what_arrives() -> None:
    for keys in (None, (), (grant(KEY), grant(OTHER, "2", "analyst", "bi"))):
        state = DesiredState(generation=3, inference_keys=keys)
        assert desired_state_from_pb(desired_state_to_pb(state)) == state
    hostile = desired_state_to_pb(DesiredState(generation=1, inference_keys=(grant(KEY),)))
    hostile.inference_keys.keys[0].key_hash = "not hex"
    arrived = desired_state_from_pb(hostile).inference_keys  # the agent's state checks it
    assert arrived is not None
    with pytest.raises(InvalidArgument, match="lowercase hex"):
        check_grants(arrived)
    huge = desired_state_to_pb(DesiredState(generation=1, inference_keys=()))
    for i in range(MAX_INFERENCE_KEYS + 1):
        huge.inference_keys.keys.add(key_id=str(i + 1), key_hash=f"{i:064x}", role="r", team="t")
    with pytest.raises(InvalidArgument, match="more than"):
        desired_state_from_pb(huge)


def test_the_largest_set_with_the_largest_policy_fits_one_control_message() -> None:
    longest = "x" * 63
    grants = tuple(
        InferenceKeyGrant(str(10**19 + i), f"{i:064x}", longest, longest)
        for i in range(MAX_INFERENCE_KEYS)
    )
    policy = PolicyDocument(1, "0" * 64, "#" * MAX_DOCUMENT_BYTES)
    state = DesiredState(generation=2**62, policy=policy, inference_keys=grants)
    assert desired_state_to_pb(state).ByteSize() < MAX_MESSAGE_BYTES
