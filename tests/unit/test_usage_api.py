"""REST reports of the usage ledger over the real app and database (SQLite, PostgreSQL):
exact decimal sums, groups and days, sensitive share, cloud savings, pages, bad input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common.policy.ledger_record import LedgerRecord
from controlplane import usage_reports
from controlplane.auth import Role
from controlplane.usage_store import UsageStore
from tests.unit.test_controlplane_api import Api, api, error
from tests.usage_rows import ledger_row

__all__ = ["api"]  # the fixture, shared

DAY = datetime(2026, 11, 20, tzinfo=UTC)
SINCE, UNTIL = "2026-11-20T00:00:00Z", "2026-11-23T00:00:00Z"
POLICY = """
version: 1
levels: [open, internal, secret]
roles:
  dev: {max_level: secret, targets: ["*"]}
targets:
  home: {type: local, model: smol}
  big-cloud: {type: cloud, model: gpt-x, base_url: "https://api.example.com/v1",
              max_level: internal, price_per_1k_input: 0.001, price_per_1k_output: 0.002}
  cheap-cloud: {type: cloud, model: mini, base_url: "https://api.example.com/v1",
                max_level: internal, price_per_1k_input: 0.0000001, price_per_1k_output: 0}
routes:
  - {name: all, targets: [home]}
