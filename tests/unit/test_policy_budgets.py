"""Budgets and rate limits: exact under racing threads, sliding windows, UTC days, restarts."""

from __future__ import annotations

import json
import math
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.policy.budget_state import MAX_NAME, MAX_SNAPSHOT_SUBJECTS
from common.policy.budgets import (
    Admission,
    BudgetRefusal,
    BudgetTracker,
    Reservation,
    SettledUsage,
)
from common.policy.document import load_policy
from common.policy.policy_model import Budget, Budgets, OverBudget
from common.policy.routing import NO_RESTRICTIONS, Caller, PolicyEngine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-policy.yaml"
UNIT = 10**9  # nano-units per unit of currency
T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC).timestamp()


class ManualClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def tracker(
    *, teams: tuple[Budget, ...] = (), keys: tuple[Budget, ...] = (), clock: ManualClock
) -> BudgetTracker:
    return BudgetTracker(Budgets(teams=teams, api_keys=keys), clock=clock)


def admit(
    budgets: BudgetTracker, *, team: str = "t", user: str = "u", tokens: int = 0, cost: int = 0
) -> Reservation:
    outcome = budgets.reserve(team=team, user=user, tokens=tokens, cost_nanos=cost)
    assert isinstance(outcome, Admission), outcome
    assert outcome.restrictions == NO_RESTRICTIONS
    return outcome.reservation


def refused(
    budgets: BudgetTracker, *, team: str = "t", user: str = "u", tokens: int = 0, cost: int = 0
) -> BudgetRefusal:
    outcome = budgets.reserve(team=team, user=user, tokens=tokens, cost_nanos=cost)
    assert isinstance(outcome, BudgetRefusal), outcome
    return outcome


def test_exactly_600_of_1000_racing_requests_are_admitted_at_600_per_minute() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=600),), clock=clock)
    start = threading.Barrier(50)
    outcomes: list[Admission | BudgetRefusal] = []
    outcomes_lock = threading.Lock()

    def send() -> None:
        start.wait()
        mine = [budgets.reserve(team="t", user="u", tokens=1, cost_nanos=0) for _ in range(20)]
        with outcomes_lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=send) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    refusals = [o for o in outcomes if isinstance(o, BudgetRefusal)]
    assert (len(admitted), len(refusals)) == (600, 400)
    assert {r.reason for r in refusals} == {"team t over its 600 requests per minute"}
    assert {r.retry_after_s for r in refusals} == {60}
    assert budgets.in_flight == 600


def test_the_window_slides_a_request_leaves_it_60_seconds_after_admission() -> None:
    clock = ManualClock(1000.0)
    budgets = tracker(keys=(Budget(name="u", requests_per_minute=2),), clock=clock)
    admit(budgets)
    clock.now = 1030.0
    admit(budgets)
    clock.now = 1059.999
    assert refused(budgets).retry_after_s == 1
    clock.now = 1060.0  # the first has left; the one at 1030 is still in
    admit(budgets)
    refusal = refused(budgets)
    assert refusal.reason == "API key of u over its 2 requests per minute"
    assert refusal.retry_after_s == 30
    clock.now = 1090.0
    admit(budgets)


def test_reserved_tokens_count_until_settled_then_the_unused_part_is_released() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", tokens_per_minute=1000),), clock=clock)
    first = admit(budgets, tokens=600)
    refused(budgets, tokens=401)  # 600 in flight
    budgets.settle(first, tokens=300, cost_nanos=0)
    second = admit(budgets, tokens=500)
    assert refused(budgets, tokens=201).reason == "team t over its 1000 tokens per minute"
    admit(budgets, tokens=200)
    budgets.settle(second, tokens=500, cost_nanos=0)
    assert budgets.in_flight == 1


def test_a_request_bigger_than_the_limit_is_refused_without_retry_after() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", tokens_per_minute=1000),), clock=clock)
    assert refused(budgets, tokens=1001).retry_after_s is None
    admit(budgets, tokens=1000)


def test_retry_after_for_tokens_is_when_enough_of_them_leave_the_window() -> None:
    clock = ManualClock(5000.0)
    budgets = tracker(teams=(Budget(name="t", tokens_per_minute=100),), clock=clock)
    admit(budgets, tokens=40)
    clock.now = 5010.0
    admit(budgets, tokens=40)
    clock.now = 5020.0
    assert refused(budgets, tokens=30).retry_after_s == 40  # the first must leave (5060)
    assert refused(budgets, tokens=70).retry_after_s == 50  # both must leave (5070)


