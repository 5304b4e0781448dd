"""Alert rules over request outcomes: metrics at their thresholds, actions, update, bad input."""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import pytest

from common.policy.alert_notify import AlertEvent
from common.policy.alerts import MIN_SAMPLES, AlertEvaluator, RequestOutcome
from common.policy.document import load_policy
from common.policy.policy_model import (
    AlertMetric,
    AlertRule,
    Alerts,
    AlertScope,
    NotifyChannel,
    NotifyKind,
    Policy,
)
from common.policy.routing import NO_RESTRICTIONS
from tests.policy_documents import EXAMPLE

START = 1_750_000_000.0  # 2025-06-15T15:06:40Z
NANOS = 10**9


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[AlertEvent, tuple[NotifyChannel, ...]]] = []

    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        self.sent.append((event, channels))


class FailingNotifier:
    def notify(self, event: AlertEvent, channels: tuple[NotifyChannel, ...]) -> None:
        raise RuntimeError("notifier down")


@pytest.fixture(scope="module")
def example() -> Policy:
    return load_policy(EXAMPLE)


def with_rules(policy: Policy, *rules: AlertRule) -> Policy:
    return dataclasses.replace(policy, alerts=Alerts(rules=rules))


def outcome(at: float = START, **changes: Any) -> RequestOutcome:
    values: dict[str, Any] = {
        "at": at,
        "target": "cloud-mini",
        "team": "support",
        "user": "ana",
        "latency_ms": 100.0,
        "ok": True,
        "tokens": 10,
        "cost_nanos": 0,
    }
    return RequestOutcome(**(values | changes))


def evaluator(
    policy: Policy, clock: Clock, notifier: Any = None, **settings: Any
) -> AlertEvaluator:
    settings.setdefault("min_firing_s", 0.0)
    return AlertEvaluator(policy, clock=clock, notifier=notifier or RecordingNotifier(), **settings)


def states(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(event.rule, event.key, event.state) for event in events]


def rule(metric: AlertMetric, threshold: float | str, **changes: Any) -> AlertRule:
    values: dict[str, Any] = {
        "name": "r",
        "metric": metric,
        "threshold": threshold,
        "scope": AlertScope.TARGET,
        "window_s": 300,
    }
    return AlertRule(**(values | changes))


def test_latency_p95_fires_above_the_threshold_and_clears_when_the_window_drains(
    example: Policy,
) -> None:
    clock = Clock(START + 20)
    alerts = evaluator(with_rules(example, rule(AlertMetric.LATENCY_MS, 5000.0)), clock)
    for second in range(19):  # one a second: every latency kept, the rank is exact
        alerts.observe(outcome(at=START + second, latency_ms=5000.0))
    alerts.observe(outcome(at=START + 19, latency_ms=9000.0))  # rank 19 of 20 is still 5000
    assert alerts.evaluate() == []
    alerts.observe(outcome(at=START + 20, latency_ms=5000.5))  # rank 20 of 21 is 5000.5
    [fired] = alerts.evaluate()
    assert (fired.state, fired.key, fired.value, fired.threshold) == (
        "firing",
        "cloud-mini",
        5000.5,
        5000.0,
    )
    assert alerts.evaluate() == []  # still firing: no new event
    clock.now = START + 10 + 300.999  # 10 of 21 left the window: below MIN_SAMPLES at 11 out
    assert alerts.evaluate() == []
    clock.now = START + 11 + 301
    [cleared] = alerts.evaluate()
    assert (cleared.state, cleared.reason) == ("cleared", "not measured")


def test_p95_weights_sampled_latencies_by_their_buckets_requests(example: Policy) -> None:
    alerts = evaluator(with_rules(example, rule(AlertMetric.LATENCY_MS, 5000.0)), Clock())
    for index in range(2000):  # all in one second: the bucket keeps a sample of 19
        alerts.observe(outcome(latency_ms=9000.0 if index % 2 else 10.0))
    [fired] = alerts.evaluate()
    assert fired.value == 9000.0


def test_error_rate_fires_above_five_percent_and_clears_at_exactly_five(example: Policy) -> None:
    alerts = evaluator(with_rules(example, rule(AlertMetric.ERROR_RATE, 0.05)), Clock())
    alerts.observe(outcome(ok=False))
    for _ in range(19):
        alerts.observe(outcome())
    assert alerts.evaluate() == []  # 1/20 = 0.05 is not > 0.05
    alerts.observe(outcome(ok=False))
    [fired] = alerts.evaluate()
    assert fired.value == pytest.approx(2 / 21)
    for _ in range(19):
        alerts.observe(outcome())
    [cleared] = alerts.evaluate()
    assert (cleared.state, cleared.value, cleared.reason) == ("cleared", 0.05, "")