"""


def put(api: Api, *rows: LedgerRecord, agent: str = "agent-1") -> None:
    store = UsageStore(api.services.db, clock=lambda: DAY + timedelta(days=5))
    for row in rows:
        assert store.record(row, source=agent)


def get(api: Api, path: str, role: Role = Role.VIEWER, **params: Any) -> Any:
    response = api.call("GET", path, role, params={"since": SINCE, "until": UNTIL, **params})
    assert response.status_code == 200, response.text
    return response.json()


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def test_spend_by_team_sums_exactly_in_decimal(api: Api) -> None:
    put(
        api,
        ledger_row(at=at(1), team="a", cost_nanos=999_999_999, prompt_tokens=1),
        ledger_row(at=at(2), team="a", cost_nanos=2, outcome="failed", completion_tokens=5),
        ledger_row(at=at(3), team="b", cost_nanos=0, outcome="refused"),
        ledger_row(at=at(-1), team="a", cost_nanos=7),  # before `since`
        ledger_row(at=at(72), team="a", cost_nanos=7),  # at `until`: outside
    )
    body = get(api, "/usage/spend")
    assert (body["since"], body["until"], body["group_by"]) == (SINCE, UNTIL, ["team"])
    assert body["groups"] == [
        {"team": "a", "requests": 2, "answered": 1, "refused": 0, "failed": 1,
         "prompt_tokens": 13, "completion_tokens": 35, "cost": "1.000000001"},
        {"team": "b", "requests": 1, "answered": 0, "refused": 1, "failed": 0,
         "prompt_tokens": 12, "completion_tokens": 30, "cost": "0.000000000"},
    ]  # fmt: skip
    assert body["total"]["cost"] == "1.000000001"
    assert body["total"]["requests"] == 3
    assert body["truncated"] is False


def test_spend_by_team_route_and_day(api: Api) -> None:
    put(
        api,
        ledger_row(at=at(1), route="r1", cost_nanos=10),
        ledger_row(at=at(2), route="r1", cost_nanos=20),
        ledger_row(at=at(25), route="r1", cost_nanos=5),
        ledger_row(at=at(26), route=None, target=None, cost_nanos=0, outcome="refused"),
        ledger_row(at=at(30), route="r2", level="secret", target="big-cloud", cost_nanos=1),
    )
    body = get(api, "/usage/spend", group_by="team,route", bucket="day")
    keys = [(g["team"], g["route"], g["day"], g["requests"], g["cost"]) for g in body["groups"]]
    assert sorted(keys, key=str) == sorted(
        [
            ("support", "r1", "2026-11-20", 2, "0.000000030"),
            ("support", "r1", "2026-11-21", 1, "0.000000005"),
            ("support", None, "2026-11-21", 1, "0.000000000"),
            ("support", "r2", "2026-11-21", 1, "0.000000001"),
        ],
        key=str,
    )
    by_target = get(api, "/usage/spend", group_by="target,level")["groups"]
    assert {(g["target"], g["level"]): g["cost"] for g in by_target} == {
        ("home", "internal"): "0.000000035",
        (None, "internal"): "0.000000000",
        ("big-cloud", "secret"): "0.000000001",
    }


def test_sensitive_share_counts_levels_above_the_lowest(api: Api) -> None:
    api.services.policies.apply(POLICY, actor="t")
    put(
        api,
        ledger_row(at=at(1), level="open", prompt_tokens=10, completion_tokens=10),
        ledger_row(at=at(2), level="open", prompt_tokens=10, completion_tokens=10),
        ledger_row(at=at(3), level="secret", prompt_tokens=50, completion_tokens=10),
        ledger_row(at=at(4), level="retired", prompt_tokens=0, completion_tokens=20),
    )
    body = get(api, "/usage/sensitive")
    assert body["policy_version"] == 1
    assert body["lowest_level"] == "open"
    assert body["sensitive_levels"] == ["internal", "secret", "retired"]
    assert [(r["level"], r["sensitive"], r["requests"], r["tokens"]) for r in body["levels"]] == [
        ("open", False, 2, 40), ("internal", True, 0, 0), ("secret", True, 1, 60),
        ("retired", True, 1, 20),
    ]  # fmt: skip
    assert body["sensitive"]["requests"] == 2
    assert body["sensitive"]["request_share"] == 0.5
    assert body["sensitive"]["token_share"] == 0.666667
    assert body["total"] == {
        "requests": 4, "prompt_tokens": 70, "completion_tokens": 50, "tokens": 120,
    }  # fmt: skip


def test_savings_against_each_cloud_target_of_the_live_policy(api: Api) -> None:
    put(api, ledger_row(at=at(1), prompt_tokens=1500, completion_tokens=250, cost_nanos=100))
    put(api, ledger_row(at=at(2), prompt_tokens=500, completion_tokens=750, cost_nanos=23))
    assert get(api, "/usage/savings")["cloud"] == []  # no policy yet
    api.services.policies.apply(POLICY, actor="t")
    body = get(api, "/usage/savings")
    assert body["actual"]["cost"] == "0.000000123"
    # 2000 prompt, 1000 completion tokens: 2000 × 0.001/1000 + 1000 × 0.002/1000 = 0.004;
    # 2000 × 0.0000001/1000 = 2×10^-7 (200 nano-units).
    assert body["cloud"] == [
        {"target": "big-cloud", "model": "gpt-x", "cost": "0.004000000",
         "savings": "0.003999877"},
        {"target": "cheap-cloud", "model": "mini", "cost": "0.000000200",
         "savings": "0.000000077"},
    ]  # fmt: skip
    put(api, ledger_row(at=at(3), prompt_tokens=0, completion_tokens=0, cost_nanos=1000))
    cheap = get(api, "/usage/savings")["cloud"][1]
    assert cheap["savings"] == "-0.000000923"  # the cloud would have been cheaper


def test_records_are_paged_newest_first_with_prompts_only_when_stored(api: Api) -> None:
    put(api, *[ledger_row(at=at(h), request_id=f"r{h}") for h in range(5)])
    put(api, ledger_row(at=at(2), request_id="r2b", prompt="kept"), agent="agent-2")
    first = get(api, "/usage/records", limit=4)
    ids = [r["request_id"] for r in first["records"]]
    assert ids == ["r4", "r3", "r2b", "r2"]
    second = get(api, "/usage/records", limit=4, cursor=first["next_cursor"])
    assert [r["request_id"] for r in second["records"]] == ["r1", "r0"]
    assert second["next_cursor"] is None
    row = first["records"][2]
    assert row["prompt"] == "kept"
    assert row["source"] == "agent-2"
    assert "prompt" not in first["records"][0]
    assert row["cost"] == "0.001234567"
    assert row["attempts"][0] == {
        "target": "cloud", "outcome": "error", "reason": "HTTP 502", "latency_ms": 12.5,
    }  # fmt: skip
    only = get(api, "/usage/records", source="agent-2")["records"]
    assert [r["request_id"] for r in only] == ["r2b"]


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/usage/spend", {"since": "yesterday"}, "'since' must be an ISO-8601 time"),
        ("/usage/spend", {"until": "2026-13-01"}, "'until' must be an ISO-8601 time"),
        ("/usage/spend", {"since": UNTIL, "until": SINCE}, "'since' must be before 'until'"),
        ("/usage/spend", {"group_by": "color"}, "unknown group_by 'color'"),
        ("/usage/spend", {"group_by": "team,team"}, "twice"),
        ("/usage/spend", {"group_by": "team,route,level,target"}, "1 to 3"),
        ("/usage/spend", {"bucket": "week"}, "'bucket' must be 'day'"),
        ("/usage/sensitive", {"since": "x" * 65}, "since"),
        ("/usage/savings", {"until": "soon"}, "'until' must be an ISO-8601 time"),
        ("/usage/records", {"limit": 100000}, "limit"),
        ("/usage/records", {"limit": 0}, "limit"),
        ("/usage/records", {"cursor": "nonsense"}, "'cursor' must be"),
    ],
)
def test_bad_query_input_is_a_400_that_says_why(
    api: Api, path: str, params: dict[str, Any], message: str
) -> None:
    query = {"since": SINCE, "until": UNTIL, **params}
    assert message in error(api.call("GET", path, Role.VIEWER, params=query), 400)


def test_reports_need_an_api_key(api: Api) -> None:
    assert error(api.call("GET", "/usage/spend", None), 401)


def test_the_default_range_is_this_month_until_now(api: Api) -> None:
    body = api.call("GET", "/usage/spend").json()
    since = datetime.fromisoformat(body["since"])
    assert (since.day, since.hour, since.minute) == (1, 0, 0)
    assert datetime.fromisoformat(body["until"]) > since


def test_a_spend_report_with_too_many_groups_is_cut_and_says_so(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_reports, "MAX_GROUPS", 2)
    put(api, *[ledger_row(at=at(1), team=f"team-{n}", cost_nanos=n) for n in range(3)])
    body = get(api, "/usage/spend")
    assert [g["team"] for g in body["groups"]] == ["team-0", "team-1"]
    assert body["truncated"] is True
    assert body["total"]["cost"] == "0.000000003"  # the total counts every group