def test_a_settle_after_the_request_left_the_window_does_not_touch_the_new_window() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", tokens_per_minute=1000),), clock=clock)
    long_request = admit(budgets, tokens=1000)
    clock.now += 61
    admit(budgets, tokens=1000)
    budgets.settle(long_request, tokens=0, cost_nanos=0)
    refused(budgets, tokens=1)


def test_a_failed_request_settles_with_what_it_used_and_still_counts_as_a_request() -> None:
    clock = ManualClock()
    budgets = tracker(
        teams=(Budget(name="t", requests_per_minute=2, spend_per_day=1.0),), clock=clock
    )
    failed = admit(budgets, cost=UNIT)
    refused(budgets, cost=1)
    budgets.settle(failed, tokens=0, cost_nanos=0)
    admit(budgets, cost=UNIT)
    assert refused(budgets).reason == "team t over its 2 requests per minute"


def test_spend_per_day_counts_reservations_and_settles_exactly() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", spend_per_day=1.0),), clock=clock)
    first = admit(budgets, cost=600_000_000)
    refusal = refused(budgets, cost=400_000_001)
    assert refusal.reason == "team t over its daily budget"
    assert refusal.retry_after_s == 12 * 3600  # until 00:00 UTC
    budgets.settle(first, tokens=10, cost_nanos=200_000_000)
    second = admit(budgets, cost=800_000_000)  # exactly the limit
    refused(budgets, cost=1)
    budgets.settle(second, tokens=10, cost_nanos=900_000_000)  # more than estimated
    refused(budgets, cost=0)  # 1.1 spent: nothing more today
    assert refused(budgets, cost=UNIT + 1).retry_after_s is None


def test_the_day_rolls_over_at_utc_midnight_and_old_reservations_stay_in_their_day() -> None:
    clock = ManualClock(datetime(2024, 3, 10, 23, 59, 59, tzinfo=UTC).timestamp())
    budgets = tracker(teams=(Budget(name="t", spend_per_day=1.0),), clock=clock)
    before_midnight = admit(budgets, cost=UNIT)
    assert refused(budgets, cost=1).retry_after_s == 1
    clock.now += 0.999
    refused(budgets, cost=1)
    clock.now = datetime(2024, 3, 11, tzinfo=UTC).timestamp()
    today = admit(budgets, cost=UNIT)
    budgets.settle(before_midnight, tokens=0, cost_nanos=0)  # yesterday's: frees nothing today
    refused(budgets, cost=1)
    budgets.settle(today, tokens=0, cost_nanos=UNIT // 2)
    admit(budgets, cost=UNIT // 2)


def test_the_month_rolls_over_on_the_first_at_utc_midnight() -> None:
    clock = ManualClock(datetime(2024, 2, 15, tzinfo=UTC).timestamp())
    budgets = tracker(teams=(Budget(name="t", spend_per_month=10.0),), clock=clock)
    admit(budgets, cost=10 * UNIT)
    assert refused(budgets, cost=1).retry_after_s == 15 * 86_400  # 2024 is a leap year
    clock.now = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC).timestamp()
    assert refused(budgets, cost=1).reason == "team t over its monthly budget"
    clock.now = datetime(2024, 3, 1, tzinfo=UTC).timestamp()
    admit(budgets, cost=10 * UNIT)
    clock.now = datetime(2024, 12, 31, 23, 0, tzinfo=UTC).timestamp()
    admit(budgets, cost=10 * UNIT)
    assert refused(budgets, cost=1).retry_after_s == 3600  # into the next year


def test_default_entries_give_each_team_and_user_its_own_counters() -> None:
    clock = ManualClock()
    budgets = tracker(
        teams=(
            Budget(name="default", requests_per_minute=1),
            Budget(name="big", requests_per_minute=3),
        ),
        keys=(Budget(name="default", requests_per_minute=2),),
        clock=clock,
    )
    admit(budgets, team="a", user="alice")
    refused(budgets, team="a", user="bob")  # team a's own one request
    admit(budgets, team="b", user="bob")
    admit(budgets, team="", user="carol")  # a key without a team has the default too
    refused(budgets, team="", user="dave")
    admit(budgets, team="big", user="erin")
    admit(budgets, team="big", user="erin")
    refusal = refused(budgets, team="big", user="erin")
    assert refusal.reason == "API key of erin over its 2 requests per minute"
    admit(budgets, team="big", user="frank")
    assert refused(budgets, team="big", user="frank").reason == (
        "team big over its 3 requests per minute"
    )


def test_both_the_team_and_the_user_must_have_room_and_both_reasons_are_given() -> None:
    clock = ManualClock()
    budgets = tracker(
        teams=(Budget(name="t", requests_per_minute=1),),
        keys=(Budget(name="u", requests_per_minute=1),),
        clock=clock,
    )
    admit(budgets)
    refusal = refused(budgets)
    assert refusal.reason == (
        "team t over its 1 requests per minute; API key of u over its 1 requests per minute"
    )
    admit(budgets, team="other", user="other")


def test_without_a_budget_nothing_is_limited_or_counted() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="limited", requests_per_minute=0),), clock=clock)
    for _ in range(5000):
        admit(budgets, team="free", user="u", tokens=10**9, cost=10**18)
    assert refused(budgets, team="limited").retry_after_s is None
    snapshot = budgets.snapshot()
    assert [s["name"] for s in snapshot["subjects"]] == ["limited"]  # type: ignore[attr-defined]


