"""The usage counters of one budget subject (a team or an API key user) and their snapshot."""

# Money in integer nano-units (common.policy.costs); times in seconds since the epoch, UTC.

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from common.policy.costs import check_nanos, check_tokens, to_nanos
from common.policy.policy_model import Budget, OverBudget

WINDOW_S = 60.0  # the sliding window of requests_per_minute and tokens_per_minute
DAY_S = 86_400
MAX_NAME = 256  # characters of a team or user name
TEAM, API_KEY = "team", "api_key"  # the two kinds of budget subject
SNAPSHOT_VERSION = 1
MAX_SNAPSHOT_SUBJECTS = 100_000
MAX_SNAPSHOT_WINDOW = 1_000_000  # entries per subject
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_LATEST = 253_402_300_800  # 10000-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Limits:
    """One budget entry in the units the tracker counts (money in nano-units)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    spend_per_day: int | None
    spend_per_month: int | None
    reject: bool

    @classmethod
    def of(cls, budget: Budget) -> Limits:
        day, month = budget.spend_per_day, budget.spend_per_month
        return cls(
            budget.requests_per_minute,
            budget.tokens_per_minute,
            None if day is None else to_nanos(day, "spend_per_day"),
            None if month is None else to_nanos(month, "spend_per_month"),
            budget.over_budget is OverBudget.REJECT,
        )


class WindowEntry:
    """One admitted request in a sliding window: when, and its tokens (estimate, then actual)."""

    __slots__ = ("at", "in_window", "tokens")

    def __init__(self, at: float, tokens: int) -> None:
        self.at = at
        self.tokens = tokens
        self.in_window = True


class Counters:
    """The live usage of one team or one API key user."""

    __slots__ = (
        "day",
        "day_reserved",
        "day_spent",
        "month",
        "month_reserved",
        "month_spent",
        "window",
        "window_tokens",
    )

    def __init__(self, day: int, month: int) -> None:
        self.window: deque[WindowEntry] = deque()
        self.window_tokens = 0
        self.day, self.month = day, month  # epoch day; year * 12 + month - 1
        self.day_spent = self.day_reserved = self.month_spent = self.month_reserved = 0

    def advance(self, now: float, day: int, month: int) -> None:
        """Drops window entries admitted WINDOW_S or more ago; starts a new day or month."""
        window, horizon = self.window, now - WINDOW_S
        while window and window[0].at <= horizon:
            entry = window.popleft()
            entry.in_window = False
            self.window_tokens -= entry.tokens
        if day > self.day:
            self.day, self.day_spent, self.day_reserved = day, 0, 0
        if month > self.month:
            self.month, self.month_spent, self.month_reserved = month, 0, 0

    def add_spend(self, day: int, month: int, *, spent: int = 0, reserved: int = 0) -> None:
        """Adds to the figures of `day` and `month` when they are still the current ones."""
        if day == self.day:
            self.day_spent += spent
            self.day_reserved += reserved
        if month == self.month:
            self.month_spent += spent
            self.month_reserved += reserved


def check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > MAX_NAME:
        raise ValueError(f"{what} is longer than {MAX_NAME} characters")
    return value


def check_time(value: object, what: str = "time") -> float:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise ValueError(f"{what} must be seconds since the epoch, not {type(value).__name__}")
    if not math.isfinite(value) or not 0 <= value < _LATEST:
        raise ValueError(f"{what} must be a finite time from 1970 to 9999, not {value!r:.40}")
    return float(value)


def periods(now: float) -> tuple[int, int]:
    """The UTC epoch day and month (year * 12 + month - 1) of `now`."""
    day = int(now // DAY_S)
    moment = date.fromordinal(_EPOCH_ORDINAL + day)
    return day, moment.year * 12 + moment.month - 1


def seconds_to_next(now: float, day: int, month: int, monthly: bool) -> int:
    """Whole seconds (at least 1) until the next UTC day, or month, starts."""
    if monthly:
        year, index = divmod(month + 1, 12)
        end = _LATEST if year > 9999 else datetime(year, index + 1, 1, tzinfo=UTC).timestamp()
    else:
        end = (day + 1) * DAY_S
    return max(1, math.ceil(end - now))


def _day_text(day: int) -> str:
    return date.fromordinal(_EPOCH_ORDINAL + day).isoformat()


def _month_text(month: int) -> str:
    year, index = divmod(month, 12)
    return f"{year:04d}-{index + 1:02d}"


def read_snapshot(snapshot: object) -> tuple[float, dict[tuple[str, str], Counters]]:
    """A snapshot's time and counters, every field checked."""
    if not isinstance(snapshot, dict) or snapshot.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"a budget snapshot is a mapping with version {SNAPSHOT_VERSION}")
    taken_at = check_time(snapshot.get("taken_at"), "snapshot taken_at")
    subjects = snapshot.get("subjects")
    if not isinstance(subjects, list) or len(subjects) > MAX_SNAPSHOT_SUBJECTS:
        raise ValueError(f"snapshot subjects must be a list of at most {MAX_SNAPSHOT_SUBJECTS}")
    restored: dict[tuple[str, str], Counters] = {}
    for item in subjects:
        if not isinstance(item, dict):
            raise ValueError("a snapshot subject must be a mapping")
        kind = item.get("kind")
        if kind not in (TEAM, API_KEY):
            raise ValueError(f"snapshot subject kind must be {TEAM} or {API_KEY}")
        key = (str(kind), check_name(item.get("name"), "snapshot subject name"))
        if key in restored:
            raise ValueError(f"snapshot subject {key[0]} {key[1][:64]!r} appears twice")
        day = _read_period(item.get("day"), "day", _day_index)
        month = _read_period(item.get("month"), "month", _month_index)
        if (day, month) > periods(taken_at) or month > periods(taken_at)[1]:
            raise ValueError("a snapshot subject's day or month is later than the snapshot")
        counters = restored[key] = Counters(day, month)
        counters.day_spent = check_nanos(item.get("day_spent"), "snapshot day_spent")
        counters.month_spent = check_nanos(item.get("month_spent"), "snapshot month_spent")
        window = item.get("window")
        if not isinstance(window, list) or len(window) > MAX_SNAPSHOT_WINDOW:
            raise ValueError(f"a snapshot window is a list of at most {MAX_SNAPSHOT_WINDOW}")
        for pair in window:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ValueError("a snapshot window entry is [time, tokens]")
            at = check_time(pair[0], "snapshot window time")
            if at > taken_at:
                raise ValueError("a snapshot window entry is later than the snapshot")
            entry = WindowEntry(at, check_tokens(pair[1], "snapshot window tokens"))
            counters.window.append(entry)
            counters.window_tokens += entry.tokens
        counters.window = deque(sorted(counters.window, key=lambda e: e.at))
    return taken_at, restored


