"""`outpost models ...` and `outpost rollout status`: the registry and rollouts over REST."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from controlplane.cli_client import (
    Client,
    UsageError,
    clean,
    label_pair,
    print_json,
    table,
)

UPLOAD_BLOCK_BYTES = 1024 * 1024


def add_model_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    models = commands.add_parser("models", help="model registry and assignments")
    actions = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    imported = actions.add_parser(
        "import", parents=[common], help="upload a GGUF model or LoRA adapter file"
    )
    imported.add_argument("path", type=Path)
    imported.add_argument("--name", help="registry name (default: from the file name)")
    imported.add_argument("--version", help="version (default: the next number)")
    imported.add_argument(
        "--server-path",
        action="store_true",
        help="PATH is on the control plane host: import it there (admin) instead of uploading",
    )
    listed = actions.add_parser("list", parents=[common], help="list registered models, adapters")
    listed.add_argument("--kind", choices=("model", "adapter"), help="only models or adapters")
    actions.add_parser("show", parents=[common], help="show one model").add_argument("ref")
    actions.add_parser(
        "delete", parents=[common], help="delete an unassigned model or adapter"
    ).add_argument("ref")
    assign = actions.add_parser(
        "assign", parents=[common], help="serve a model on an agent, a site or labelled agents"
    )
    assign.add_argument("model", help="name, name@version or sha256:<hex>")
    target = assign.add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", help="agent id")
    target.add_argument("--site", help="every agent of this site")
    target.add_argument(
        "--selector", type=label_pair, action="append", help="k=v; repeatable (all must match)"
    )
    assign.add_argument("--alias", help="name clients use (default: the model's name)")
    assign.add_argument("--context-length", type=int)
    assign.add_argument("--gpu-layers", type=int, help="-1: all")
    assign.add_argument("--threads", type=int, help="0: one per core")
    assign.add_argument("--queue-depth", type=int)
    assign.add_argument(
        "--adapter",
        type=adapter_pair,
        action="append",
        metavar="NAME=REF",
        help="serve a registered LoRA adapter with the model, requested as ALIAS:NAME; repeatable",
    )
    actions.add_parser("assignments", parents=[common], help="list assignments")
    unassign = actions.add_parser("unassign", parents=[common], help="remove an assignment")
    unassign.add_argument("assignment_id", type=int)

    rollout = commands.add_parser("rollout", help="where each assignment stands on each agent")
    rollout_actions = rollout.add_subparsers(dest="action", required=True, metavar="ACTION")
    rollout_actions.add_parser("status", parents=[common], help="rollout status per agent")


def run_model_command(client: Client, args: argparse.Namespace) -> None:
    if args.command == "rollout":
        _rollout_status(client, args)
    elif args.action == "import":
        _import(client, args)
    elif args.action == "list":
        models = client.call("GET", "/models", kind=args.kind)["models"]
        if args.json:
            print_json(models)
            return
        table(
            ("NAME", "VERSION", "KIND", "DIGEST", "SIZE", "ARCH", "QUANT", "CONTEXT", "CREATED"),
            [
                [
                    *(m["name"], m["version"], m["kind"], m["digest"][:19]),
                    *(_size(m["size_bytes"]), m["architecture"], m["quantization"]),
                    *(m["context_length"], m["created_at"]),
                ]
                for m in models
            ],
        )
    elif args.action == "show":
        model = client.call("GET", f"/models/{_ref(args.ref)}")
        if args.json:
            print_json(model)
            return
        for key, value in model.items():
            if key != "chat_template":
                print(f"{key + ':':<18}{clean(value)}")
    elif args.action == "delete":
        client.call("DELETE", f"/models/{_ref(args.ref)}")
        if not args.json:
            print(f"deleted model {clean(args.ref)}")
    elif args.action == "assign":
        _assign(client, args)
    elif args.action == "assignments":
        _assignments(client, args)
    else:
        client.call("DELETE", f"/assignments/{args.assignment_id}")
        if not args.json:
            print(f"removed assignment {args.assignment_id}")


def adapter_pair(text: str) -> tuple[str, str]:
    name, sep, ref = text.partition("=")
    if not sep or not name or not ref:
        raise argparse.ArgumentTypeError(f"invalid adapter {text!r}: use NAME=REF")
    return name, ref


def _ref(ref: str) -> str:
    if not ref or not ref.isprintable() or len(ref) > 200:
        raise UsageError(f"invalid model reference {ref!r}")
    return quote(ref, safe="")


def _import(client: Client, args: argparse.Namespace) -> None:
    path: Path = args.path
    if args.server_path:
        body = {"path": str(path), "name": args.name, "version": args.version}
        model = client.call(
            "POST", "/models/import", {k: v for k, v in body.items() if v is not None}
        )
    else:
        try:
            handle = path.open("rb")
            size = path.stat().st_size
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
        filename = "".join(c for c in path.name if c.isprintable() and c not in '"\\') or "model"
        with handle, _progress(show=not args.json) as progress:
            task = progress.add_task(f"uploading {filename}", total=size)

            def blocks() -> Iterator[bytes]:
                while block := handle.read(UPLOAD_BLOCK_BYTES):
                    progress.advance(task, len(block))
                    yield block

            model = client.upload(
                "/models", blocks(), size, filename, name=args.name, version=args.version
            )
    if args.json:
        print_json(model)
        return
    what = ""
    if model.get("kind") == "adapter":
        what = f"LoRA adapter for {clean(model['architecture'])} models "
    print(
        f"imported {what}{clean(model['name'])}@{clean(model['version'])} "
        f"({clean(model['digest'])}, {_size(model['size_bytes'])})"
    )


def _progress(*, show: bool) -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        disable=not show or not sys.stderr.isatty(),
        console=None,
        transient=True,
    )


def _assign(client: Client, args: argparse.Namespace) -> None:
    body: dict[str, Any] = {"model": args.model}
    if args.agent is not None:
        body["agent"] = args.agent
    elif args.site is not None:
        body["site"] = args.site
    else:
        selector = dict(args.selector)
        if len(selector) != len(args.selector):
            raise UsageError("a selector key is given twice")
        body["selector"] = selector
    for name in ("alias", "context_length", "gpu_layers", "threads", "queue_depth"):
        if getattr(args, name) is not None:
            body[name] = getattr(args, name)
    if args.adapter:
        adapters = dict(args.adapter)
        if len(adapters) != len(args.adapter):
            raise UsageError("an adapter name is given twice")
        body["adapters"] = adapters
    view = client.call("POST", "/assignments", body)
    if args.json:
        print_json(view)
        return
    model = view["model"]
    print(
        f"assignment {view['id']}: {clean(model['name'])}@{clean(model['version'])} as "
        f"{clean(view['alias'])} on {clean(view['target']['kind'])} "
        f"{clean(view['target']['value'])} ({len(view['agents'])} agent(s) now)"
    )
    for adapter in view.get("adapters", []):
        print(
            f"  adapter {clean(view['alias'])}:{clean(adapter['name'])}: "
            f"{clean(adapter['ref'])} (sha256:{clean(adapter['sha256'])[:12]})"
        )
    if view["fit_unchecked"]:
        print(
            "not checked for fit (no capacity reported yet): "
            + ", ".join(clean(a) for a in view["fit_unchecked"]),
            file=sys.stderr,
        )


def _assignments(client: Client, args: argparse.Namespace) -> None:
    views = client.call("GET", "/assignments")["assignments"]
    if args.json:
        print_json(views)
        return
    table(
        ("ID", "MODEL", "ALIAS", "TARGET", "CONTEXT", "AGENTS", "ADAPTERS"),
        [
            [
                v["id"],
                f"{v['model']['name']}@{v['model']['version']}",
                v["alias"],
                f"{v['target']['kind']}:{v['target']['value']}",
                v["context_length"],
                len(v["agents"]),
                ",".join(f"{a['name']}={a['ref']}" for a in v.get("adapters", [])),
            ]
            for v in views
        ],
    )


def _rollout_status(client: Client, args: argparse.Namespace) -> None:
    rows = client.call("GET", "/rollouts")["rollouts"]
    if args.json:
        print_json(rows)
        return
    table(
        ("AGENT", "ALIAS", "MODEL", "STATE", "PROGRESS", "DETAIL"),
        [
            [
                r["agent_name"] or r["agent_id"],
                r["alias"],
                r["model"],
                r["state"],
                _transfer(r),
                r["error"],
            ]
            for r in rows
        ],
    )


def _transfer(row: dict[str, Any]) -> str:
    total = int(row.get("bytes_total") or 0)
    if row["state"] not in ("downloading", "verifying") or total <= 0:
        return ""
    done = int(row.get("bytes_done") or 0)
    rate = float(row.get("rate_bytes_per_s") or 0.0)
    return f"{100 * done / total:.0f}% of {_size(total)} at {_size(int(rate))}/s"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
