"""Federated LoRA: held-out loss per site (base, local, FedAvg, frozen-A, pooled), Flower rounds.

Usage: .venv/bin/python benchmarks/federated_lora.py [--rounds 2] [--local-steps 5]
    [--sites 3] [--examples 40] [--flower-rounds 2] [--flower-steps 20,5]
    [--part quality|rounds|both] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.training.datasets import Example, Split, load_dataset, split_examples
from agent.training.gguf_model import LoadedModel, load_gguf_model
from agent.training.lora_training import TrainingConfig, heldout_loss, train_adapter
from common.federated.adapter_tensors import Adapter, initial_adapter
from common.federated.gguf_lora import lora_shapes_from_gguf
from controlplane.federated.run_plan import RunPlan

if TYPE_CHECKING:
    import benchmarks.federated_sites as sites_mod
else:  # run as a script, benchmarks/ (not the repository root) is on sys.path
    import federated_sites as sites_mod

PLAN = RunPlan(job_id="", output_dir="", base_gguf="", agents=(), rounds=1)  # job defaults
SEED = 0
GOAL_POOLED_GAP = 0.10
GOAL_OVERHEAD_SHARE = 0.15


@dataclass(frozen=True)
class Budget:
    rounds: int
    steps: int
    threads: int


def training_config(steps: int, seed: int, threads: int, freeze_a: bool = False) -> TrainingConfig:
    return TrainingConfig(
        rank=PLAN.rank,
        alpha=PLAN.alpha,
        targets=PLAN.targets,
        learning_rate=PLAN.learning_rate,
        local_steps=steps,
        batch_size=PLAN.batch_size,
        max_seq_len=PLAN.max_seq_len,
        seed=seed,
        threads=threads,
        freeze_a=freeze_a,
    )


def fedavg(adapters: Sequence[tuple[Adapter, int]]) -> Adapter:
    """The example-weighted mean of each tensor (what Flower's FedAvg computes)."""
    total = float(sum(count for _, count in adapters))
    return {
        key: np.sum([t[key].astype(np.float64) * (n / total) for t, n in adapters], axis=0).astype(
            np.float32
        )
        for key in adapters[0][0]
    }


def rounds_alone(
    loaded: LoadedModel, examples: Sequence[Example], start: Adapter, budget: Budget, steps: int
) -> Adapter:
    """`budget.rounds` successive trainings of `steps` steps (a fresh optimizer each, as a site
    gets in every federated round), continuing from the previous adapter."""
    adapter = start
    for round_number in range(1, budget.rounds + 1):
        config = training_config(steps, SEED + round_number, budget.threads)
        adapter = train_adapter(loaded.model, loaded.tokenizer, examples, adapter, config).tensors
    return adapter


def federated(
    loaded: LoadedModel, splits: Mapping[str, Split], start: Adapter, budget: Budget, frozen: bool
) -> Adapter:
    adapter = start
    for round_number in range(1, budget.rounds + 1):
        config = training_config(budget.steps, SEED + round_number, budget.threads, frozen)
        results = [
            train_adapter(loaded.model, loaded.tokenizer, split.train, adapter, config)
            for split in splits.values()
        ]
        adapter = fedavg([(r.tensors, r.num_examples) for r in results])
    return adapter


def quality(model_path: Path, folders: Mapping[str, Path], budget: Budget, work: Path) -> Any:
    started = time.monotonic()
    loaded = load_gguf_model(model_path, threads=budget.threads, cache_dir=work / "torch-cache")
    load_s = time.monotonic() - started
    splits = {site: split_examples(load_dataset(f.parent, f.name)) for site, f in folders.items()}
    start = initial_adapter(lora_shapes_from_gguf(model_path, PLAN.rank, PLAN.targets), SEED)
    models: dict[str, Adapter | None] = {"base": None}
    seconds: dict[str, float] = {}

    def timed(name: str, build: Any) -> None:
        begun = time.monotonic()
        models[name] = build()
        seconds[name] = time.monotonic() - begun
        print(f"  trained {name} in {seconds[name]:.0f} s", flush=True)

    for site, split in splits.items():
        timed(
            f"local-only {site}",
            lambda s=split: rounds_alone(loaded, s.train, start, budget, budget.steps),
        )
    timed("federated (FedAvg)", lambda: federated(loaded, splits, start, budget, False))
    timed("federated (frozen-a)", lambda: federated(loaded, splits, start, budget, True))
    pooled = [e for split in splits.values() for e in split.train]
    timed("pooled", lambda: rounds_alone(loaded, pooled, start, budget, budget.steps * len(splits)))
    losses = {
        name: {
            site: heldout_loss(
                loaded.model,
                loaded.tokenizer,
                split.heldout,
                adapter,
                PLAN.max_seq_len,
                alpha=PLAN.alpha,
            )
            for site, split in splits.items()
        }
        for name, adapter in models.items()
    }
    counts = {s: {"train": len(x.train), "heldout": len(x.heldout)} for s, x in splits.items()}
    return {"load_s": load_s, "train_s": seconds, "losses": losses, "examples": counts}


def quality_goals(losses: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    sites = list(losses["base"])
    goals: dict[str, Any] = {}
    for name in ("federated (FedAvg)", "federated (frozen-a)"):
        fed = losses[name]
        own = {s: fed[s] <= losses[f"local-only {s}"][s] for s in sites}
        others = {
            s: all(fed[s] <= losses[f"local-only {o}"][s] for o in sites if o != s) for s in sites
        }
        gap = {s: fed[s] / losses["pooled"][s] - 1.0 for s in sites}
        goals[name] = {
            "le_own_local_only": own,
            "le_other_sites_local_only": others,
            "gap_to_pooled": gap,
            "within_10pct_of_pooled": {s: g <= GOAL_POOLED_GAP for s, g in gap.items()},
        }
    return goals


def print_quality(result: Mapping[str, Any]) -> None:
    losses, sites = result["losses"], list(result["losses"]["base"])
    print("\n| model | " + " | ".join(f"{s} held-out" for s in sites) + " | mean |")
    print("|---|" + "---:|" * (len(sites) + 1))
    for name, row in losses.items():
        values = [row[s] for s in sites]
        cells = " | ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {cells} | {sum(values) / len(values):.3f} |")
    for name, goal in result["goals"].items():
        print(f"\n{name}:")
        for key, per_site in goal.items():
            shown = {s: (f"{v:+.1%}" if isinstance(v, float) else v) for s, v in per_site.items()}
            print(f"  {key}: {shown}")


def print_rounds(result: Mapping[str, Any]) -> None:
    print(f"\nFlower rounds ({result['threads_per_site']} torch thread(s) per site):")
    print("| local steps | round | wall s | local (load+train) s | overhead s | overhead share |")
    print("|---:|---:|---:|---:|---:|---:|")
    for run in result["runs"]:
        for r in run["rounds"]:
            print(
                f"| {run['local_steps']} | {r['round']} | {r['wall_s']:.1f} | "
                f"{r['local_s']:.1f} | {r['overhead_s']:.1f} | {r['overhead_share']:.1%} |"
            )
    for run in result["runs"]:
        print(
            f"steps {run['local_steps']}: start_run -> sites ready {run['sites_ready_s']:.1f} s, "
            f"run total {run['run_total_s']:.1f} s, flower: {run['flower_status']}"
        )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2, help="rounds in the quality part")
    parser.add_argument("--local-steps", type=int, default=5, help="steps per round (quality)")
    parser.add_argument("--sites", type=int, default=3)
    parser.add_argument("--examples", type=int, default=40, help="examples per site")
    parser.add_argument("--flower-rounds", type=int, default=2)
    parser.add_argument("--flower-steps", default="20,5", help="local steps of each Flower run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (quality part)")
    parser.add_argument("--part", choices=("quality", "rounds", "both"), default="both")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--work", type=Path, help="keep the work files here")
    args = parser.parse_args(argv)
    model_path = Path(
        subprocess.run(
            [str(sites_mod.BIN / "outpost-agent"), "demo-model"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    names = sites_mod.site_names(args.sites)
    work = args.work or Path(tempfile.mkdtemp(prefix="outpost-fl-bench-"))
    folders = sites_mod.write_datasets(work / "sites", names, args.examples, SEED)
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "load_average_start": load_average(),
        "settings": {**vars(args), "json": str(args.json), "work": str(work)},
        "plan_defaults": json.loads(PLAN.to_json()),
    }
    print(f"model {model_path}; work {work}; load average {report['load_average_start']}")
    if args.part in ("quality", "both"):
        budget = Budget(args.rounds, args.local_steps, args.threads)
        print(f"quality: {args.rounds} rounds x {args.local_steps} steps per site", flush=True)
        result = quality(model_path, folders, budget, work)
        result["goals"] = quality_goals(result["losses"])
        report["quality"] = result
        print_quality(result)
        save(args.json, report)
    if args.part in ("rounds", "both"):
        steps_list = [int(s) for s in args.flower_steps.split(",") if s]
        print(f"\nFlower: {args.flower_rounds} rounds at local steps {steps_list}", flush=True)
        rounds = sites_mod.flower_rounds(
            model_path,
            folders,
            work / "flower",
            rounds=args.flower_rounds,
            steps_list=steps_list,
            threads=1,
        )
        for run in rounds["runs"]:
            shares = [r["overhead_share"] for r in run["rounds"]]
            run["overhead_goal_met"] = all(s <= GOAL_OVERHEAD_SHARE for s in shares)
        report["rounds"] = rounds
        print_rounds(rounds)
    report["load_average_end"] = load_average()
    print(f"\nload average at the end: {report['load_average_end']}")
    save(args.json, report)


def save(path: Path | None, report: Mapping[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(report, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
