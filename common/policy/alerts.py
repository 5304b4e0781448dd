"""The policy's alert rules evaluated over finished requests: events, restrictions, fallback."""

# Each rule is measured per scope key: the target, the team, the API key's user, or "*" (all).
#   latency_ms           95th percentile (nearest rank) of the latencies in the window
#   error_rate           failed / all requests in the window
#   requests_per_minute  requests in the window × 60 / window_s (tokens_per_minute likewise)
#   daily_cost           spend of the outcomes whose `at` is in the clock's UTC day
#   monthly_cost         spend of the outcomes whose `at` is in the clock's UTC month
# A window is kept as buckets of ceil(window_s / MAX_BUCKETS) seconds; a bucket counts while
# its end is after `now - window_s`, so an outcome counts for window_s plus at most one bucket.
# latency_ms and error_rate need MIN_SAMPLES requests in the window: below that the rule has no
# value, does not fire, and a firing one clears (a target routed away from gets no traffic, so
# it clears once its window drains and is measured again when traffic returns).
# Hysteresis: a rule that fired stays firing at least `min_firing_s` (default MIN_FIRING_S), so
# a value hovering at the threshold gives at most one firing and one clearing per period.
# Memory: a series keeps at most MAX_BUCKETS + 1 buckets and about MAX_LATENCY_SAMPLES latencies
# (a uniform sample per bucket once it has more; each sample then weighs requests / samples in
# the p95). At most `max_keys_per_scope` keys are tracked per scope; an outcome for a new key
# past that is not measured for that scope (counted in `untracked_outcomes`, logged) until keys
# without data, spend this month or a firing rule are dropped. Not thread-safe to share across
# processes; within one, every method may be called from any thread.
# A "budget" threshold is the key's spend_per_day / spend_per_month (Budgets.for_team or
# for_api_key, the "default" entry included); a key whose budget sets none is not measured.

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from common.policy.alert_notify import AlertEvent, Notifier
from common.policy.alert_windows import (
    RequestOutcome,
    Spend,
    Window,
    p95,
)
from common.policy.costs import nanos_to_decimal, to_nanos
from common.policy.policy_model import (
    AlertAction,
    AlertMetric,
    AlertRule,
    AlertScope,
    NotifyChannel,
    Policy,
)
from common.policy.routing import NO_RESTRICTIONS, Restrictions

__all__ = ["AlertEvaluator", "AlertEvent", "RequestOutcome"]

log = logging.getLogger(__name__)

MIN_SAMPLES = 10  # requests in the window before latency_ms / error_rate is measured
MIN_FIRING_S = 60.0
MAX_KEYS_PER_SCOPE = 1024
MAX_AHEAD_S = 300.0  # an outcome may be stamped this far after the evaluator's clock
DEFAULT_WINDOW_S = 300
ALL_KEY = "*"
_SPEND_METRICS = (AlertMetric.DAILY_COST, AlertMetric.MONTHLY_COST)


@dataclass(slots=True)
class _Tracked:
    windows: dict[int, Window] = field(default_factory=dict)
    spend: Spend = field(default_factory=Spend)


@dataclass(frozen=True, slots=True)
class _Firing:
    rule: AlertRule
    channels: tuple[NotifyChannel, ...]
    since: float
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class _Measured:
    value: float  # for the event (cost metrics in currency units)
    threshold: float
    holds: bool


@dataclass(frozen=True, slots=True)
class _Actions:
    local_only: dict[tuple[AlertScope, str], str] = field(default_factory=dict)
    avoid: frozenset[str] = frozenset()
    fallback_targets: frozenset[str] = frozenset()
    fallback_everywhere: bool = False


