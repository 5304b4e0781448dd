"""Reconnect backoff: gRPC's schedule (1 s × 1.6ⁿ, cap 120 s) with ±20 % jitter on every delay."""

from __future__ import annotations

import random

import pytest

from agent.control.backoff import Backoff


class FixedRandom(random.Random):
    """uniform() returns a chosen fraction of its range: 0 is the low end, 1 the high end."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def delays(backoff: Backoff, count: int) -> list[float]:
    return [backoff.next_delay() for _ in range(count)]


def test_the_unjittered_schedule_grows_by_1_6_up_to_120_s() -> None:
    backoff = Backoff(rng=FixedRandom(0.5))  # the middle of the jitter range: no jitter
    schedule = delays(backoff, 14)
    assert schedule[:5] == pytest.approx([1.0, 1.6, 2.56, 4.096, 6.5536])
    assert schedule[10] == pytest.approx(1.6**10)  # 109.95 s, still under the cap
    assert schedule[11:] == pytest.approx([120.0, 120.0, 120.0])


def test_every_delay_is_jittered_by_20_percent_including_the_first() -> None:
    rng = FixedRandom(0.0)
    low = delays(Backoff(rng=rng), 3)
    high = delays(Backoff(rng=FixedRandom(1.0)), 3)
    assert low == pytest.approx([0.8, 1.28, 2.048])
    assert high == pytest.approx([1.2, 1.92, 3.072])
    assert rng.calls == [(-0.2, 0.2)] * 3


def test_the_cap_bounds_the_jittered_delay_too() -> None:
    backoff = Backoff(rng=FixedRandom(1.0))
    assert delays(backoff, 20)[-1] == pytest.approx(120.0)
    backoff = Backoff(rng=FixedRandom(0.0))
    assert delays(backoff, 20)[-1] == pytest.approx(96.0)


def test_a_real_random_source_stays_within_the_jitter_band() -> None:
    rng = random.Random(1234)
    backoff = Backoff(rng=rng)
    for attempt, delay in enumerate(delays(backoff, 30)):
        nominal = min(1.6**attempt, 120.0)
        assert 0.8 * nominal <= delay <= 1.2 * nominal


def test_first_delays_differ_between_agents() -> None:
    firsts = {Backoff(rng=random.Random(seed)).next_delay() for seed in range(20)}
    assert len(firsts) == 20
    assert all(0.8 <= first <= 1.2 for first in firsts)


def test_reset_starts_over() -> None:
    backoff = Backoff(rng=FixedRandom(0.5))
    delays(backoff, 6)
    backoff.reset()
    assert delays(backoff, 2) == pytest.approx([1.0, 1.6])


def test_custom_parameters() -> None:
    backoff = Backoff(base=0.5, multiplier=2.0, jitter=0.0, max_delay=3.0)
    assert delays(backoff, 5) == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    "arguments",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"multiplier": 0.5},
        {"jitter": -0.1},
        {"jitter": 1.0},
        {"max_delay": 0.5},
    ],
)
def test_refuses_nonsense_parameters(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**arguments)  # type: ignore[arg-type]