def test_over_budget_local_admits_the_request_restricted_to_on_premises_targets() -> None:
    policy = load_policy(EXAMPLE)
    clock = ManualClock()
    budgets = BudgetTracker(policy.budgets, clock=clock)
    # support: spend_per_day 10.0, over_budget local
    admit(budgets, team="support", user="alice", cost=10 * UNIT)
    over = budgets.reserve(team="support", user="alice", tokens=100, cost_nanos=1)
    assert isinstance(over, Admission)
    assert over.restrictions.local_only == "team support over its daily budget"
    decision = PolicyEngine(policy).decide(
        ["Summarise the history of Rome."],
        Caller("developer", team="support"),
        restrictions=over.restrictions,
    )
    assert decision.targets == ("local-smol", "site-big")
    # research has no over_budget: reject with Retry-After until midnight
    admit(budgets, team="research", user="bob", cost=50 * UNIT)
    refusal = refused(budgets, team="research", user="bob", cost=1)
    assert refusal.retry_after_s == 12 * 3600


def test_a_rejecting_entry_wins_over_a_local_one() -> None:
    clock = ManualClock()
    budgets = tracker(
        teams=(Budget(name="t", requests_per_minute=1, over_budget=OverBudget.LOCAL),),
        keys=(Budget(name="u", requests_per_minute=1),),
        clock=clock,
    )
    admit(budgets)
    assert refused(budgets).reason.endswith("API key of u over its 1 requests per minute")


def test_a_new_policy_keeps_the_usage_counted_so_far() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=5),), clock=clock)
    for _ in range(3):
        admit(budgets)
    budgets.update(Budgets(teams=(Budget(name="t", requests_per_minute=3),)))
    refused(budgets)
    budgets.update(Budgets())
    admit(budgets)


def test_a_clock_that_steps_back_does_not_shorten_the_window() -> None:
    clock = ManualClock(2000.0)
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=1),), clock=clock)
    assert admit(budgets).admitted_at == 2000.0
    clock.now = 1900.0
    refused(budgets)
    clock.now = 2059.0
    refused(budgets)
    clock.now = 2060.0
    admit(budgets)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tokens", -1),
        ("tokens", 10**9 + 1),
        ("tokens", 1.5),
        ("tokens", float("nan")),
        ("tokens", True),
        ("cost_nanos", -1),
        ("cost_nanos", float("nan")),
        ("cost_nanos", 0.5),
        ("cost_nanos", 10**40),
        ("team", None),
        ("team", "x" * (MAX_NAME + 1)),
        ("user", b"alice"),
    ],
)
def test_hostile_reservations_are_refused_and_change_nothing(field: str, value: object) -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="default", requests_per_minute=1),), clock=clock)
    request: dict[str, object] = {"team": "t", "user": "u", "tokens": 1, "cost_nanos": 1}
    request[field] = value
    with pytest.raises(ValueError, match=field.split("_")[0]):
        budgets.reserve(**request)  # type: ignore[arg-type]
    admit(budgets)
    assert budgets.in_flight == 1


def test_hostile_settles_are_refused_and_leave_the_reservation_in_flight() -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", tokens_per_minute=10),), clock=clock)
    reservation = admit(budgets, tokens=10)
    for tokens, cost in ((-1, 0), (float("inf"), 0), (0, -5), (0, float("nan"))):
        with pytest.raises(ValueError, match=r"tokens used|cost"):
            budgets.settle(reservation, tokens=tokens, cost_nanos=cost)  # type: ignore[arg-type]
    assert budgets.in_flight == 1
    refused(budgets, tokens=1)
    budgets.settle(reservation, tokens=4, cost_nanos=0)
    with pytest.raises(ValueError, match="already settled"):
        budgets.settle(reservation, tokens=0, cost_nanos=0)
    admit(budgets, tokens=6)


