"""`outpost fl ...`: start, follow, list and cancel federated fine-tuning jobs."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.cli_client import (
    Client,
    UsageError,
    clean,
    label_pair,
    print_json,
    segment,
    table,
)
from controlplane.federated.job_spec import AGGREGATIONS, LORA_TARGETS
from controlplane.federated.job_views import JobState

_DURATION = re.compile(r"(\d{1,9})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(text: str) -> int:
    """`5m`, `300s`, `1h` or plain seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 300s, 5m, 1h")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _site_dataset(text: str) -> tuple[str, str]:
    site, sep, name = text.partition("=")
    if not sep or not site or not name:
        raise argparse.ArgumentTypeError(f"invalid site dataset {text!r}: use SITE=NAME")
    return site, name


def _targets(text: str) -> list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise argparse.ArgumentTypeError(f"use a comma-separated list of {', '.join(LORA_TARGETS)}")
    return targets


def add_federated_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    fl = commands.add_parser("fl", help="federated LoRA fine-tuning jobs")
    actions = fl.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = actions.add_parser("start", parents=[common], help="start a federated job")
    start.add_argument("--model", required=True, help="base model: name, name@version, sha256:…")
    who = start.add_mutually_exclusive_group(required=True)
    who.add_argument("--agents", nargs="+", metavar="AGENT_ID", help="the participating agents")
    who.add_argument("--site", help="every agent of this site")
    who.add_argument(
        "--label", type=label_pair, action="append", help="key=value selector, repeatable"
    )
    start.add_argument("--dataset", required=True, help="the dataset's name at each site")
    start.add_argument(
        "--site-dataset",
        type=_site_dataset,
        action="append",
        default=[],
        metavar="SITE=NAME",
        help="another dataset name at one site, repeatable",
    )
    for flag, kind, what in (
        ("--rounds", int, "federated rounds (default 3)"),
        ("--local-steps", int, "training steps per site and round (default 20)"),
        ("--batch-size", int, "default 4"),
        ("--max-seq-len", int, "tokens per example (default 128)"),
        ("--learning-rate", float, "default 0.001"),
        ("--rank", int, "LoRA rank (default 8)"),
        ("--alpha", float, "LoRA alpha (default 16)"),
        ("--min-participants", int, "default: every agent that can take part"),
        ("--gate-loss-drop", float, "held-out loss must drop by this many percent (default 1)"),
        ("--dp-noise", float, "differential privacy: noise multiplier (with --dp-clip)"),
        ("--dp-clip", float, "differential privacy: clipping norm (with --dp-noise)"),
        ("--threads", int, "training threads at a site (default 1)"),
        ("--nice", int, "training priority at a site, 0-19 (default 10)"),
    ):
        start.add_argument(flag, type=kind, help=what)
    start.add_argument("--targets", type=_targets, help="LoRA modules, e.g. q_proj,v_proj")
    start.add_argument("--aggregation", choices=AGGREGATIONS, help="default fedavg")
    start.add_argument(
        "--participant-wait", type=_seconds, help="wait for the minimum participants (5m)"
    )
    start.add_argument("--alias", help="the served model alias to roll the adapter out with")
    start.add_argument("--adapter-name", help="the adapter's name (default fl-<job id>)")
    status = actions.add_parser("status", parents=[common], help="a job's state and rounds")
    status.add_argument("job_id", metavar="JOB")
    listed = actions.add_parser("list", parents=[common], help="list jobs, newest first")
    listed.add_argument("--state", choices=[s.value for s in JobState])
    cancel = actions.add_parser("cancel", parents=[common], help="cancel a job")
    cancel.add_argument("job_id", metavar="JOB")


