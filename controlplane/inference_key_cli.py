"""`outpost inference-keys ...`: create, list and revoke the keys callers of the OpenAI API use."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from controlplane.cli_client import Client, UsageError, clean, print_json, table

MAX_ID = 2**63 - 1


def add_inference_key_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    keys = commands.add_parser(
        "inference-keys", help="keys for callers of the OpenAI endpoints (role and team)"
    )
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    created = actions.add_parser(
        "create", parents=[common], help="create a key (shown only this once)"
    )
    created.add_argument("name", help="what the key is for, e.g. the application")
    created.add_argument("--role", required=True, help="the routing policy's role")
    created.add_argument("--team", required=True, help="the caller's team")
    listed = actions.add_parser("list", parents=[common], help="list keys (never the keys)")
    listed.add_argument("--all", action="store_true", help="also revoked keys")
    revoked = actions.add_parser("revoke", parents=[common], help="revoke a key")
    revoked.add_argument("key_id", metavar="ID", type=_key_id)


def _key_id(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        raise argparse.ArgumentTypeError(f"an inference key id is a number from 1: {text!r}")
    return int(text)


def run_inference_key_command(client: Client, args: argparse.Namespace) -> None:
    if args.action == "create":
        body = {"name": args.name, "role": args.role, "team": args.team}
        created: dict[str, Any] = client.call("POST", "/inference-keys", body)
        if args.json:
            print_json(created)
            return
        print(created["key"])
        print(
            f"inference key {created['id']} ({clean(created['name'])}): role "
            f"{clean(created['role'])}, team {clean(created['team'])}; "
            "it is shown only this once",
            file=sys.stderr,
        )
        for warning in created.get("warnings", []):
            print(f"warning: {clean(warning)}", file=sys.stderr)
    elif args.action == "list":
        include = "true" if args.all else None
        keys = client.call("GET", "/inference-keys", include_revoked=include)["inference_keys"]
        if args.json:
            print_json(keys)
            return
        table(
            ("ID", "NAME", "PREFIX", "ROLE", "TEAM", "CREATED", "BY", "REVOKED"),
            [
                [
                    *(k["id"], k["name"], k["prefix"], k["role"], k["team"]),
                    *(k["created_at"], k["created_by"], k["revoked_at"]),
                ]
                for k in keys
            ],
        )
    elif args.action == "revoke":
        client.call("DELETE", f"/inference-keys/{args.key_id}")
        if not args.json:
            print(f"revoked inference key {args.key_id}")
    else:  # argparse allows only the actions above
        raise UsageError(f"unknown action {args.action!r}")
