"""The policy's budgets and rate limits at one enforcement point: reserve first, settle after."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from common.errors import ResourceExhausted
from common.policy.budgets import (
    Admission,
    BudgetRefusal,
    BudgetTracker,
    Reservation,
    SettledUsage,
)
from common.policy.costs import CostTable
from common.policy.policy_model import Policy
from common.policy.routing import Caller

CHARS_PER_TOKEN = 4  # a prompt's tokens estimated from its characters (cloud targets are
# tokenized by their provider, so the agent cannot count them before the call)


@dataclass
class Held:
    """One admitted request's reservation, settled once when the request ends."""

    reservation: Reservation
    started: float


class RequestBudgets:
    """One BudgetTracker for the agent, its limits following the policy in force (usage counted
    so far is kept across policy versions). Counts live in this process; `replay` gives it
    the requests settled before it started (a restarted agent's usage buffer)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tracker: BudgetTracker | None = None
        self._digest = ""
        self._costs: CostTable | None = None
        self._replay: list[SettledUsage] = []

    def replay(self, usages: Iterable[SettledUsage]) -> None:
        """Counts requests settled before this process started (their spend in their UTC day
        and month, their tokens in the rate windows they fall in); with no policy seen yet,
        once the first one comes."""
        with self._lock:
            if self._tracker is None:
                self._replay.extend(usages)
            else:
                self._tracker.replay(usages)

    def _for(self, policy: Policy) -> tuple[BudgetTracker, CostTable]:
        with self._lock:
            if self._tracker is None:
                self._tracker = BudgetTracker(policy.budgets, clock=self._clock)
                self._tracker.replay(self._replay)
                self._replay = []
            elif policy.digest != self._digest:
                self._tracker.update(policy.budgets)
            if policy.digest != self._digest or self._costs is None:
                self._costs = CostTable(policy)
                self._digest = policy.digest
            return self._tracker, self._costs

    def admit(
        self,
        policy: Policy,
        caller: Caller,
        targets: Sequence[str],
        parts: Sequence[str],
        max_tokens: int,
    ) -> Admission:
        """Reserves the request on its team's and key's budgets, at the most it can cost on any
        of `targets`; ResourceExhausted (429) when a limit says reject."""
        tracker, costs = self._for(policy)
        prompt_tokens = sum(len(p) for p in parts) // CHARS_PER_TOKEN + 1
        cost = max(
            (
                costs.reservation_estimate(t, prompt_tokens=prompt_tokens, max_tokens=max_tokens)
                for t in targets
            ),
            default=0,
        )
        outcome = tracker.reserve(
            team=caller.team, user=caller.key_id, tokens=prompt_tokens + max_tokens,
            cost_nanos=cost,
        )  # fmt: skip
        if isinstance(outcome, BudgetRefusal):
            retry = (
                f"; retry in {outcome.retry_after_s} s" if outcome.retry_after_s is not None else ""
            )
            raise ResourceExhausted(f"over budget: {outcome.reason}{retry}")
        return outcome

    def settle(
        self,
        policy: Policy,
        reservation: Reservation,
        target: str | None,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        busy_seconds: float,
    ) -> int:
        """Replaces the estimate by what the request used (nothing when no target answered);
        returns the request's cost in nanos."""
        tracker, costs = self._for(policy)
        cost = (
            costs.request_cost(
                target,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                busy_seconds=max(busy_seconds, 0.0),
            )
            if target is not None
            else 0
        )
        tracker.settle(reservation, tokens=prompt_tokens + completion_tokens, cost_nanos=cost)
        return cost