def start_body(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /fl/jobs body from `outpost fl start` options; only what was given."""
    body: dict[str, Any] = {"model": args.model, "dataset": args.dataset}
    if args.agents:
        body["agents"] = args.agents
    elif args.site:
        body["site"] = args.site
    else:
        body["labels"] = dict(args.label)
    if args.site_dataset:
        body["datasets"] = dict(args.site_dataset)
    for option, field in (
        ("rounds", "rounds"),
        ("local_steps", "local_steps"),
        ("batch_size", "batch_size"),
        ("max_seq_len", "max_seq_len"),
        ("learning_rate", "learning_rate"),
        ("aggregation", "aggregation"),
        ("min_participants", "min_participants"),
        ("participant_wait", "participant_wait_s"),
    ):
        if getattr(args, option) is not None:
            body[field] = getattr(args, option)
    _group(body, "lora", {"rank": args.rank, "alpha": args.alpha, "targets": args.targets})
    _group(body, "gate", {"min_heldout_loss_drop_pct": args.gate_loss_drop})
    _group(body, "training", {"threads": args.threads, "nice": args.nice})
    _group(body, "deploy", {"alias": args.alias, "adapter_name": args.adapter_name})
    if (args.dp_noise is None) != (args.dp_clip is None):
        raise UsageError("differential privacy needs both --dp-noise and --dp-clip")
    if args.dp_noise is not None:
        body["differential_privacy"] = {
            "noise_multiplier": args.dp_noise,
            "clipping_norm": args.dp_clip,
        }
    return body


def _group(body: dict[str, Any], name: str, values: Mapping[str, Any]) -> None:
    given = {k: v for k, v in values.items() if v is not None}
    if given:
        body[name] = given


def run_federated_command(client: Client, args: argparse.Namespace) -> None:
    if args.action == "start":
        job: dict[str, Any] = client.call("POST", "/fl/jobs", start_body(args))
        if args.json:
            print_json(job)
            return
        print(job["id"])
        print(
            f"federated job {job['id']} is {clean(job['state'])}: {len(job['participants'])} "
            f"participant(s), {job['rounds']} round(s) on {clean(job['model']['ref'])}",
            file=sys.stderr,
        )
        for skipped in job["skipped"]:
            print(
                f"skipped {clean(skipped['name'])} ({skipped['agent_id']}): "
                f"{clean(skipped['reason'])}",
                file=sys.stderr,
            )
    elif args.action == "status":
        job = client.call("GET", f"/fl/jobs/{segment(args.job_id)}")
        if args.json:
            print_json(job)
            return
        show_job(job)
    elif args.action == "list":
        jobs = client.call("GET", "/fl/jobs", state=args.state)["jobs"]
        if args.json:
            print_json(jobs)
            return
        table(
            ("ID", "STATE", "ROUND", "MODEL", "PARTICIPANTS", "CREATED", "BY"),
            [
                [
                    *(j["id"], j["state"], f"{j['round']}/{j['rounds']}", j["model"]["ref"]),
                    *(len(j["participants"]), j["created_at"], j["created_by"]),
                ]
                for j in jobs
            ],
        )
    elif args.action == "cancel":
        job = client.call("POST", f"/fl/jobs/{segment(args.job_id)}/cancel")
        if args.json:
            print_json(job)
            return
        print(f"cancelled federated job {job['id']}")
    else:  # argparse allows only the actions above
        raise UsageError(f"unknown action {args.action!r}")


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"  # not reached


def show_job(job: Mapping[str, Any]) -> None:
    """State, round k/n, participants, per-round loss per site and bytes moved."""
    print(f"job {job['id']}: {clean(job['state'])}, round {job['round']}/{job['rounds']}")
    if job["reason"]:
        print(f"reason: {clean(job['reason'])}")
    print(f"model: {clean(job['model']['ref'])} ({job['model']['digest']})")
    if job["adapter_model_id"] is not None:
        print(f"adapter: registered model {job['adapter_model_id']}")
    names = {p["agent_id"]: p["name"] for p in job["participants"]}
    print(f"participants ({len(job['participants'])}, at least {job['min_participants']}):")
    table(
        ("AGENT", "NAME", "SITE", "DATASET"),
        [[p["agent_id"], p["name"], p["site"], p["dataset"]] for p in job["participants"]],
    )
    for skipped in job["skipped"]:
        print(
            f"skipped {clean(skipped['name'])} ({skipped['agent_id']}): {clean(skipped['reason'])}"
        )
    reports: Sequence[Mapping[str, Any]] = job.get("round_reports", [])
    if not reports:
        return
    rows = []
    for report in reports:
        for agent_id, site in sorted(report["sites"].items()):
            rows.append(
                [
                    *(report["round"], report["phase"], names.get(agent_id, agent_id)),
                    *(_number(site.get("train_loss")), _number(site.get("heldout_loss"))),
                    site.get("examples"),
                ]
            )
        for agent_id, why in sorted(report["dropped"].items()):
            rows.append(
                [
                    report["round"],
                    report["phase"],
                    names.get(agent_id, agent_id),
                    "dropped",
                    clean(why),
                    "-",
                ]
            )
    table(("ROUND", "PHASE", "AGENT", "TRAIN_LOSS", "HELDOUT_LOSS", "EXAMPLES"), rows)
    down = sum(int(r["bytes_down"]) for r in reports)
    up = sum(int(r["bytes_up"]) for r in reports)
    print(f"bytes moved: {_bytes(down)} down, {_bytes(up)} up")