@pytest.mark.parametrize("reading", [float("nan"), float("inf"), -1.0, 1e20, None, "now"])
def test_a_broken_clock_is_refused(reading: object) -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=1),), clock=clock)
    clock.now = reading  # type: ignore[assignment]
    with pytest.raises(ValueError, match="clock"):
        budgets.reserve(team="t", user="u", tokens=0, cost_nanos=0)
    assert budgets.in_flight == 0


def test_a_snapshot_restores_todays_spend_and_the_last_minute_in_a_new_process() -> None:
    clock = ManualClock()
    limits = (Budget(name="t", requests_per_minute=3, spend_per_day=1.0),)
    budgets = tracker(teams=limits, clock=clock)
    budgets.settle(admit(budgets, cost=UNIT // 2), tokens=5, cost_nanos=UNIT // 4)
    admit(budgets, cost=UNIT // 2)  # in flight: counted at its reservation
    saved = json.loads(json.dumps(budgets.snapshot()))
    clock.now += 10
    restarted = tracker(teams=limits, clock=clock)
    restarted.restore(saved)
    assert restarted.snapshot() == {**saved, "taken_at": clock.now}
    admit(restarted, cost=UNIT // 4)  # 0.25 + 0.5 + 0.25 = the day's 1.0
    refusal = refused(restarted, cost=1)
    assert refusal.reason == "team t over its 3 requests per minute; team t over its daily budget"
    assert refusal.retry_after_s == 12 * 3600 - 10
    clock.now += 50  # the first two leave the window
    assert refused(restarted, cost=1).reason == "team t over its daily budget"


def test_a_snapshot_from_yesterday_restores_no_spend() -> None:
    clock = ManualClock()
    limits = (Budget(name="t", spend_per_day=1.0, spend_per_month=3.0),)
    budgets = tracker(teams=limits, clock=clock)
    admit(budgets, cost=UNIT)
    saved = budgets.snapshot()
    clock.now += 86_400
    restarted = tracker(teams=limits, clock=clock)
    restarted.restore(saved)
    admit(restarted, cost=UNIT)
    admit(restarted, cost=0)
    assert refused(restarted, cost=1).reason == "team t over its daily budget"


def test_restore_while_requests_are_in_flight_is_refused() -> None:
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=9),), clock=ManualClock())
    saved = budgets.snapshot()
    admit(budgets)
    with pytest.raises(RuntimeError, match="in flight"):
        budgets.restore(saved)


def _snapshot(**subject: object) -> dict[str, object]:
    good: dict[str, object] = {
        "kind": "team",
        "name": "t",
        "day": "2024-03-10",
        "day_spent": 0,
        "month": "2024-03",
        "month_spent": 0,
        "window": [[T0 - 1, 5]],
    }
    return {"version": 1, "taken_at": T0, "subjects": [{**good, **subject}]}


@pytest.mark.parametrize(
    "snapshot",
    [
        None,
        [],
        {"version": 2, "taken_at": T0, "subjects": []},
        {"version": 1, "taken_at": float("nan"), "subjects": []},
        {"version": 1, "taken_at": T0, "subjects": {}},
        {"version": 1, "taken_at": T0, "subjects": [None] * (MAX_SNAPSHOT_SUBJECTS + 1)},
        {"version": 1, "taken_at": T0, "subjects": ["team"]},
        _snapshot(kind="admin"),
        _snapshot(name=7),
        _snapshot(name="n" * 10_000),
        _snapshot(day="2024-13-01"),
        _snapshot(day="yesterday"),
        _snapshot(day="2024-03-11"),  # after the snapshot was taken
        _snapshot(month="2024-3"),
        _snapshot(month="2024-03-01"),
        _snapshot(day_spent=-1),
        _snapshot(month_spent=1.5),
        _snapshot(window=[[T0 + 1, 5]]),  # after the snapshot was taken
        _snapshot(window=[[T0, -5]]),
        _snapshot(window=[[T0]]),
        _snapshot(window="[]"),
        {
            "version": 1,
            "taken_at": T0,
            "subjects": _snapshot()["subjects"] * 2,  # type: ignore[operator]
        },
    ],
)
def test_malformed_snapshots_are_refused_and_change_nothing(snapshot: object) -> None:
    clock = ManualClock()
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=1),), clock=clock)
    with pytest.raises(ValueError, match="snapshot"):
        budgets.restore(snapshot)
    admit(budgets)


