"""The whole policy decision (classify + route) on the example policy, at 1 KB and 16 KB.

Usage: .venv/bin/python benchmarks/policy_decision.py [--rounds 2000] [--seed 0] [--json FILE]

Times `PolicyEngine.decide` on examples/routing-policy.yaml (its eleven detectors, five routes)
for a developer's request, against `scan` alone with the same detectors on the same prompts
(the baseline: what routing adds on top of detection). Prompts: 50 seeded ones per size and
kind of text (plain chat prose; prose dense with look-alike numbers). Decisions and scans run
in interleaved blocks of 100 calls, each call timed on its own (perf_counter_ns). The goal
(issue 7): 50 µs p50 for a 1 KB prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from common.policy.detectors import scan
from common.policy.document import load_policy
from common.policy.routing import Caller, PolicyEngine

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # run as a script, benchmarks/ is on sys.path: tests/ is not
    sys.path.insert(0, str(_ROOT))

from tests.sensitive_corpus import benign_text, plain_text  # noqa: E402

EXAMPLE = _ROOT / "examples" / "routing-policy.yaml"
SIZES = {"1 KB": 1024, "16 KB": 16 * 1024}
TEXTS = {"plain prose": plain_text, "number-dense prose": benign_text}
PROMPTS_PER_CASE = 50
BLOCK = 100
GOAL_US = 50.0
CALLER = Caller("developer", team="support", key_id="bench")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def measure(engine: PolicyEngine, prompts: list[str], rounds: int) -> dict[str, float]:
    detectors = engine._detectors  # the baseline scans with exactly the engine's detectors
    decide_ns: list[int] = []
    scan_ns: list[int] = []
    index = 0
    while len(decide_ns) < rounds:
        for _ in range(BLOCK):
            prompt = prompts[index % len(prompts)]
            start = time.perf_counter_ns()
            engine.decide([prompt], CALLER)
            decide_ns.append(time.perf_counter_ns() - start)
            index += 1
        for _ in range(BLOCK):
            prompt = prompts[index % len(prompts)]
            start = time.perf_counter_ns()
            scan(prompt, detectors)
            scan_ns.append(time.perf_counter_ns() - start)
            index += 1
    decide_us = [n / 1000 for n in decide_ns]
    scan_us = [n / 1000 for n in scan_ns]
    return {
        "decide_p50_us": statistics.median(decide_us),
        "decide_p99_us": percentile(decide_us, 99),
        "scan_p50_us": statistics.median(scan_us),
        "scan_p99_us": percentile(scan_us, 99),
        "ratio_p50": statistics.median(decide_us) / statistics.median(scan_us),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.rounds < BLOCK:
        parser.error(f"--rounds must be at least {BLOCK}")
    engine = PolicyEngine(load_policy(EXAMPLE))
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; {args.rounds} decisions per case"
    )
    print("| prompt | size | decide p50 µs | p99 | scan alone p50 µs | p99 | decide / scan |")
    print("|---|---|---:|---:|---:|---:|---:|")
    results: list[dict[str, Any]] = []
    for text_name, make in TEXTS.items():
        for size_name, size in SIZES.items():
            rng = random.Random(f"{args.seed}-{text_name}-{size}")
            prompts = [make(rng, size) for _ in range(PROMPTS_PER_CASE)]
            figures = measure(engine, prompts, args.rounds)
            results.append({"text": text_name, "size": size_name, **figures})
            print(
                f"| {text_name} | {size_name} | {figures['decide_p50_us']:.1f} | "
                f"{figures['decide_p99_us']:.1f} | {figures['scan_p50_us']:.1f} | "
                f"{figures['scan_p99_us']:.1f} | {figures['ratio_p50']:.2f} |"
            )
    plain_1kb = next(r for r in results if r["text"] == "plain prose" and r["size"] == "1 KB")
    met = plain_1kb["decide_p50_us"] <= GOAL_US
    print(f"goal {GOAL_US:.0f} µs p50 at 1 KB (plain prose): {'met' if met else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps({"rounds": args.rounds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
