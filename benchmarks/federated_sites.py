"""Synthetic site datasets and the real-Flower round timing of the federated LoRA benchmark."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from common.federated.flower_env import FLOWER_OFFLINE_ENV, free_loopback_port
from controlplane.federated.run_plan import (
    NODES_FILE,
    PLAN_FILE,
    RESULT_FILE,
    RunPlan,
    read_json,
    round_file,
    write_json,
)
from controlplane.federated.superlink import SuperLink

BIN = Path(sys.executable).parent
DATASET = "support"

# Each site's own products and (problem, fix) pairs; every site writes in one shared style.
TOPICS: dict[str, tuple[tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    "bank": (
        ("debit card", "savings account", "mobile banking app", "wire transfer"),
        (
            ("was charged twice", "We reversed the duplicate charge; it clears in two days."),
            ("is blocked", "We unblocked it after checking your identity."),
            ("shows a wrong balance", "The balance updates overnight; the statement is right."),
            ("asks for a new PIN", "Set a new PIN at any branch terminal with your ID."),
        ),
    ),
    "clinic": (
        ("appointment booking", "lab results portal", "prescription refill", "patient card"),
        (
            ("does not load", "Clear the browser cache, then sign in with your patient number."),
            ("lost my data", "Your records are safe; the nurse desk can reprint them."),
            ("is delayed", "The doctor confirms refills within one working day."),
            ("needs a referral", "Ask your family doctor to send the referral by fax."),
        ),
    ),
    "garage": (
        ("brake service", "winter tyres", "oil change", "engine diagnostics"),
        (
            ("costs more than quoted", "The extra part was a worn brake disc; we refund labour."),
            ("makes a noise", "Bring the car in; the mechanic checks it for free."),
            ("took too long", "The part arrived late; your next oil change is free."),
            ("warning light is on", "Read the code with our scanner at the front desk."),
        ),
    ),
    "hotel": (
        ("room booking", "breakfast package", "airport shuttle", "loyalty points"),
        (
            ("was cancelled", "We rebooked the same room type at no extra cost."),
            ("was not applied", "We added the points to your account manually."),
            ("never arrived", "The shuttle now leaves every half hour from gate B."),
            ("is too expensive", "Members get ten percent off when booking direct."),
        ),
    ),
}
CUSTOMERS = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fatou", "Goran", "Hana", "Ivo", "Jun")


def site_names(count: int) -> list[str]:
    if not 2 <= count <= len(TOPICS):
        raise SystemExit(f"--sites must be 2..{len(TOPICS)}")
    return list(TOPICS)[:count]


def ticket(site: str, rng: random.Random) -> str:
    products, issues = TOPICS[site]
    product, (problem, fix), who = rng.choice(products), rng.choice(issues), rng.choice(CUSTOMERS)
    number = rng.randrange(1000, 9999)
    return (
        f"Ticket {number} ({site} help desk)\nCustomer {who}: My {product} {problem}.\n"
        f"Agent: Hello {who}, thank you for writing to us. {fix} "
        "Reply to this ticket if anything is still unclear. Kind regards, the support team."
    )


def write_datasets(root: Path, names: list[str], examples: int, seed: int) -> dict[str, Path]:
    """One folder per site, `<root>/<site>/support/tickets.jsonl`, deterministic in `seed`."""
    folders: dict[str, Path] = {}
    for index, site in enumerate(names):
        rng = random.Random(seed * 1000 + index)
        folder = root / site / DATASET
        folder.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"text": ticket(site, rng)}) for _ in range(examples)]
        (folder / "tickets.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        folders[site] = folder
    return folders


# -- part B: the rounds on the real Flower deployment ----------------------------------------


def _start_supernode(link: SuperLink, site: str, config: dict[str, str | int], home: Path) -> Any:
    home.mkdir(parents=True, exist_ok=True)
    parts = [f"{k}={v}" if isinstance(v, int) else f'{k}="{v}"' for k, v in config.items()]
    env = {
        **os.environ,
        **FLOWER_OFFLINE_ENV,
        "FLWR_HOME": str(home / "flower"),
        "OMP_NUM_THREADS": str(config["threads"]),
        "MKL_NUM_THREADS": str(config["threads"]),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        str(BIN / "flower-supernode"),
        "--insecure",
        "--superlink",
        link.address,
        "--port",
        str(free_loopback_port()),
        "--node-config",
        " ".join(parts),
        "--max-wait-time",
        "600",
    ]
    with (home / "supernode.log").open("ab") as log_file:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _round_row(report: dict[str, Any]) -> dict[str, Any]:
    sites = report.get("sites", {})
    local = max(
        (m.get("load-seconds", 0.0) + m.get("train-seconds", 0.0) for m in sites.values()),
        default=0.0,
    )
    wall = float(report["wall_s"])
    return {
        "round": report["round"],
        "wall_s": wall,
        "local_s": local,  # the longest site's model load + training
        "max_train_s": report["train_s"],
        "max_load_s": report["load_s"],
        "overhead_s": wall - local,
        "overhead_share": (wall - local) / wall if wall > 0 else 0.0,
        "bytes_up": report["bytes_up"],
        "bytes_down": report["bytes_down"],
        "participants": report["participants"],
    }


def _one_run(
    link: SuperLink, job_dir: Path, plan: RunPlan, procs: list[Any], timeout_s: float
) -> dict[str, Any]:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
    started_at, started = time.time(), time.monotonic()
    run_id = link.start_run(job_dir)
    deadline = started + timeout_s
    result = None
    while result is None:
        if time.monotonic() > deadline:
            link.stop_run(run_id)
            raise RuntimeError(f"run {run_id} gave no result within {timeout_s:.0f} s")
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a SuperNode exited; see the logs under {job_dir.parent}")
        time.sleep(1.0)
        result = read_json(job_dir / RESULT_FILE)
    total = time.monotonic() - started
    if result.get("state") != "succeeded":
        raise RuntimeError(f"run {run_id} failed: {result}")
    reports = [read_json(round_file(job_dir, r, "json")) for r in range(1, plan.rounds + 1)]
    nodes_at = (job_dir / NODES_FILE).stat().st_mtime
    for _ in range(30):  # the record settles a moment after the ServerApp ends
        status = link.run_status(run_id)
        if str(status.get("status", "")).startswith("finished"):
            break
        time.sleep(1.0)
    return {
        "run_id": run_id,
        "local_steps": plan.local_steps,
        "rounds": [_round_row(r) for r in reports],
        # start_run -> every site answered the query (ClientApp start; the first run of a
        # fresh site also converts the GGUF into its torch cache here)
        "sites_ready_s": nodes_at - started_at,
        "run_total_s": total,
        "flower_status": {k: status.get(k) for k in ("status", "network-traffic", "compute-time")},
    }


def flower_rounds(
    model_path: Path,
    datasets: dict[str, Path],
    work: Path,
    *,
    rounds: int,
    steps_list: list[int],
    threads: int,
    timeout_s: float = 1200.0,
) -> dict[str, Any]:
    """Starts a SuperLink and one SuperNode per site, then one Flower run per local-step
    count (same nodes: only the first run converts the GGUF); everything stopped after."""
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    job_id = str(uuid.uuid4())
    link = SuperLink(work / "superlink", executable_dir=BIN)
    procs: list[Any] = []
    try:
        link.ensure_running()
        for site, folder in datasets.items():
            config: dict[str, str | int] = {
                "job-id": job_id,
                "agent-id": site,
                "dataset-dir": str(folder),
                "model-path": str(model_path),
                "base-sha256": sha,
                "torch-cache": str(work / "nodes" / site / "torch-models" / sha),
                "threads": threads,
            }
            procs.append(_start_supernode(link, site, config, work / "nodes" / site))
        runs = []
        for index, steps in enumerate(steps_list):
            plan = RunPlan(
                job_id=job_id,
                output_dir=str(work / f"job-{index}-steps-{steps}"),
                base_gguf=str(model_path),
                agents=tuple(datasets),
                rounds=rounds,
                min_participants=len(datasets),
                local_steps=steps,
            )
            runs.append(_one_run(link, plan.directory, plan, procs, timeout_s))
            write_json(work / "flower-runs.json", runs)
        return {"threads_per_site": threads, "runs": runs}
    finally:
        for process in procs:
            _stop(process)
        link.close()
