"""Forwarded requests counted once: the forwarding side's row is stored and listed, never summed
(SQLite and PostgreSQL, over the real app)."""

from __future__ import annotations

from sqlmodel import select

from common.usage_batch import SequencedRecord, UsageBatch
from controlplane.auth import Role
from controlplane.db.models import UsageRecordRow
from controlplane.usage_store import UsageStore
from tests.unit.test_controlplane_api import Api, api, error
from tests.unit.test_usage_api import DAY, POLICY, SINCE, UNTIL, at, get, put
from tests.usage_rows import ledger_row

__all__ = ["api"]  # the fixture, shared


def put_pair(api: Api, hours: float, request: str, *, team: str, level: str, cost: int) -> None:
    """One request answered by agent-2 after agent-1 (or the gateway) forwarded it: two rows
    with the same tokens; the forwarder's counts the busy time of its wait as a cost too."""
    put(
        api,
        ledger_row(at=at(hours), request_id=request, team=team, level=level, forwarded=True,
                   prompt_tokens=100, completion_tokens=200, cost_nanos=5_000_000_000),
        agent="agent-1",
    )  # fmt: skip
    put(
        api,
        ledger_row(at=at(hours), request_id=request, team=team, level=level,
                   prompt_tokens=100, completion_tokens=200, cost_nanos=cost),
        agent="agent-2",
    )  # fmt: skip


def test_the_store_keeps_the_mark_from_batches_and_from_the_gateway(api: Api) -> None:
    store = UsageStore(api.services.db, clock=lambda: DAY)
    records = (SequencedRecord(1, ledger_row(at=at(-1), forwarded=True)),
               SequencedRecord(2, ledger_row(at=at(-1))))  # fmt: skip
    assert store.record_batch("agent-1", UsageBatch(records)).stored == 2
    assert store.record(ledger_row(at=at(-1), forwarded=True))
    with api.services.db.session() as session:
        found = session.exec(select(UsageRecordRow).order_by(UsageRecordRow.id)).all()  # type: ignore[arg-type]
    assert [(r.source, r.forwarded) for r in found] == [
        ("agent-1", True), ("agent-1", False), ("gateway", True),
    ]  # fmt: skip


def test_spend_counts_only_the_answering_agents_row_with_exact_sums(api: Api) -> None:
    put_pair(api, 1, "r1", team="a", level="internal", cost=999_999_999)
    put_pair(api, 2, "r2", team="a", level="internal", cost=2)
    put(api, ledger_row(at=at(3), team="b", cost_nanos=7, prompt_tokens=1, completion_tokens=1))
    body = get(api, "/usage/spend", group_by="team,source")
    assert body["groups"] == [
        {"team": "a", "source": "agent-2", "requests": 2, "answered": 2, "refused": 0,
         "failed": 0, "prompt_tokens": 200, "completion_tokens": 400, "cost": "1.000000001"},
        {"team": "b", "source": "agent-1", "requests": 1, "answered": 1, "refused": 0,
         "failed": 0, "prompt_tokens": 1, "completion_tokens": 1, "cost": "0.000000007"},
    ]  # fmt: skip
    assert body["total"]["requests"] == 3
    assert body["total"]["cost"] == "1.000000008"
    by_day = get(api, "/usage/spend", bucket="day")["groups"]
    assert [(g["team"], g["day"], g["requests"]) for g in by_day] == [
        ("a", "2026-11-20", 2), ("b", "2026-11-20", 1),
    ]  # fmt: skip


def test_sensitive_share_and_savings_skip_forwarded_rows(api: Api) -> None:
    api.services.policies.apply(POLICY, actor="t")
    put_pair(api, 1, "r1", team="a", level="secret", cost=0)
    put(api, ledger_row(at=at(2), level="open", prompt_tokens=100, completion_tokens=200,
                        cost_nanos=0))  # fmt: skip
    sensitive = get(api, "/usage/sensitive")
    assert sensitive["total"]["requests"] == 2
    assert sensitive["sensitive"]["requests"] == 1
    assert sensitive["sensitive"]["request_share"] == 0.5
    assert sensitive["sensitive"]["token_share"] == 0.5
    savings = get(api, "/usage/savings")
    assert savings["actual"]["requests"] == 2
    assert savings["actual"]["cost"] == "0.000000000"
    assert (savings["actual"]["prompt_tokens"], savings["actual"]["completion_tokens"]) == (
        200, 400,
    )  # fmt: skip
    # big-cloud: 200 * 0.001 / 1000 + 400 * 0.002 / 1000 = 0.001 (of 600 tokens, not 1200)
    assert savings["cloud"][0]["cost"] == "0.001000000"


def test_records_list_both_rows_with_the_mark_and_filter_on_it(api: Api) -> None:
    put_pair(api, 1, "r1", team="a", level="internal", cost=3)
    both = get(api, "/usage/records")["records"]
    assert sorted((r["source"], r["forwarded"]) for r in both) == [
        ("agent-1", True), ("agent-2", False),
    ]  # fmt: skip
    forwarded = get(api, "/usage/records", forwarded="true")["records"]
    assert [(r["source"], r["request_id"]) for r in forwarded] == [("agent-1", "r1")]
    answered = get(api, "/usage/records", forwarded="false")["records"]
    assert [r["source"] for r in answered] == ["agent-2"]
    for bad in ("yes", "1", "TRUE", "x" * 9):
        query = {"since": SINCE, "until": UNTIL, "forwarded": bad}
        response = api.call("GET", "/usage/records", Role.VIEWER, params=query)
        assert "forwarded" in error(response, 400)
