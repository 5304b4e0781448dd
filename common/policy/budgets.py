"""Budgets and rate limits per team and API key user, enforced exactly with reservations."""

# A request first reserves (1 request, an estimate of its tokens, an estimate of its cost) on
# its team's and its API key user's budget; it is admitted only if no limit of either would be
# exceeded counting every reservation still in flight. When it ends (also when it fails) it
# settles with what it actually used: the difference to the estimate is released or added.
#
# Windows: requests_per_minute and tokens_per_minute are SLIDING 60 s windows over admission
# times: a request admitted at t counts against every request admitted in [t, t + 60) and no
# longer at t + 60 exactly, so no 60 s interval ever admits more than the limit (a fixed window
# would admit twice the limit across a minute boundary). Its tokens count at its admission time,
# the estimate until it settles, then the actual number.
# Spend: spend_per_day and spend_per_month are UTC calendar days and months; a request's cost
# belongs to the day and month it was admitted in (a reservation made before midnight that
# settles after it changes only yesterday's figure, which no longer counts).
# over_budget: `reject` refuses (HTTP 429, with Retry-After when waiting helps); `local` admits
# the request restricted to on-premises targets: that entry's limits bound off-premises use.
# "default" entries apply to every team (user) without its own entry, each with its own
# counters; a team or user "" (a key without one) is such a name too. No entry: unlimited.
# Time comes from an injected clock (UTC seconds); the tracker never goes back: a clock that
# steps backwards holds its time until the clock catches up (windows then expire later).
# Money is integer nano-units (common.policy.costs). One lock guards all state; every call is
# a few microseconds of arithmetic without I/O, so threads and asyncio tasks may call it.

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from common.policy.budget_state import (
    API_KEY,
    DAY_S,
    TEAM,
    WINDOW_S,
    Counters,
    Limits,
    WindowEntry,
    check_name,
    check_time,
    periods,
    read_snapshot,
    seconds_to_next,
    snapshot_of,
)
from common.policy.costs import check_nanos, check_tokens
from common.policy.policy_model import DEFAULT_BUDGET, Budgets
from common.policy.routing import NO_RESTRICTIONS, Restrictions

Clock = Callable[[], float]  # seconds since the epoch, UTC (time.time)
RETRY_SCAN_LIMIT = 1024  # window entries read to compute a Retry-After; beyond: the window
_LABELS = {TEAM: "team", API_KEY: "API key of"}


@dataclass(frozen=True, slots=True)
class Overrun:
    """A limit a request would exceed: why, whether the entry rejects, when waiting helps."""

    reason: str
    reject: bool
    retry_after_s: int | None  # None: waiting does not help (the request alone is too big)


class Reservation:
    """What one admitted request holds until it settles; opaque to callers but for these."""

    __slots__ = ("_parts", "_settled", "admitted_at", "cost_nanos", "team", "tokens", "user")

    def __init__(self, team: str, user: str, at: float, tokens: int, cost_nanos: int) -> None:
        self.team, self.user, self.admitted_at = team, user, at
        self.tokens, self.cost_nanos = tokens, cost_nanos
        self._parts: list[tuple[Counters, WindowEntry, int, int]] = []
        self._settled = False


@dataclass(frozen=True, slots=True)
class Admission:
    reservation: Reservation
    restrictions: Restrictions  # NO_RESTRICTIONS, or local_only with the reason


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    reason: str  # e.g. "team support over its 600 requests per minute"
    retry_after_s: int | None  # for Retry-After; None: waiting will not make it fit


@dataclass(frozen=True, slots=True)
class SettledUsage:
    """A finished request as the ledger records it, for `BudgetTracker.replay`."""

    at: float  # admission time, UTC seconds
    team: str
    user: str
    tokens: int
    cost_nanos: int