def _day_index(text: str) -> int:
    return date.fromisoformat(text).toordinal() - _EPOCH_ORDINAL


def _month_index(text: str) -> int:
    if len(text) != 7:
        raise ValueError(text)
    moment = date.fromisoformat(f"{text}-01")
    return moment.year * 12 + moment.month - 1


def _read_period(value: object, what: str, parse: Callable[[str], int]) -> int:
    if not isinstance(value, str) or len(value) > 10:
        raise ValueError(f"snapshot {what} must be an ISO {what}")
    try:
        return parse(value)
    except ValueError:
        raise ValueError(f"snapshot {what} {value[:16]!r} is not an ISO {what}") from None


def snapshot_of(now: float, counters: dict[tuple[str, str], Counters]) -> dict[str, object]:
    """JSON-able data of the counters at `now`; reservations in flight count as spent."""
    subjects = [
        {
            "kind": kind,
            "name": name,
            "day": _day_text(c.day),
            "day_spent": c.day_spent + c.day_reserved,
            "month": _month_text(c.month),
            "month_spent": c.month_spent + c.month_reserved,
            "window": [[entry.at, entry.tokens] for entry in c.window],
        }
        for (kind, name), c in counters.items()
    ]
    return {"version": SNAPSHOT_VERSION, "taken_at": now, "subjects": subjects}