def test_replaying_ledger_rows_counts_today_and_the_last_minute_only() -> None:
    clock = ManualClock()
    budgets = tracker(
        teams=(Budget(name="t", requests_per_minute=2, spend_per_day=1.0),),
        keys=(Budget(name="default", tokens_per_minute=100),),
        clock=clock,
    )
    rows = [
        SettledUsage(at=T0 - 86_400, team="t", user="u", tokens=1, cost_nanos=UNIT),  # yesterday
        SettledUsage(at=T0 - 3600, team="t", user="u", tokens=1, cost_nanos=UNIT // 2),
        SettledUsage(at=T0 - 30, team="t", user="u", tokens=90, cost_nanos=0),
        SettledUsage(at=T0 - 50, team="x", user="v", tokens=10, cost_nanos=0),
    ]
    assert budgets.replay(iter(rows)) == 4
    admit(budgets, user="w", cost=UNIT // 2)  # the 2nd request of the minute, the day's 1.0
    assert refused(budgets, user="w", cost=1).reason == (
        "team t over its 2 requests per minute; team t over its daily budget"
    )
    assert refused(budgets, team="x", tokens=11).retry_after_s == 30  # u's 90 leave at T0 + 30
    admit(budgets, team="x", tokens=10)


@pytest.mark.parametrize(
    "row",
    [
        SettledUsage(at=float("nan"), team="t", user="u", tokens=1, cost_nanos=1),
        SettledUsage(at=-1.0, team="t", user="u", tokens=1, cost_nanos=1),
        SettledUsage(at=T0, team="t", user="u", tokens=-1, cost_nanos=1),
        SettledUsage(at=T0, team="t", user="u", tokens=1, cost_nanos=-1),
        SettledUsage(at=T0, team="t" * 300, user="u", tokens=1, cost_nanos=1),
    ],
)
def test_hostile_ledger_rows_are_refused(row: SettledUsage) -> None:
    budgets = tracker(teams=(Budget(name="t", requests_per_minute=1),), clock=ManualClock())
    with pytest.raises(ValueError, match=r"time|tokens|cost|team"):
        budgets.replay([row])


@dataclass
class ModelRequest:
    """The test's own account of one admitted request."""

    at: float
    day: int
    tokens: int
    cost: int
    reservation: Reservation
    settled: bool = False


_operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 120), st.integers(0, 1500)),
        st.tuples(st.just("settle"), st.integers(0, 10**6), st.fractions(0, 1)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 1.0, 59.999, 60.0, 61.0, 3600.0])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 6), st.integers(0, 300), st.integers(0, 3000), _operations, st.booleans())
def test_admitted_usage_never_exceeds_a_limit_whatever_the_order_of_reserves_and_settles(
    rpm: int, tpm: int, daily_nanos: int, operations: list[tuple[Any, ...]], as_user: bool
) -> None:
    clock = ManualClock(datetime(2024, 3, 10, 23, 58, tzinfo=UTC).timestamp())
    limit = Budget(
        name="default" if as_user else "t",
        requests_per_minute=rpm,
        tokens_per_minute=tpm,
        spend_per_day=daily_nanos / UNIT,
    )
    budgets = tracker(**({"keys": (limit,)} if as_user else {"teams": (limit,)}), clock=clock)
    admitted: list[ModelRequest] = []
    for operation in operations:
        now, today = clock.now, int(clock.now // 86_400)
        if operation[0] == "wait":
            clock.now += operation[1]
        elif operation[0] == "reserve":
            _, tokens, cost = operation
            window = [r for r in admitted if r.at > now - 60]
            fits = (
                len(window) + 1 <= rpm
                and sum(r.tokens for r in window) + tokens <= tpm
                and sum(r.cost for r in admitted if r.day == today) + cost <= daily_nanos
            )
            outcome = budgets.reserve(team="t", user="u", tokens=tokens, cost_nanos=cost)
            assert isinstance(outcome, Admission) == fits
            if isinstance(outcome, Admission):
                admitted.append(ModelRequest(now, today, tokens, cost, outcome.reservation))
        else:
            open_requests = [r for r in admitted if not r.settled]
            if open_requests:
                _, index, share = operation
                request = open_requests[index % len(open_requests)]
                request.tokens = math.floor(request.tokens * share)
                request.cost = math.floor(request.cost * share)
                request.settled = True
                budgets.settle(request.reservation, tokens=request.tokens, cost_nanos=request.cost)
        for moment in {r.at for r in admitted}:  # every 60 s window that ends at an admission
            window = [r for r in admitted if moment - 60 < r.at <= moment]
            assert len(window) <= rpm
            assert sum(r.tokens for r in window) <= tpm
        for day in {r.day for r in admitted}:
            assert sum(r.cost for r in admitted if r.day == day) <= daily_nanos
    assert budgets.in_flight == sum(1 for r in admitted if not r.settled)
