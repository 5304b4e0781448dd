"""`outpost` command line: `serve` the control plane, and admin commands over its REST API."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from controlplane.bundle_cli import add_bundle_commands, run_bundle_command
from controlplane.cli_client import (
    ApiFailure,
    Client,
    UsageError,
    clean,
    label_pair,
    labels_text,
    print_json,
    segment,
    table,
)
from controlplane.federated_cli import add_federated_commands, run_federated_command
from controlplane.inference_key_cli import add_inference_key_commands, run_inference_key_command
from controlplane.model_cli import add_model_commands, run_model_command
from controlplane.policy_cli import (
    add_policy_commands,
    run_offline_policy_command,
    run_policy_command,
    runs_offline,
)
from controlplane.settings import ControlPlaneSettings
from controlplane.user_cli import add_user_commands, run_user_command

DEFAULT_URL = "http://127.0.0.1:8700"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MODEL_OPTIONS = ("context_length", "gpu_layers", "queue_depth")
_DURATION = re.compile(r"(\d+)([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_MODEL_OPTION = re.compile(rf"({'|'.join(MODEL_OPTIONS)})=(-?\d+)")


def duration(text: str) -> timedelta:
    """`24h`, `90m`, `3600s`, `2d` or plain seconds."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: use e.g. 24h, 90m, 3600s")
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def label_change(text: str) -> tuple[str, str | None]:
    """`key=value` sets a label, `key-` removes it."""
    if "=" not in text and text.endswith("-") and len(text) > 1:
        return text[:-1], None
    try:
        return label_pair(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"invalid label {text!r}: use key=value to set or key- to remove"
        ) from None


def model_spec(text: str) -> dict[str, Any]:
    """`alias=PATH[,context_length=N,gpu_layers=N,queue_depth=N]` (the path may hold commas)."""
    alias, sep, rest = text.partition("=")
    if not sep or not alias or not rest:
        raise argparse.ArgumentTypeError(
            f"invalid model {text!r}: use alias=PATH[,context_length=N,gpu_layers=N,queue_depth=N]"
        )
    parts = rest.split(",")
    options: dict[str, int] = {}
    while len(parts) > 1 and (match := _MODEL_OPTION.fullmatch(parts[-1].strip())):
        if match.group(1) in options:
            raise argparse.ArgumentTypeError(f"model {alias!r}: {match.group(1)} given twice")
        options[match.group(1)] = int(match.group(2))
        parts.pop()
    path = ",".join(parts)
    if not path:
        raise argparse.ArgumentTypeError(f"model {alias!r}: the path is empty")
    return {"alias": alias, "path": path, **dict(reversed(list(options.items())))}


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {value}")
    return value


def log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"log level must be one of {', '.join(LOG_LEVELS)}")
    return text.upper()


