"""The policy's alert rules at one enforcement point: fed by finished requests, evaluated often."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from common.policy.alert_notify import AlertEvent, LogNotifier, Notifier
from common.policy.alert_windows import RequestOutcome
from common.policy.alerts import AlertEvaluator
from common.policy.ledger_record import LedgerRecord
from common.policy.policy_model import Alerts, Policy
from common.policy.routing import Caller, Restrictions

log = logging.getLogger(__name__)

EVALUATE_EVERY_S = 5.0  # how often the agent and the gateway evaluate the rules


class RequestAlerts:
    """One AlertEvaluator following the policy in force (a new version keeps the windows and
    clears the firings whose rule changed). Every firing and clearing is passed to `record`
    besides the notifier (log and webhook channels). Thread-safe."""

    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        record: Callable[[AlertEvent], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._notifier = notifier or LogNotifier()
        self._record = record
        self._clock = clock
        self._lock = threading.Lock()
        self._evaluator: AlertEvaluator | None = None
        self._digest = ""
        self._policy: Policy | None = None

    def _for(self, policy: Policy) -> AlertEvaluator:
        events: list[AlertEvent] = []
        with self._lock:
            if self._evaluator is None:
                self._evaluator = AlertEvaluator(policy, clock=self._clock, notifier=self._notifier)
            elif policy.digest != self._digest:
                events = self._evaluator.update(policy)
            self._digest, self._policy = policy.digest, policy
            evaluator = self._evaluator
        self._keep(events)
        return evaluator

    def restrictions(self, policy: Policy, caller: Caller) -> Restrictions:
        """What firing rules impose on this caller's requests (switch_to_local, route_away)."""
        if not policy.alerts.rules:
            return Restrictions()
        return self._for(policy).restrictions_for(caller.team, caller.key_id)

    def fallback_enabled(self, policy: Policy, targets: Sequence[str]) -> bool:
        """True while an enable_fallback rule fires for all requests or one of `targets`."""
        if not policy.alerts.rules:
            return False
        evaluator = self._for(policy)
        return any(evaluator.fallback_enabled(target) for target in targets)

    def observe(self, policy: Policy, record: LedgerRecord) -> None:
        """Counts each target a finished request tried: its latency and whether it answered
        (the one that answered with the request's tokens, cost and whole latency)."""
        if not policy.alerts.rules or not record.attempts:
            return
        evaluator = self._for(policy)
        finished_at = record.at.timestamp() + record.latency_ms / 1000
        for attempt in record.attempts:
            answered = attempt.target == record.target and attempt.outcome == "ok"
            try:
                evaluator.observe(
                    RequestOutcome(
                        at=min(finished_at, self._clock()),
                        target=attempt.target,
                        team=record.team,
                        user=record.key_id,
                        latency_ms=record.latency_ms if answered else attempt.latency_ms,
                        ok=attempt.outcome == "ok",
                        tokens=record.prompt_tokens + record.completion_tokens if answered else 0,
                        cost_nanos=record.cost_nanos if answered else 0,
                    )
                )
            except ValueError as exc:  # a value no request can have: never breaks serving
                log.warning("alerts: request %s not measured: %s", record.request_id, exc)

    def evaluate(self, policy: Policy | None) -> list[AlertEvent]:
        """Measures every rule now: the rules that started or stopped firing. Without a policy
        (or without rules) every firing clears."""
        if policy is None:
            with self._lock:
                evaluator, last = self._evaluator, self._policy
            if evaluator is None or last is None or not last.alerts.rules:
                return []
            events = self._for(replace(last, alerts=Alerts())).evaluate()
            self._keep(events)
            return events
        events = self._for(policy).evaluate()
        self._keep(events)
        return events

    def firing(self) -> list[AlertEvent]:
        with self._lock:
            evaluator = self._evaluator
        return evaluator.firing() if evaluator is not None else []

    def _keep(self, events: list[AlertEvent]) -> None:
        if self._record is None:
            return
        for event in events:
            try:
                self._record(event)
            except Exception:
                log.exception("alerts: recording an alert event failed")