class BudgetTracker:
    """Live usage against a policy's budgets; `reserve` before a request, `settle` after."""

    def __init__(self, budgets: Budgets, *, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._now = 0.0
        self._day, self._month = periods(0.0)
        self._counters: dict[tuple[str, str], Counters] = {}
        self._in_flight = 0
        self._teams: dict[str, Limits] = {}
        self._users: dict[str, Limits] = {}
        self.update(budgets)

    def update(self, budgets: Budgets) -> None:
        """Takes a new policy's budgets; usage counted so far is kept."""
        teams = {b.name: Limits.of(b) for b in budgets.teams}
        users = {b.name: Limits.of(b) for b in budgets.api_keys}
        with self._lock:
            self._teams, self._users = teams, users

    @property
    def in_flight(self) -> int:
        """Reservations not settled yet."""
        return self._in_flight

    def reserve(
        self, *, team: str, user: str, tokens: int, cost_nanos: int
    ) -> Admission | BudgetRefusal:
        """Reserves 1 request, `tokens` (prompt tokens + max_tokens) and `cost_nanos` (the
        estimate on the target the request will use) on the team's and the user's budgets."""
        check_name(team, "team")
        check_name(user, "user")
        check_tokens(tokens, "reserved tokens")
        check_nanos(cost_nanos, "reserved cost")
        with self._lock:
            now = self._tick()
            subjects = self._subjects(team, user)
            overruns = [
                overrun
                for who, limits, counters in subjects
                for overrun in self._overruns(who, limits, counters, now, tokens, cost_nanos)
            ]
            rejections = [o for o in overruns if o.reject]
            if rejections:
                return _refusal(rejections)
            reservation = Reservation(team, user, now, tokens, cost_nanos)
            for _, limits, counters in subjects:
                entry = WindowEntry(now, tokens)
                if limits.requests_per_minute is not None or limits.tokens_per_minute is not None:
                    counters.window.append(entry)
                    counters.window_tokens += tokens
                else:  # no rate limit: nothing to count in a window
                    entry.in_window = False
                counters.add_spend(counters.day, counters.month, reserved=cost_nanos)
                reservation._parts.append((counters, entry, counters.day, counters.month))
            self._in_flight += 1
        if overruns:
            reason = "; ".join(o.reason for o in overruns)
            return Admission(reservation, Restrictions(local_only=reason))
        return Admission(reservation, NO_RESTRICTIONS)

    def settle(self, reservation: Reservation, *, tokens: int, cost_nanos: int) -> None:
        """Replaces the reservation's estimates by what the request used (a failed request:
        what it used before failing). ValueError for a second settle or bad figures."""
        check_tokens(tokens, "tokens used")
        check_nanos(cost_nanos, "cost")
        with self._lock:
            if reservation._settled:
                raise ValueError("this reservation is already settled")
            reservation._settled = True
            self._in_flight -= 1
            for counters, entry, day, month in reservation._parts:
                if entry.in_window:
                    counters.window_tokens += tokens - entry.tokens
                entry.tokens = tokens
                counters.add_spend(day, month, spent=cost_nanos, reserved=-reservation.cost_nanos)

    def replay(self, usages: Iterable[SettledUsage]) -> int:
        """Counts requests settled before this process started (ledger rows), so a restart
        forgets neither today's spend nor the last minute's rates. Returns rows counted."""
        counted = 0
        with self._lock:
            now = self._tick()
            touched: set[tuple[str, str]] = set()
            for usage in usages:
                at = min(check_time(usage.at, "usage time"), now)
                tokens = check_tokens(usage.tokens, "tokens used")
                cost = check_nanos(usage.cost_nanos, "cost")
                team, user = check_name(usage.team, "team"), check_name(usage.user, "user")
                day, month = periods(at)
                for who, _, counters in self._subjects(team, user):
                    counters.add_spend(day, month, spent=cost)
                    if at > now - WINDOW_S:
                        counters.window.append(WindowEntry(at, tokens))
                        counters.window_tokens += tokens
                        touched.add(who)
                counted += 1
            for key in touched:
                window = self._counters[key].window
                self._counters[key].window = deque(sorted(window, key=lambda e: e.at))
        return counted

    def snapshot(self) -> dict[str, object]:
        """The usage state as JSON-able data for `restore` in a later process. A request in
        flight is counted at its reservation: the restoring process cannot learn more."""
        with self._lock:
            return snapshot_of(self._now, self._counters)

    def restore(self, snapshot: object) -> None:
        """Replaces the usage state by a `snapshot`; ValueError (state unchanged) when it is
        malformed, RuntimeError while reservations are in flight. The tracker's time does not
        go back before the snapshot's."""
        taken_at, restored = read_snapshot(snapshot)
        with self._lock:
            if self._in_flight:
                raise RuntimeError(f"{self._in_flight} reservations are in flight")
            self._now = max(self._now, taken_at)
            self._day, self._month = periods(self._now)
            self._tick()
            self._counters = restored

    def _tick(self) -> float:
        """The tracker's time: the clock, but never earlier than before."""
        now = check_time(self._clock(), "clock")
        if now > self._now:
            self._now = now
            if now >= (self._day + 1) * DAY_S:
                self._day, self._month = periods(now)
        return self._now

    def _subjects(self, team: str, user: str) -> list[tuple[tuple[str, str], Limits, Counters]]:
        found = []
        for kind, limits_by_name, name in ((TEAM, self._teams, team), (API_KEY, self._users, user)):
            limits = limits_by_name.get(name) or limits_by_name.get(DEFAULT_BUDGET)
            if limits is None:
                continue
            key = (kind, name)
            counters = self._counters.get(key)
            if counters is None:
                counters = self._counters[key] = Counters(self._day, self._month)
            counters.advance(self._now, self._day, self._month)
            found.append((key, limits, counters))
        return found

    def _overruns(
        self, who: tuple[str, str], limits: Limits, c: Counters, now: float, tokens: int, cost: int
    ) -> list[Overrun]:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        day, month = limits.spend_per_day, limits.spend_per_month
        if (
            (rpm is None or len(c.window) < rpm)
            and (tpm is None or c.window_tokens + tokens <= tpm)
            and (day is None or c.day_spent + c.day_reserved + cost <= day)
            and (month is None or c.month_spent + c.month_reserved + cost <= month)
        ):
            return []  # the common case, without building a reason
        name = f"{_LABELS[who[0]]} {who[1] or '(none)'}"
        over: list[Overrun] = []
        if rpm is not None and len(c.window) + 1 > rpm:
            retry = None if rpm == 0 else _retry_requests(c.window, len(c.window) + 1 - rpm, now)
            over.append(Overrun(f"{name} over its {rpm} requests per minute", limits.reject, retry))
        if tpm is not None and c.window_tokens + tokens > tpm:
            retry = None if tokens > tpm else _retry_tokens(c, c.window_tokens + tokens - tpm, now)
            over.append(Overrun(f"{name} over its {tpm} tokens per minute", limits.reject, retry))
        for monthly, limit, spent in (
            (False, limits.spend_per_day, c.day_spent + c.day_reserved),
            (True, limits.spend_per_month, c.month_spent + c.month_reserved),
        ):
            if limit is not None and spent + cost > limit:
                retry = None if cost > limit else seconds_to_next(now, c.day, c.month, monthly)
                what = "monthly" if monthly else "daily"
                over.append(Overrun(f"{name} over its {what} budget", limits.reject, retry))
        return over


def _retry_requests(window: deque[WindowEntry], must_leave: int, now: float) -> int:
    """Seconds until `must_leave` of the oldest entries have left the window."""
    return max(1, math.ceil(window[must_leave - 1].at + WINDOW_S - now))


def _retry_tokens(counters: Counters, must_free: int, now: float) -> int:
    """Seconds until entries holding `must_free` tokens have left the window (the whole
    window, at most, when more than RETRY_SCAN_LIMIT entries would have to be read)."""
    freed = 0
    for index, entry in enumerate(counters.window):
        freed += entry.tokens
        if freed >= must_free:
            return max(1, math.ceil(entry.at + WINDOW_S - now))
        if index >= RETRY_SCAN_LIMIT:
            break
    return math.ceil(WINDOW_S)


def _refusal(rejections: list[Overrun]) -> BudgetRefusal:
    waits = [o.retry_after_s for o in rejections]
    retry = None if None in waits else max(w for w in waits if w is not None)
    return BudgetRefusal("; ".join(o.reason for o in rejections), retry)