def test_error_rate_needs_min_samples(example: Policy) -> None:
    alerts = evaluator(with_rules(example, rule(AlertMetric.ERROR_RATE, 0.05)), Clock())
    for _ in range(MIN_SAMPLES - 1):
        alerts.observe(outcome(ok=False))
    assert alerts.evaluate() == []  # 100 % failed, but only 9 requests
    alerts.observe(outcome(ok=False))
    assert states(alerts.evaluate()) == [("r", "cloud-mini", "firing")]


def test_requests_per_minute_counts_a_window_exactly(example: Policy) -> None:
    clock = Clock()
    policy = with_rules(
        example, rule(AlertMetric.REQUESTS_PER_MINUTE, 3, scope=AlertScope.TEAM, window_s=60)
    )
    alerts = evaluator(policy, clock)
    for _ in range(3):
        alerts.observe(outcome())
    assert alerts.evaluate() == []
    clock.now = START + 30
    alerts.observe(outcome(at=clock.now))
    [fired] = alerts.evaluate()
    assert (fired.key, fired.value) == ("support", 4.0)
    clock.now = START + 61  # the first three left the window
    [cleared] = alerts.evaluate()
    assert (cleared.state, cleared.value) == ("cleared", 1.0)


def test_tokens_per_minute_scales_the_window_to_a_minute(example: Policy) -> None:
    policy = with_rules(
        example,
        rule(AlertMetric.TOKENS_PER_MINUTE, 1000, scope=AlertScope.API_KEY, window_s=120),
    )
    alerts = evaluator(policy, Clock())
    alerts.observe(outcome(tokens=2000))
    assert alerts.evaluate() == []  # 2000 tokens in 120 s is 1000 per minute
    alerts.observe(outcome(tokens=2))
    [fired] = alerts.evaluate()
    assert (fired.key, fired.value) == ("ana", 1001.0)


