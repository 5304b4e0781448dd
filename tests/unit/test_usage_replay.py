"""A restarted agent's budgets count the month's settled requests from its usage buffer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.usage_buffer import UsageBuffer, month_start
from common.errors import ResourceExhausted
from common.policy.document import parse_policy
from common.policy.request_budgets import RequestBudgets
from common.policy.routing import Caller
from tests.usage_rows import ledger_row

POLICY = parse_policy("""
version: 1
roles:
  dev: {max_level: restricted, targets: ["*"]}
targets:
  home: {type: local, model: smol}
routes:
  - {name: all, targets: [home]}
budgets:
  teams:
    support: {requests_per_minute: 2, spend_per_month: 1}
""")
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CALLER = Caller("dev", team="support", key_id="7")


def admit(budgets: RequestBudgets) -> None:
    budgets.admit(POLICY, CALLER, ["home"], ["hi"], max_tokens=4)


def test_requests_settled_before_a_restart_count_against_the_limits(tmp_path: Path) -> None:
    recent = NOW - timedelta(seconds=10)
    with UsageBuffer(tmp_path) as buffer:
        buffer.append_many([ledger_row(at=recent), ledger_row(at=recent, outcome="refused")])
        buffer.ack(2, dropped_reported=0)  # acked rows still count
    with UsageBuffer(tmp_path) as restarted:
        settled = restarted.settled_since(month_start(NOW))
    fresh = RequestBudgets(clock=NOW.timestamp)
    admit(fresh)
    admit(fresh)  # without the replay: two fit the minute
    budgets = RequestBudgets(clock=NOW.timestamp)
    budgets.replay(settled)  # before any policy: applied with the first
    admit(budgets)
    with pytest.raises(ResourceExhausted, match="requests per minute"):
        admit(budgets)


def test_the_months_spend_is_remembered_after_the_minute(tmp_path: Path) -> None:
    earlier = NOW - timedelta(days=2)
    with UsageBuffer(tmp_path) as buffer:
        buffer.append(ledger_row(at=earlier, cost_nanos=10**9 + 1))  # over the month
        settled = buffer.settled_since(month_start(NOW))
    budgets = RequestBudgets(clock=NOW.timestamp)
    admit(budgets)  # the tracker exists: a replay now counts at once
    budgets.replay(settled)
    with pytest.raises(ResourceExhausted, match="month"):
        admit(budgets)
