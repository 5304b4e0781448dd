"""The audit log: events go with their transaction, denials on their own, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from common.errors import InvalidArgument
from controlplane.audit import AuditLog
from controlplane.db.database import Database

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)  # every event a second after the previous one
        return self.now


@pytest.fixture
def audit(database: Database) -> AuditLog:
    return AuditLog(database, clock=Clock())


def test_an_event_is_kept_only_if_its_transaction_commits(
    database: Database, audit: AuditLog
) -> None:
    with database.session() as session:
        audit.record(session, actor="alice", action="token.create", target="token:1")

    def record_then_fail() -> None:
        with database.session() as session:
            audit.record(session, actor="mallory", action="agent.revoke", target="agent:x")
            raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        record_then_fail()
    [event] = audit.list()
    assert (event.actor, event.action, event.target, event.outcome, event.detail) == (
        "alice",
        "token.create",
        "token:1",
        "ok",
        {},
    )
    assert event.at == T0 + timedelta(seconds=1)


def test_denials_are_recorded_in_their_own_transaction(audit: AuditLog) -> None:
    audit.record_now(
        actor="peer:ipv4:10.0.0.9:5000",
        action="enroll",
        target="enrollment",
        outcome="denied",
        detail={"reason": "join token is used"},
    )
    [event] = audit.list()
    assert (event.outcome, event.detail) == ("denied", {"reason": "join token is used"})


def test_newest_first_with_limit_and_offset(audit: AuditLog) -> None:
    for n in range(5):
        audit.record_now(actor="a", action="x", target=f"t{n}")
    assert [e.target for e in audit.list()] == ["t4", "t3", "t2", "t1", "t0"]
    assert [e.target for e in audit.list(limit=2)] == ["t4", "t3"]
    assert [e.target for e in audit.list(limit=2, offset=3)] == ["t1", "t0"]
    assert audit.list(offset=5) == []


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (1001, 0), (10, -1)])
def test_out_of_range_paging_is_refused(audit: AuditLog, limit: int, offset: int) -> None:
    with pytest.raises(InvalidArgument):
        audit.list(limit=limit, offset=offset)


def test_an_unknown_outcome_is_a_bug(audit: AuditLog) -> None:
    with pytest.raises(ValueError, match="outcome"):
        audit.record_now(actor="a", action="x", target="t", outcome="maybe")
    assert audit.list() == []


def test_hostile_strings_are_stored_verbatim_or_clipped(audit: AuditLog) -> None:
    sql = "'); DELETE FROM audit_events; --"
    detail = {"reason": "x" * 10_000, "nested": {"sql": sql, "nul": "a\x00b", "n": [1, 2]}}
    audit.record_now(actor=sql, action="enroll", target="Zoë 🚀\nline", detail=detail)
    audit.record_now(actor="a\x00b", action="x" * 100, target="t" * 10_000)
    newest, first = audit.list()
    assert (first.actor, first.target, first.detail) == (sql, "Zoë 🚀\nline", detail)
    assert newest.actor == "a\N{REPLACEMENT CHARACTER}b"
    assert len(newest.action) == 64
    assert len(newest.target) == 255
    assert newest.target.endswith("…")