def test_daily_cost_fires_above_a_fixed_amount_and_clears_at_utc_midnight(
    example: Policy,
) -> None:
    clock = Clock()
    policy = with_rules(
        example, rule(AlertMetric.DAILY_COST, 1.0, scope=AlertScope.ALL, window_s=None)
    )
    alerts = evaluator(policy, clock)
    alerts.observe(outcome(cost_nanos=NANOS))
    assert alerts.evaluate() == []  # exactly 1.0 is not > 1.0
    alerts.observe(outcome(cost_nanos=1))
    [fired] = alerts.evaluate()
    assert (fired.key, fired.value, fired.threshold) == ("*", 1.000000001, 1.0)
    clock.now = (START // 86_400 + 1) * 86_400 - 0.5
    assert alerts.evaluate() == []
    clock.now += 0.5
    [cleared] = alerts.evaluate()
    assert (cleared.state, cleared.value) == ("cleared", 0.0)


def test_budget_threshold_is_each_teams_own_spend_per_day(example: Policy) -> None:
    overspend = next(r for r in example.alerts.rules if r.name == "overspend")
    alerts = evaluator(with_rules(example, overspend), Clock())
    alerts.observe(outcome(team="support", cost_nanos=10 * NANOS))  # support: 10.0
    alerts.observe(outcome(team="research", cost_nanos=20 * NANOS))  # research: 50.0
    alerts.observe(outcome(team="ops", cost_nanos=5 * NANOS))  # default: 5.0
    assert alerts.evaluate() == []
    alerts.observe(outcome(team="support", cost_nanos=1))
    alerts.observe(outcome(team="ops", cost_nanos=1))
    fired = alerts.evaluate()
    assert sorted((e.key, e.threshold) for e in fired) == [("ops", 5.0), ("support", 10.0)]


def test_monthly_budget_per_api_key_ignores_keys_whose_budget_sets_none(
    example: Policy,
) -> None:
    clock = Clock()
    month_rule = rule(AlertMetric.MONTHLY_COST, "budget", scope=AlertScope.API_KEY, window_s=None)
    alerts = evaluator(with_rules(example, month_rule), clock)
    alerts.observe(outcome(user="ana", cost_nanos=10**15))  # api_keys.default has no spend
    assert alerts.evaluate() == []
    budgets = dataclasses.replace(
        example.budgets,
        api_keys=(dataclasses.replace(example.budgets.api_keys[0], spend_per_month=2.5),),
    )
    alerts.update(dataclasses.replace(with_rules(example, month_rule), budgets=budgets))
    [fired] = alerts.evaluate()
    assert (fired.key, fired.threshold) == ("ana", 2.5)


def test_the_example_rules_drive_restrictions_and_fallback(example: Policy) -> None:
    clock = Clock()
    alerts = evaluator(example, clock)
    for _ in range(20):
        alerts.observe(outcome(target="cloud-mini", latency_ms=6000.0))
        alerts.observe(outcome(target="cloud-large", ok=False))
        alerts.observe(outcome(target="local-smol"))
    alerts.observe(outcome(target="local-smol", team="support", cost_nanos=10 * NANOS + 1))
    fired = alerts.evaluate()
    assert sorted(states(fired)) == [
        ("flaky", "cloud-large", "firing"),
        ("overspend", "support", "firing"),
        ("slow", "cloud-mini", "firing"),
    ]
    support = alerts.restrictions_for("support", "ana")
    assert support.avoid == frozenset({"cloud-mini"})
    assert support.local_only.startswith("alert overspend: daily_cost 10 > 10")
    assert alerts.restrictions_for("research", "ana").local_only == ""
    assert alerts.restrictions_for("research", "ana").avoid == frozenset({"cloud-mini"})
    assert alerts.fallback_enabled("cloud-large")
    assert not alerts.fallback_enabled("cloud-mini")
    clock.now = (START // 86_400 + 1) * 86_400  # next UTC day; the windows drained too
    assert sorted(e.state for e in alerts.evaluate()) == ["cleared"] * 3
    assert alerts.restrictions_for("support", "ana") is NO_RESTRICTIONS
    assert not alerts.fallback_enabled("cloud-large")


def test_scope_keys_are_measured_separately(example: Policy) -> None:
    alerts = evaluator(with_rules(example, rule(AlertMetric.LATENCY_MS, 5000.0)), Clock())
    for _ in range(20):
        alerts.observe(outcome(target="slow-one", latency_ms=7000.0))
        alerts.observe(outcome(target="fast-one", latency_ms=10.0))
    assert states(alerts.evaluate()) == [("r", "slow-one", "firing")]


def test_minimum_firing_duration_delays_clearing(example: Policy) -> None:
    clock = Clock()
    policy = with_rules(example, rule(AlertMetric.REQUESTS_PER_MINUTE, 0, window_s=60))
    alerts = evaluator(policy, clock, min_firing_s=60.0)
    alerts.observe(outcome())
    assert states(alerts.evaluate()) == [("r", "cloud-mini", "firing")]
    clock.now = START + 59.5  # drained at START + 61 but firing for less than 60 s before
    assert alerts.evaluate() == []
    clock.now = START + 61
    assert states(alerts.evaluate()) == [("r", "cloud-mini", "cleared")]


def test_update_clears_removed_and_changed_rules_and_keeps_unchanged_ones(
    example: Policy,
) -> None:
    notifier = RecordingNotifier()
    alerts = evaluator(example, Clock(), notifier)
    for _ in range(20):
        alerts.observe(outcome(target="cloud-mini", latency_ms=6000.0, ok=False))
    assert sorted(states(alerts.evaluate())) == [
        ("flaky", "cloud-mini", "firing"),
        ("slow", "cloud-mini", "firing"),
    ]
    _slow, overspend, flaky = example.alerts.rules
    stricter = dataclasses.replace(flaky, threshold=0.5)
    events = alerts.update(with_rules(example, overspend, stricter))
    assert [(e.rule, e.state, e.reason) for e in events] == [
        ("slow", "cleared", "rule removed"),
        ("flaky", "cleared", "rule changed"),
    ]
    assert alerts.restrictions_for("support", "ana").avoid == frozenset()
    assert not alerts.fallback_enabled("cloud-mini")
    assert states(alerts.evaluate()) == [("flaky", "cloud-mini", "firing")]  # 1.0 > 0.5
    assert alerts.update(with_rules(example, overspend, stricter)) == []  # unchanged: kept
    assert alerts.fallback_enabled("cloud-mini")
    assert [e.state for e, _ in notifier.sent] == [
        "firing",
        "firing",
        "cleared",
        "cleared",
        "firing",
    ]


def test_events_carry_the_rules_channels_and_are_plain_data(example: Policy) -> None:
    notifier = RecordingNotifier()
    hook = (NotifyChannel(kind=NotifyKind.WEBHOOK, url="http://127.0.0.1:1/own"),)
    own = rule(AlertMetric.REQUESTS_PER_MINUTE, 0, name="own", notify=hook, window_s=60)
    shared = rule(AlertMetric.REQUESTS_PER_MINUTE, 0, name="shared", window_s=60)
    alerts = evaluator(with_rules(example, own, shared), Clock(), notifier)
    alerts.observe(outcome())
    alerts.evaluate()
    channels = {event.rule: sent for event, sent in notifier.sent}
    assert channels == {"own": hook, "shared": Alerts().notify}
    event = notifier.sent[0][0]
    assert json.loads(json.dumps(event.to_dict())) == {
        "rule": "own",
        "metric": "requests_per_minute",
        "scope": "target",
        "key": "cloud-mini",
        "value": 1.0,
        "threshold": 0.0,
        "op": ">",
        "action": "notify",
        "at": START,
        "state": "firing",
        "reason": "",
    }


def test_a_failing_notifier_does_not_break_evaluation(example: Policy) -> None:
    policy = with_rules(example, rule(AlertMetric.REQUESTS_PER_MINUTE, 0, window_s=60))
    alerts = evaluator(policy, Clock(), FailingNotifier())
    alerts.observe(outcome())
    assert states(alerts.evaluate()) == [("r", "cloud-mini", "firing")]


def test_keys_past_the_cap_are_not_measured_until_old_ones_drain(example: Policy) -> None:
    clock = Clock()
    policy = with_rules(example, rule(AlertMetric.REQUESTS_PER_MINUTE, 0, window_s=60))
    alerts = evaluator(policy, clock, max_keys_per_scope=2)
    for target in ("a", "b", "c", "c"):
        alerts.observe(outcome(target=target))
    assert alerts.untracked_outcomes == 2
    assert sorted(states(alerts.evaluate())) == [("r", "a", "firing"), ("r", "b", "firing")]
    clock.now = START + 61
    assert len(alerts.evaluate()) == 2  # both cleared, their keys dropped
    alerts.observe(outcome(at=clock.now, target="c"))
    assert states(alerts.evaluate()) == [("r", "c", "firing")]


def test_outcomes_observed_from_many_threads_are_all_counted(example: Policy) -> None:
    policy = with_rules(
        example, rule(AlertMetric.REQUESTS_PER_MINUTE, 1999, scope=AlertScope.ALL, window_s=60)
    )
    alerts = evaluator(policy, Clock())

    def observe_many() -> None:
        for _ in range(500):
            alerts.observe(outcome())

    threads = [threading.Thread(target=observe_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    [fired] = alerts.evaluate()
    assert fired.value == 2000.0


def test_late_outcomes_count_in_their_own_second(example: Policy) -> None:
    clock = Clock(START + 100)
    policy = with_rules(example, rule(AlertMetric.REQUESTS_PER_MINUTE, 1, window_s=60))
    alerts = evaluator(policy, clock)
    alerts.observe(outcome(at=START + 99))
    alerts.observe(outcome(at=START + 50))  # late, still in the window
    alerts.observe(outcome(at=START + 10))  # late, already out of the window
    [fired] = alerts.evaluate()
    assert fired.value == 2.0
    clock.now = START + 111  # the bucket of START+50 ended 60 s ago
    [cleared] = alerts.evaluate()
    assert cleared.value == 1.0


@pytest.mark.parametrize(
    "changes",
    [
        {"latency_ms": float("nan")},
        {"latency_ms": -1.0},
        {"latency_ms": float("inf")},
        {"latency_ms": 1e300},
        {"latency_ms": True},
        {"at": float("nan")},
        {"at": -5.0},
        {"at": 1e20},
        {"tokens": -1},
        {"tokens": 10**30},
        {"tokens": 1.5},
        {"cost_nanos": -1},
        {"cost_nanos": 10**40},
        {"ok": 1},
        {"target": ""},
        {"team": "x" * 257},
        {"user": "ana\nFAKE LOG LINE"},
        {"target": None},
    ],
)
def test_hostile_outcomes_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(changes))):
        outcome(**changes)


def test_observe_refuses_what_is_not_an_outcome_and_outcomes_from_the_future(
    example: Policy,
) -> None:
    alerts = evaluator(example, Clock())
    with pytest.raises(ValueError, match="RequestOutcome"):
        alerts.observe({"at": START})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ahead"):
        alerts.observe(outcome(at=START + 301))
    alerts.observe(outcome(at=START + 300))
