"""The windows an alert rule is measured over: outcomes of finished requests in buckets, spend."""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from common.policy.costs import check_nanos, check_tokens
from common.policy.policy_model import AlertMetric

MAX_BUCKETS = 600  # per window
MAX_LATENCY_SAMPLES = 6000  # per window and key (more for windows of over 375 buckets)
MIN_LATENCIES_PER_BUCKET = 16
MAX_LATENCY_MS = 86_400_000.0  # a day
MAX_NAME_CHARS = 256
MAX_EPOCH_S = 253_402_300_799.0  # 9999-12-31T23:59:59Z
SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """One finished request; ValueError for values no request can have."""

    at: float  # UTC epoch seconds when it finished
    target: str
    team: str
    user: str  # the API key's user
    latency_ms: float
    ok: bool
    tokens: int
    cost_nanos: int

    def __post_init__(self) -> None:
        _check_number(self.at, "at", MAX_EPOCH_S)
        _check_number(self.latency_ms, "latency_ms", MAX_LATENCY_MS)
        for what in ("target", "team", "user"):
            _check_name(getattr(self, what), what)
        if not isinstance(self.ok, bool):
            raise ValueError(f"ok must be a bool, not {type(self.ok).__name__}")
        check_tokens(self.tokens)
        check_nanos(self.cost_nanos, "cost_nanos")


def _check_number(value: object, what: str, maximum: float) -> None:
    if isinstance(value, bool) or not isinstance(value, float | int):
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise ValueError(f"{what} must be 0..{maximum:g}, not {value!r:.40}")


def _check_name(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_NAME_CHARS or not value.isprintable():
        raise ValueError(f"{what} must be 1..{MAX_NAME_CHARS} printable characters")


class Bucket:
    __slots__ = ("failures", "index", "latencies", "requests", "tokens")

    def __init__(self, index: int) -> None:
        self.index = index
        self.requests = 0
        self.failures = 0
        self.tokens = 0
        self.latencies: list[float] = []


class Window:
    """One key's outcomes over one window_s, in buckets."""

    def __init__(self, window_s: int) -> None:
        self.window_s = window_s
        self.width = max(1, math.ceil(window_s / MAX_BUCKETS))
        self.latencies_per_bucket = max(
            MIN_LATENCIES_PER_BUCKET, MAX_LATENCY_SAMPLES // (window_s // self.width + 1)
        )
        self.buckets: deque[Bucket] = deque()

    def add(self, outcome: RequestOutcome, now: float, sampler: random.Random) -> None:
        index = int(outcome.at // self.width)
        if not self._counts(index, now):
            return
        bucket = next((b for b in reversed(self.buckets) if b.index <= index), None)
        if bucket is None or bucket.index != index:
            bucket = Bucket(index)
            self.buckets.append(bucket)
            if len(self.buckets) > 1 and self.buckets[-2].index > index:  # arrived late
                self.buckets = deque(sorted(self.buckets, key=lambda b: b.index))
        bucket.requests += 1
        bucket.failures += not outcome.ok
        bucket.tokens += outcome.tokens
        if len(bucket.latencies) < self.latencies_per_bucket:
            bucket.latencies.append(outcome.latency_ms)
        else:  # reservoir sampling: each latency of the bucket kept with equal chance
            slot = sampler.randrange(bucket.requests)
            if slot < self.latencies_per_bucket:
                bucket.latencies[slot] = outcome.latency_ms

    def trim(self, now: float) -> None:
        while self.buckets and not self._counts(self.buckets[0].index, now):
            self.buckets.popleft()

    def _counts(self, index: int, now: float) -> bool:
        return (index + 1) * self.width > now - self.window_s


@dataclass(slots=True)
class Spend:
    day: int = -1
    month: int = -1
    day_nanos: int = 0
    month_nanos: int = 0

    def add(self, at: float, nanos: int) -> None:
        day, month = day_of(at), month_of(at)
        if day > self.day:
            self.day, self.day_nanos = day, 0
        if day == self.day:
            self.day_nanos += nanos
        if month > self.month:
            self.month, self.month_nanos = month, 0
        if month == self.month:
            self.month_nanos += nanos

    def of(self, metric: AlertMetric, now: float) -> int:
        if metric is AlertMetric.DAILY_COST:
            return self.day_nanos if self.day == day_of(now) else 0
        return self.month_nanos if self.month == month_of(now) else 0


def day_of(at: float) -> int:
    return int(at // SECONDS_PER_DAY)


def month_of(at: float) -> int:
    moment = datetime.fromtimestamp(at, UTC)
    return moment.year * 12 + moment.month - 1


def p95(buckets: deque[Bucket], requests: int) -> float:
    """Nearest rank over the window; a sampled latency stands for requests / samples of its
    bucket (1 while a bucket holds all its latencies: then the rank is exact)."""
    weighted = sorted(
        (latency, bucket.requests / len(bucket.latencies))
        for bucket in buckets
        for latency in bucket.latencies
    )
    rank = -(-95 * requests // 100)
    seen = 0.0
    for latency, weight in weighted:
        seen += weight
        if seen >= rank - 1e-9:
            return latency
    return weighted[-1][0]
