"""Policy budgets and alerts: limits, thresholds, scopes, actions, notification channels."""

from __future__ import annotations

import pytest

from common.policy.document import (
    parse_policy,
)
from common.policy.policy_model import (
    AlertAction,
    AlertMetric,
    AlertScope,
)
from tests.policy_documents import (
    problem_at,
    problems,
    with_extra,
)

# -- budgets and alerts --------------------------------------------------------------------


def test_budgets() -> None:
    text = with_extra(
        "budgets:\n"
        "  teams: {ops: {spend_per_day: -1}, web: {over_budget: local}}\n"
        "  api_keys: {default: {requests_per_minute: 1.5, over_budget: queue}}\n"
    )
    found = {p.path: p.message for p in problems(text)}
    assert "below the minimum of 0" in found["budgets.teams.ops.spend_per_day"]
    assert "needs at least one of requests_per_minute" in found["budgets.teams.web"]
    assert "expected a whole number" in found["budgets.api_keys.default.requests_per_minute"]
    assert "unknown over budget 'queue'" in found["budgets.api_keys.default.over_budget"]


ALERTS = """\
budgets: {teams: {default: {spend_per_day: 5}}}
alerts:
  notify: [log, {webhook: "http://127.0.0.1:9000/hook"}]
  rules:
    - {name: slow, metric: latency_ms, op: ">", threshold: 5000, window_s: 300, action: route_away}
    - {name: overspend, metric: daily_cost, op: ">", threshold: budget, action: switch_to_local}
    - {name: flaky, metric: error_rate, op: ">", threshold: 0.05, window_s: 300,
       action: enable_fallback}
"""


def test_the_three_alerts_are_expressible() -> None:
    alerts = parse_policy(with_extra(ALERTS)).alerts
    slow, overspend, flaky = alerts.rules
    assert (slow.metric, slow.threshold, slow.scope, slow.window_s) == (
        AlertMetric.LATENCY_MS,
        5000.0,
        AlertScope.TARGET,
        300,
    )
    assert (overspend.threshold, overspend.scope, overspend.window_s) == (
        "budget",
        AlertScope.TEAM,
        None,
    )
    assert (flaky.threshold, flaky.action) == (0.05, AlertAction.ENABLE_FALLBACK)
    assert [channel.url for channel in alerts.notify] == [None, "http://127.0.0.1:9000/hook"]


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        (
            "{teams: {default: {spend_per_day: 5}}}",
            "{}",
            "alerts.rules[1].threshold",
            "needs spend_per_day in budgets.teams",
        ),
        ("threshold: 0.05", "threshold: 5", "alerts.rules[2].threshold", "0.05 means 5 %"),
        (
            "action: route_away}",
            "action: route_away, scope: team}",
            "alerts.rules[0].scope",
            "route_away needs scope target",
        ),
        (
            "action: switch_to_local}",
            "action: switch_to_local, window_s: 60}",
            "alerts.rules[1].window_s",
            "calendar",
        ),
        (
            "metric: latency_ms",
            "metric: latency",
            "alerts.rules[0].metric",
            "did you mean 'latency_ms'",
        ),
        (
            'op: ">", threshold: 5000',
            'op: "=>", threshold: 5000',
            "alerts.rules[0].op",
            "unknown op",
        ),
        (
            "threshold: 5000",
            "threshold: budget",
            "alerts.rules[0].threshold",
            "only to daily_cost and monthly_cost",
        ),
        ("[log, {", "[log, email, {", "alerts.notify[1]", "use log or {webhook: URL}"),
        ("http://127.0.0.1:9000/hook", "file:///tmp/x", "alerts.notify[1].webhook", "not an http"),
    ],
)
def test_alerts_are_checked(old: str, new: str, path: str, expected: str) -> None:
    text = with_extra(ALERTS.replace(old, new, 1))
    assert expected in problem_at(text, path).message