class AlertEvaluator:
    """`observe` each finished request (any thread), `evaluate` periodically, read actions."""

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Callable[[], float],
        notifier: Notifier,
        min_firing_s: float = MIN_FIRING_S,
        max_keys_per_scope: int = MAX_KEYS_PER_SCOPE,
    ) -> None:
        self._clock = clock
        self._notifier = notifier
        self._min_firing_s = min_firing_s
        self._max_keys = max_keys_per_scope
        self._lock = threading.Lock()
        self._sampler = random.Random(0)
        self._keys: dict[AlertScope, dict[str, _Tracked]] = {}
        self._firing: dict[tuple[str, str], _Firing] = {}
        self._actions = _Actions()
        self.untracked_outcomes = 0
        self._untracked_logged = 0
        self._policy = policy
        self._windows: dict[AlertScope, set[int]] = {}
        self._configure(policy)

    def observe(self, outcome: RequestOutcome) -> None:
        if not isinstance(outcome, RequestOutcome):
            raise ValueError(f"not a RequestOutcome: {type(outcome).__name__}")
        now = self._clock()
        if outcome.at > now + MAX_AHEAD_S:
            raise ValueError(f"outcome at {outcome.at} is more than {MAX_AHEAD_S:g} s ahead")
        with self._lock:
            for scope, table in self._keys.items():
                key = _key_of(scope, outcome)
                tracked = table.get(key)
                if tracked is None:
                    if len(table) >= self._max_keys:
                        self.untracked_outcomes += 1
                        continue
                    tracked = table[key] = _Tracked()
                for window_s in self._windows[scope]:
                    window = tracked.windows.get(window_s)
                    if window is None:
                        window = tracked.windows[window_s] = Window(window_s)
                    window.add(outcome, now, self._sampler)
                tracked.spend.add(outcome.at, outcome.cost_nanos)

    def evaluate(self) -> list[AlertEvent]:
        """Measures every rule per key; returns (and notifies) the rules that fired or cleared."""
        now = self._clock()
        events: list[tuple[AlertEvent, tuple[NotifyChannel, ...]]] = []
        with self._lock:
            for window in [
                w for t in self._keys.values() for k in t.values() for w in k.windows.values()
            ]:
                window.trim(now)
            for rule in self._policy.alerts.rules:
                table = self._keys[rule.scope]
                firing_keys = [k for (name, k) in self._firing if name == rule.name]
                for key in dict.fromkeys([*table, *firing_keys]):
                    known = table.get(key)
                    measured = None if known is None else self._measure(rule, key, known, now)
                    event = self._transition(rule, key, measured, now)
                    if event is not None:
                        events.append(event)
            self._drop_idle_keys(now)
            self._actions = self._collect_actions()
            if self.untracked_outcomes > self._untracked_logged:
                log.warning("alerts: %d outcomes not measured (key limit)", self.untracked_outcomes)
                self._untracked_logged = self.untracked_outcomes
        return self._notify(events)

    def update(self, policy: Policy) -> list[AlertEvent]:
        """Takes a new policy: firing rules removed or changed clear (events); others keep."""
        now = self._clock()
        rules = {rule.name: rule for rule in policy.alerts.rules}
        events: list[tuple[AlertEvent, tuple[NotifyChannel, ...]]] = []
        with self._lock:
            for (name, key), firing in list(self._firing.items()):
                if rules.get(name) != firing.rule:
                    del self._firing[(name, key)]
                    reason = "rule changed" if name in rules else "rule removed"
                    events.append(_event(firing, key, now, "cleared", reason=reason))
            self._policy = policy
            self._configure(policy)
            self._actions = self._collect_actions()
        return self._notify(events)

    def restrictions_for(self, team: str, user: str) -> Restrictions:
        """What firing alerts impose on a request of `team` by `user`."""
        actions = self._actions
        reasons = [
            actions.local_only.get(scope_key, "")
            for scope_key in (
                (AlertScope.TEAM, team),
                (AlertScope.API_KEY, user),
                (AlertScope.ALL, ALL_KEY),
            )
        ]
        local_only = "; ".join(reason for reason in reasons if reason)
        if not local_only and not actions.avoid:
            return NO_RESTRICTIONS
        return Restrictions(local_only=local_only, avoid=actions.avoid)

    def fallback_enabled(self, target: str) -> bool:
        """True while an enable_fallback rule fires for `target` or for all requests."""
        actions = self._actions
        return actions.fallback_everywhere or target in actions.fallback_targets

    def firing(self) -> list[AlertEvent]:
        """The rules firing now, as the events that started them."""
        with self._lock:
            return [
                _event(firing, key, firing.since, "firing")[0]
                for (_, key), firing in self._firing.items()
            ]

    def _configure(self, policy: Policy) -> None:
        windows: dict[AlertScope, set[int]] = {}
        for rule in policy.alerts.rules:
            scope_windows = windows.setdefault(rule.scope, set())
            if rule.metric not in _SPEND_METRICS:
                scope_windows.add(rule.window_s or DEFAULT_WINDOW_S)
        self._windows = windows
        self._keys = {scope: self._keys.get(scope, {}) for scope in windows}
        for scope, table in self._keys.items():
            for tracked in table.values():
                for window_s in set(tracked.windows) - windows[scope]:
                    del tracked.windows[window_s]

    def _measure(
        self, rule: AlertRule, key: str, tracked: _Tracked, now: float
    ) -> _Measured | None:
        if rule.metric in _SPEND_METRICS:
            return self._measure_spend(rule, key, tracked.spend.of(rule.metric, now))
        if not isinstance(rule.threshold, float | int):
            return None  # "budget" is only for spend metrics (the document checks it)
        window = tracked.windows.get(rule.window_s or DEFAULT_WINDOW_S)
        if window is None:
            return None
        requests = sum(bucket.requests for bucket in window.buckets)
        if rule.metric is AlertMetric.LATENCY_MS:
            if requests < MIN_SAMPLES:
                return None
            value = p95(window.buckets, requests)
        elif rule.metric is AlertMetric.ERROR_RATE:
            if requests < MIN_SAMPLES:
                return None
            value = sum(bucket.failures for bucket in window.buckets) / requests
        elif rule.metric is AlertMetric.REQUESTS_PER_MINUTE:
            value = requests * 60 / window.window_s
        else:
            value = sum(bucket.tokens for bucket in window.buckets) * 60 / window.window_s
        threshold = float(rule.threshold)
        return _Measured(value, threshold, rule.op.holds(value, threshold))

    def _measure_spend(self, rule: AlertRule, key: str, spent: int) -> _Measured | None:
        amount: float | None
        if rule.threshold != "budget":
            amount = rule.threshold
        else:
            budgets = self._policy.budgets
            if rule.scope is AlertScope.TEAM:
                budget = budgets.for_team(key)
            elif rule.scope is AlertScope.API_KEY:
                budget = budgets.for_api_key(key)
            else:
                return None
            if budget is None:
                return None
            daily = rule.metric is AlertMetric.DAILY_COST
            amount = budget.spend_per_day if daily else budget.spend_per_month
        if amount is None:
            return None
        limit = to_nanos(amount, f"alert {rule.name} threshold")
        value = float(nanos_to_decimal(spent))
        return _Measured(value, float(amount), rule.op.holds(spent, limit))

    def _transition(
        self, rule: AlertRule, key: str, measured: _Measured | None, now: float
    ) -> tuple[AlertEvent, tuple[NotifyChannel, ...]] | None:
        firing = self._firing.get((rule.name, key))
        if firing is None:
            if measured is None or not measured.holds:
                return None
            channels = self._policy.alerts.notify if rule.notify is None else rule.notify
            firing = _Firing(rule, channels, now, measured.value, measured.threshold)
            self._firing[(rule.name, key)] = firing
            return _event(firing, key, now, "firing")
        if measured is not None and measured.holds:
            return None
        if now - firing.since < self._min_firing_s:
            return None
        del self._firing[(rule.name, key)]
        if measured is None:
            return _event(firing, key, now, "cleared", reason="not measured")
        cleared = _Firing(rule, firing.channels, now, measured.value, measured.threshold)
        return _event(cleared, key, now, "cleared")

    def _drop_idle_keys(self, now: float) -> None:
        firing = {(firing.rule.scope, key) for (_, key), firing in self._firing.items()}
        for scope, table in self._keys.items():
            for key in [
                key
                for key, tracked in table.items()
                if (scope, key) not in firing
                and not any(window.buckets for window in tracked.windows.values())
                and tracked.spend.of(AlertMetric.MONTHLY_COST, now) == 0
            ]:
                del table[key]

    def _collect_actions(self) -> _Actions:
        local_only: dict[tuple[AlertScope, str], str] = {}
        avoid: set[str] = set()
        fallback_targets: set[str] = set()
        fallback_everywhere = False
        for (name, key), firing in sorted(self._firing.items()):
            rule = firing.rule
            if rule.action is AlertAction.SWITCH_TO_LOCAL:
                reason = (
                    f"alert {name}: {rule.metric} {firing.value:g} {rule.op} {firing.threshold:g}"
                )
                scope_key = (rule.scope, key)
                local_only[scope_key] = "; ".join(filter(None, [local_only.get(scope_key), reason]))
            elif rule.action is AlertAction.ROUTE_AWAY and rule.scope is AlertScope.TARGET:
                avoid.add(key)
            elif rule.action is AlertAction.ENABLE_FALLBACK:
                if rule.scope is AlertScope.ALL:
                    fallback_everywhere = True
                elif rule.scope is AlertScope.TARGET:
                    fallback_targets.add(key)
        return _Actions(
            local_only, frozenset(avoid), frozenset(fallback_targets), fallback_everywhere
        )

    def _notify(
        self, events: list[tuple[AlertEvent, tuple[NotifyChannel, ...]]]
    ) -> list[AlertEvent]:
        for event, channels in events:
            try:
                self._notifier.notify(event, channels)
            except Exception:  # a notifier must not break evaluation
                log.exception("alert notifier failed for %s", event.rule)
        return [event for event, _ in events]


def _key_of(scope: AlertScope, outcome: RequestOutcome) -> str:
    if scope is AlertScope.TARGET:
        return outcome.target
    if scope is AlertScope.TEAM:
        return outcome.team
    if scope is AlertScope.API_KEY:
        return outcome.user
    return ALL_KEY


def _event(
    firing: _Firing, key: str, at: float, state: str, *, reason: str = ""
) -> tuple[AlertEvent, tuple[NotifyChannel, ...]]:
    rule = firing.rule
    event = AlertEvent(
        rule=rule.name,
        metric=rule.metric.value,
        scope=rule.scope.value,
        key=key,
        value=firing.value,
        threshold=firing.threshold,
        op=rule.op.value,
        action=rule.action.value,
        at=at,
        state="firing" if state == "firing" else "cleared",
        reason=reason,
    )
    return event, firing.channels
