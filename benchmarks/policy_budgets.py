"""Budget tracker: reserve + settle time per request, one thread and eight, against a bare lock.

Usage: .venv/bin/python benchmarks/policy_budgets.py [--rounds 100000] [--threads 8] [--json FILE]

Each round is one request: `reserve` on its team's and its API key user's budgets (all four
limits set, none reached, the real clock `time.time`) then `settle` with smaller actual figures.
The baseline in the same run is the least any thread-safe counter costs: `threading.Lock`
acquire/release around one dict update (`with lock: counts[key] = counts.get(key, 0) + 1`).
Every call is timed on its own (perf_counter_ns; about 0.1 µs of each figure is the clock), in
interleaved blocks of 1000 rounds of each, garbage collection left on. With threads, the
tracker's run and then the baseline's: every thread times its own calls, all start together
at a barrier; the figures include waiting for the lock (and for the interpreter's lock, which
the threads share).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common.policy.budgets import Admission, BudgetTracker
from common.policy.policy_model import Budget, Budgets, OverBudget

BLOCK = 1000
TEAMS = [f"team-{i}" for i in range(8)]
USERS = [f"user-{i}" for i in range(64)]


def budgets() -> Budgets:
    """All four limits on every team and user, far from reached."""

    def roomy(over_budget: OverBudget) -> Budget:
        return Budget(
            name="default",
            requests_per_minute=10**12,
            tokens_per_minute=10**12,
            spend_per_day=1e9,
            spend_per_month=1e9,
            over_budget=over_budget,
        )

    return Budgets(teams=(roomy(OverBudget.REJECT),), api_keys=(roomy(OverBudget.LOCAL),))


def tracker_round(tracker: BudgetTracker) -> Callable[[int], int]:
    def one(i: int) -> int:
        start = time.perf_counter_ns()
        outcome = tracker.reserve(
            team=TEAMS[i % 8], user=USERS[i % 64], tokens=1200, cost_nanos=500_000
        )
        assert isinstance(outcome, Admission)
        tracker.settle(outcome.reservation, tokens=700, cost_nanos=310_000)
        return time.perf_counter_ns() - start

    return one


def lock_round() -> Callable[[int], int]:
    lock = threading.Lock()
    counts: dict[str, int] = {}

    def one(i: int) -> int:
        start = time.perf_counter_ns()
        with lock:
            key = TEAMS[i % 8]
            counts[key] = counts.get(key, 0) + 1
        return time.perf_counter_ns() - start

    return one


def timed(rounds: int, cases: dict[str, Callable[[int], int]]) -> dict[str, list[int]]:
    """Runs the cases in interleaved blocks of BLOCK rounds; the nanoseconds of every round."""
    spent: dict[str, list[int]] = {name: [] for name in cases}
    for first in range(0, rounds, BLOCK):
        for name, case in cases.items():
            spent[name] += [case(i) for i in range(first, min(rounds, first + BLOCK))]
    return spent


def threaded(threads: int, rounds: int, case: Callable[[int], int]) -> tuple[list[int], float]:
    """Every thread runs `rounds` of `case`, all starting at once: the nanoseconds of every
    round, and the wall-clock seconds of the whole."""
    start = threading.Barrier(threads + 1)
    results: list[list[int]] = []
    results_lock = threading.Lock()

    def worker(offset: int) -> None:
        start.wait()
        mine = [case(offset + i) for i in range(rounds)]
        with results_lock:
            results.append(mine)

    workers = [threading.Thread(target=worker, args=(k * rounds,)) for k in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    return [ns for r in results for ns in r], time.perf_counter() - began


def summary(spent: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    for name, values in spent.items():
        cuts = statistics.quantiles(values, n=100)
        figures[name] = {
            "n": len(values),
            "p50_us": round(statistics.median(values) / 1000, 2),
            "p99_us": round(cuts[98] / 1000, 2),
        }
    figures["ratio"] = {
        q: round(figures["tracker"][q] / figures["lock"][q], 1) for q in ("p50_us", "p99_us")
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    def cases() -> dict[str, Callable[[int], int]]:
        tracker = BudgetTracker(budgets(), clock=time.time)
        return {"tracker": tracker_round(tracker), "lock": lock_round()}

    load_before = os.getloadavg()
    single = summary(timed(args.rounds, cases()))
    per_thread = args.rounds // args.threads
    spent: dict[str, list[int]] = {"tracker": [], "lock": []}
    rates: dict[str, float] = {}
    for name, case in cases().items():  # one after the other, the same threads and rounds
        spent[name], wall = threaded(args.threads, per_thread, case)
        rates[name] = round(args.threads * per_thread / wall)
    many = summary(spent)
    report = {
        "command": f"benchmarks/policy_budgets.py --rounds {args.rounds} --threads {args.threads}",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "single_thread": single,
        f"{args.threads}_threads": many,
        f"{args.threads}_threads_rounds_per_s": rates,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