def build_parser() -> argparse.ArgumentParser:
    # Global options work before or after the subcommand; SUPPRESS keeps a later default
    # from overwriting an earlier value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS, help="control plane REST URL")
    common.add_argument("--api-key", default=argparse.SUPPRESS, help="API key")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    parser = argparse.ArgumentParser(prog="outpost", description="Outpost control plane")
    parser.add_argument(
        "--url", help=f"control plane REST URL (env OUTPOST_URL, default {DEFAULT_URL})"
    )
    parser.add_argument("--api-key", help="API key (env OUTPOST_API_KEY)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the control plane")
    serve.add_argument("--data-dir", type=Path, required=True, help="CA, keys and SQLite db")
    serve.add_argument("--db", help="database URL (default: SQLite in the data dir)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--http-port", type=port, help="REST API port (default 8700)")
    serve.add_argument("--grpc-port", type=port, help="enrollment gRPC port (default 8701)")
    serve.add_argument("--mtls-port", type=port, help="mutual-TLS gRPC port (default 8702)")
    serve.add_argument(
        "--fleet-port", type=port, help="Flower Fleet API relay, mutual TLS (default 8703)"
    )
    serve.add_argument(
        "--advertise-host",
        action="append",
        help="name agents use to reach this host; repeatable (default localhost, 127.0.0.1)",
    )
    serve.add_argument("--insecure", action="store_true", help="plain-text gRPC (demo only)")
    serve.add_argument(
        "--insecure-cookies",
        action="store_true",
        help="console cookies without Secure, for plain HTTP by another name than localhost",
    )
    serve.add_argument("--log-level", type=log_level, help="DEBUG, INFO, WARNING or ERROR")

    tokens = commands.add_parser("tokens", help="join tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    create = tokens.add_parser("create", parents=[common], help="create a join token")
    create.add_argument("--site", help="site the enrolling agent belongs to")
    create.add_argument(
        "--label", type=label_pair, action="append", default=[], help="key=value, repeatable"
    )
    create.add_argument("--ttl", type=duration, help="lifetime: 24h, 90m, 3600s (default 24h)")
    list_tokens = tokens.add_parser("list", parents=[common], help="list unused join tokens")
    list_tokens.add_argument("--all", action="store_true", help="include used tokens")
    revoke_token = tokens.add_parser("revoke", parents=[common], help="revoke a join token")
    revoke_token.add_argument("token_id")

    agents = commands.add_parser("agents", help="enrolled agents").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = agents.add_parser("list", parents=[common], help="list agents")
    listing.add_argument("--site", help="only agents of this site")
    agents.add_parser("show", parents=[common], help="show one agent").add_argument("agent_id")
    agents.add_parser("revoke", parents=[common], help="revoke an agent").add_argument("agent_id")
    label = agents.add_parser("label", parents=[common], help="set (k=v) or remove (k-) labels")
    label.add_argument("agent_id")
    label.add_argument("labels", type=label_change, nargs="+", metavar="LABEL")
    label.add_argument("--replace", action="store_true", help="replace all labels")
    assign = agents.add_parser("assign", parents=[common], help="set the models an agent runs")
    assign.add_argument("agent_id")
    assign.add_argument(
        "--model",
        type=model_spec,
        action="append",
        default=[],
        metavar="ALIAS=PATH[,context_length=N,gpu_layers=N,queue_depth=N]",
        help="a model to run; repeatable; the list replaces the current one",
    )
    assign.add_argument("--clear", action="store_true", help="run no models")
    add_model_commands(commands, common)
    add_policy_commands(commands, common)
    add_inference_key_commands(commands, common)
    add_user_commands(commands, common)
    add_federated_commands(commands, common)
    add_bundle_commands(commands)
    return parser


def build_settings(args: argparse.Namespace) -> ControlPlaneSettings:
    settings = ControlPlaneSettings(data_dir=args.data_dir)
    overrides: dict[str, Any] = {
        "database_url": args.db,
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "mtls_port": args.mtls_port,
        "fleet_port": args.fleet_port,
        "advertise_hosts": tuple(args.advertise_host) if args.advertise_host else None,
        "insecure": args.insecure or None,
        "log_level": args.log_level,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.insecure_cookies:
        settings = replace(settings, console=replace(settings.console, secure_cookies=False))
    ports = [settings.http_port, settings.grpc_port, settings.mtls_port, settings.fleet_port]
    taken = [p for p in ports if p != 0 and ports.count(p) > 1]
    if taken:
        raise UsageError(f"port {taken[0]} is given for two listeners")
    return settings


def _tokens(client: Client, args: argparse.Namespace) -> None:
    if args.action == "create":
        body: dict[str, Any] = {"labels": dict(args.label)}
        if args.site is not None:
            body["site"] = args.site
        if args.ttl is not None:
            body["ttl_seconds"] = int(args.ttl.total_seconds())
        token = client.call("POST", "/tokens", body)
        if args.json:
            print_json(token)
            return
        print(token["token"])
        print(
            f"join token {token['id']} expires at {token['expires_at']}; "
            "it is shown only this once",
            file=sys.stderr,
        )
    elif args.action == "list":
        include_used = "true" if args.all else None
        tokens = client.call("GET", "/tokens", include_used=include_used)["tokens"]
        if args.json:
            print_json(tokens)
            return
        table(
            ("ID", "SITE", "LABELS", "CREATED", "EXPIRES", "USED BY"),
            [
                [
                    *(t["id"], t["site"], labels_text(t["labels"])),
                    *(t["created_at"], t["expires_at"], t["used_by_agent_id"]),
                ]
                for t in tokens
            ],
        )
    else:
        client.call("DELETE", f"/tokens/{segment(args.token_id)}")
        if not args.json:
            print(f"revoked join token {args.token_id}")


def _show_agent(agent: Mapping[str, Any], desired: Mapping[str, Any]) -> None:
    for key in ("id", "name", "site", "state", "version", "enrolled_at", "last_seen_at"):
        print(f"{key + ':':<20}{clean(agent.get(key)) or '-'}")
    if agent.get("revoked_at"):
        print(f"{'revoked_at:':<20}{clean(agent['revoked_at'])}")
    print(f"{'labels:':<20}{clean(labels_text(agent.get('labels')))}")
    generations = f"{agent.get('observed_generation')} / {agent.get('desired_generation')}"
    print(f"{'generation:':<20}{generations} (observed / desired)")
    print("desired models:")
    for model in desired.get("models", []):
        options = ", ".join(f"{k}={model[k]}" for k in MODEL_OPTIONS if k in model)
        source = model.get("model") or model["path"]
        if model.get("digest"):
            source = f"{source} ({model['digest'][:19]}…)"
        print(f"  {clean(model['alias'])} = {clean(source)} ({options})")
    if agent.get("status"):
        print("status:")
        for item in agent["status"]:
            error = f": {item['error']}" if item.get("error") else ""
            print(
                f"  {clean(item['kind'])} {clean(item['name'])} {clean(item['state'])}"
                f"{clean(error)}"
            )


def _agents(client: Client, args: argparse.Namespace) -> None:
    if args.action == "list":
        agents = client.call("GET", "/agents", site=args.site)["agents"]
        if args.json:
            print_json(agents)
            return
        table(
            ("ID", "NAME", "SITE", "LABELS", "STATE", "GENERATION"),
            [
                [
                    *(a["id"], a["name"], a["site"], labels_text(a["labels"]), a["state"]),
                    f"{a['observed_generation']}/{a['desired_generation']}",
                ]
                for a in agents
            ],
        )
        return
    agent_path = f"/agents/{segment(args.agent_id)}"
    if args.action == "show":
        agent = client.call("GET", agent_path)
        desired = client.call("GET", f"{agent_path}/desired-state")
        if args.json:
            print_json({**agent, "desired_state": desired})
        else:
            _show_agent(agent, desired)
    elif args.action == "revoke":
        agent = client.call("POST", f"{agent_path}/revoke")
        if args.json:
            print_json(agent)
        else:
            print(f"revoked agent {args.agent_id}")
    elif args.action == "label":
        labels: dict[str, str] = {}
        if not args.replace:
            labels = dict(client.call("GET", agent_path)["labels"])
        for key, value in args.labels:
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        agent = client.call("PUT", f"{agent_path}/labels", {"labels": labels})
        if args.json:
            print_json(agent)
        else:
            print(f"agent {args.agent_id}: labels {clean(labels_text(agent['labels']))}")
    else:
        if bool(args.model) == bool(args.clear):
            raise UsageError("agents assign: give --model (repeatable) or --clear")
        desired = client.call("PUT", f"{agent_path}/desired-state/models", {"models": args.model})
        if args.json:
            print_json(desired)
        else:
            aliases = ", ".join(m["alias"] for m in desired["models"]) or "none"
            print(
                f"agent {args.agent_id}: desired generation {desired['generation']}, "
                f"models: {clean(aliases)}"
            )


def _run_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = args.url or environ.get("OUTPOST_URL") or DEFAULT_URL
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--url must be an http:// or https:// URL, got {url!r}")
    api_key = (args.api_key or environ.get("OUTPOST_API_KEY") or "").strip()
    if not api_key:
        raise UsageError("no API key: pass --api-key or set OUTPOST_API_KEY")
    if not api_key.isascii() or not api_key.isprintable():
        raise UsageError("the API key must be printable ASCII")
    client = Client(url, api_key)
    try:
        if args.command in ("models", "rollout"):
            run_model_command(client, args)
        elif args.command == "policy":
            run_policy_command(client, args)
        elif args.command == "inference-keys":
            run_inference_key_command(client, args)
        elif args.command == "users":
            run_user_command(client, args)
        elif args.command == "fl":
            run_federated_command(client, args)
        else:
            (_tokens if args.command == "tokens" else _agents)(client, args)
    except (KeyError, TypeError, IndexError) as exc:
        raise ApiFailure(f"unexpected answer from {client.url}: missing {exc}") from exc
    finally:
        client.close()
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse printed usage (status 2) or help (status 0)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if args.command == "bundle":  # works on the data directory: no server needed
            return run_bundle_command(args)
        if args.command == "policy" and runs_offline(args):  # the engine is shared code
            return run_offline_policy_command(args)
        if args.command == "serve":
            from controlplane.server import serve  # grpc, pki, database: only for serving

            return serve(build_settings(args))
        return _run_command(args, environ)
    except UsageError as exc:
        print(f"outpost: error: {exc}", file=sys.stderr)
        return 2
    except ApiFailure as exc:  # the message may come from the server: no control characters
        print(f"outpost: error: {clean(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
