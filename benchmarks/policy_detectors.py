"""Policy detectors: scan time at 1 KB and 16 KB against simple baselines, recall and false
positives per kind on the labelled corpus (tests/sensitive_corpus.py).

Usage: .venv/bin/python benchmarks/policy_detectors.py [--rounds 2000] [--seed 0]
    [--per-kind 200] [--benign 2000] [--json FILE]

The detector set is the default one: the nine built-ins, a keyword list and one custom regex.
Each timed round scans one prompt (cycling through 50 seeded prompts per size and kind of
text); the baselines run on the same prompts: `re.search` of one simple pattern (a naive SSN
regex, which scans the whole text when nothing matches) and `str.lower()`. Scans and
baselines are timed in interleaved blocks of 100 calls each, every call on its own
(perf_counter_ns, about 0.1 µs of it the clock itself), garbage collection left on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.detectors import (
    Detector,
    builtin_detector,
    keyword_detector,
    prepare,
    regex_detector,
    scan,
)

# Run as a script, benchmarks/ (not the repository root) is on sys.path: the corpus is in tests/.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.sensitive_corpus import (  # noqa: E402
    EVASIVE_VARIANTS,
    KINDS,
    benign_text,
    generate_corpus,
    plain_text,
    sensitive_prompt,
)

SIZES = {"1 KB": 1024, "16 KB": 16 * 1024}
PROMPTS_PER_CASE = 50
BLOCK = 100
GOAL_US = 50.0  # the whole policy decision, p50, 1 KB (issue)
_BASELINE_PATTERN = re.compile(r"\d{3}-\d{2}-\d{4}")


def default_detectors() -> list[Detector]:
    detectors = [builtin_detector(k, name=k, level="restricted") for k in BUILTIN_DETECTOR_KINDS]
    detectors.append(
        keyword_detector(
            "codenames",
            ["project falcon", "internal only", "do not distribute", "strictly confidential"],
            level="confidential",
        )
    )
    detectors.append(regex_detector("tickets", r"\bPRJ-\d{4,6}\b", level="internal"))
    return detectors


def prompts(kind: str, size: int, seed: int) -> list[str]:
    """PROMPTS_PER_CASE prompts of `size` characters: chat prose without numbers ("plain"),
    prose dense with look-alike numbers, versions, ids and code ("benign"), or that prose with
    three sensitive values of random kinds in it ("sensitive")."""
    rng = random.Random(f"{seed}-{kind}-{size}")
    texts = []
    for _ in range(PROMPTS_PER_CASE):
        text = plain_text(rng, size) if kind == "plain" else benign_text(rng, size)
        if kind == "sensitive":
            for _ in range(3):
                value = sensitive_prompt(rng.choice(KINDS), rng).text
                at = rng.randrange(len(text))
                text = text[:at] + " " + value + " " + text[at:]
            text = text[: size - 1] if len(text) > size else text
        texts.append(text)
    return texts


@dataclass
class Timing:
    case: str
    p50_us: float
    p99_us: float
    baseline_search_p50_us: float
    baseline_lower_p50_us: float
    prepare_p50_us: float

    @property
    def vs_search(self) -> float:
        return self.p50_us / self.baseline_search_p50_us

    @property
    def vs_lower(self) -> float:
        return self.p50_us / self.baseline_lower_p50_us


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(case: str, texts: list[str], detectors: list[Detector], rounds: int) -> Timing:
    """Blocks of BLOCK scans, then BLOCK of each baseline, then BLOCK prepares, repeated: each
    measured back to back (warm), the blocks interleaved so that drift in the machine's load
    reaches all of them."""
    for text in texts:  # warm-up: caches, the normalisation map
        scan(text, detectors)
    clock = time.perf_counter_ns
    search = _BASELINE_PATTERN.search
    scans: list[float] = []
    searches: list[float] = []
    lowers: list[float] = []
    prepares: list[float] = []
    done = 0
    while done < rounds:
        block = [texts[(done + i) % len(texts)] for i in range(min(BLOCK, rounds - done))]
        done += len(block)
        for text in block:
            started = clock()
            scan(text, detectors)
            scans.append((clock() - started) / 1000)
        for text in block:
            started = clock()
            search(text)
            searches.append((clock() - started) / 1000)
        for text in block:
            started = clock()
            text.lower()
            lowers.append((clock() - started) / 1000)
        for text in block:
            started = clock()
            prepare(text)
            prepares.append((clock() - started) / 1000)
    return Timing(
        case,
        statistics.median(scans),
        _percentile(scans, 0.99),
        statistics.median(searches),
        statistics.median(lowers),
        statistics.median(prepares),
    )


@dataclass
class Accuracy:
    kind: str
    prompts: int
    found: int
    evasive_prompts: int
    evasive_found: int
    benign: int
    false_positives: int

    @property
    def recall(self) -> float:
        return self.found / self.prompts if self.prompts else float("nan")

    @property
    def evasive_recall(self) -> float:
        return self.evasive_found / self.evasive_prompts if self.evasive_prompts else float("nan")

    @property
    def false_positive_rate(self) -> float:
        return self.false_positives / self.benign if self.benign else float("nan")


def accuracy(seed: int, per_kind: int, benign: int) -> tuple[list[Accuracy], Counter[str]]:
    detectors = [builtin_detector(k, name=k, level="restricted") for k in KINDS]
    corpus = generate_corpus(seed, per_kind=per_kind, benign=benign)
    rows = {k: Accuracy(k, 0, 0, 0, 0, 0, 0) for k in KINDS}
    false_positive_variants: Counter[str] = Counter()
    for prompt in corpus:
        result = scan(prompt.text, detectors)
        if result.failures:
            raise RuntimeError(f"detector failures on the corpus: {result.failures}")
        fired = {f.kind for f in result.findings}
        for kind in KINDS:
            row = rows[kind]
            if kind in prompt.kinds:
                row.prompts += 1
                row.found += kind in fired
                if prompt.variant in EVASIVE_VARIANTS:
                    row.evasive_prompts += 1
                    row.evasive_found += kind in fired
            elif not prompt.kinds:
                row.benign += 1
                if kind in fired:
                    row.false_positives += 1
                    false_positive_variants[f"{kind}: {prompt.variant}"] += 1
    return list(rows.values()), false_positive_variants


def print_timings(timings: list[Timing]) -> None:
    print()
    print("| prompt | scan p50 µs | scan p99 µs | prepare p50 µs | re.search p50 µs | ×re.search "
          "| str.lower p50 µs | ×str.lower |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in timings:
        print(
            f"| {t.case} | {t.p50_us:.1f} | {t.p99_us:.1f} | {t.prepare_p50_us:.1f} "
            f"| {t.baseline_search_p50_us:.2f} | {t.vs_search:.0f} "
            f"| {t.baseline_lower_p50_us:.2f} | {t.vs_lower:.0f} |"
        )


def print_accuracy(rows: list[Accuracy], false_positive_variants: Counter[str]) -> None:
    print()
    print("| kind | recall | evasive-variant recall | false positives on benign | FPR |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        evasive = (
            f"{r.evasive_found}/{r.evasive_prompts} ({r.evasive_recall:.1%})"
            if r.evasive_prompts
            else "none in the corpus"
        )
        print(
            f"| {r.kind} | {r.found}/{r.prompts} ({r.recall:.1%}) | {evasive} "
            f"| {r.false_positives}/{r.benign} | {r.false_positive_rate:.2%} |"
        )
    if false_positive_variants:
        print()
        print("false positives by look-alike:")
        for name, count in false_positive_variants.most_common():
            print(f"  {name}: {count}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2000, help="timed scans per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=200, help="sensitive prompts per kind")
    parser.add_argument("--benign", type=int, default=2000, help="non-sensitive prompts")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    if min(args.rounds, args.per_kind, args.benign) < 1:
        parser.error("--rounds, --per-kind and --benign must be positive")

    load_before = os.getloadavg()
    detectors = default_detectors()
    timings = []
    for kind in ("plain", "benign", "sensitive"):
        for label, size in SIZES.items():
            case = f"{label} {kind}"
            print(f"timing {case} ({args.rounds} rounds) ...", flush=True)
            timings.append(measure(case, prompts(kind, size, args.seed), detectors, args.rounds))
    print("scanning the corpus ...", flush=True)
    rows, false_positive_variants = accuracy(args.seed, args.per_kind, args.benign)
    load_after = os.getloadavg()

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print()
    print(f"{machine}, Python {platform.python_version()}; load average (1 min) "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after")  # fmt: skip
    print(f"detectors: {len(detectors)} (9 built-in, 1 keyword list, 1 regex); "
          f"goal: the whole decision ≤ {GOAL_US:g} µs p50 at 1 KB")  # fmt: skip
    print_timings(timings)
    print_accuracy(rows, false_positive_variants)
    if args.json is not None:
        document: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average": {"before": load_before, "after": load_after},
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "timings": [asdict(t) for t in timings],
            "accuracy": [asdict(r) for r in rows],
            "false_positives": dict(false_positive_variants),
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
