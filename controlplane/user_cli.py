"""`outpost users ...`: console users: create, list, set a password, disable (admin only)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from controlplane.auth import Role
from controlplane.cli_client import Client, UsageError, clean, print_json, segment, table


def add_user_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    users = commands.add_parser("users", help="console users, their roles and passwords")
    actions = users.add_subparsers(dest="action", required=True, metavar="ACTION")
    created = actions.add_parser(
        "create", parents=[common], help="create a user (a generated password is shown once)"
    )
    created.add_argument("name")
    created.add_argument("--role", required=True, choices=[r.value for r in Role])
    created.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    actions.add_parser("list", parents=[common], help="list users (never their passwords)")
    password = actions.add_parser(
        "set-password", parents=[common], help="set a new password (generated unless given)"
    )
    password.add_argument("name")
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    disabled = actions.add_parser("disable", parents=[common], help="disable a user")
    disabled.add_argument("name")


def read_password(stream: TextIO) -> str:
    """The first line of `stream` without its line ending."""
    password = stream.readline().rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin: standard input holds no password")
    return password


def _show_password(answer: dict[str, Any], what: str) -> None:
    if "password" in answer:
        print(answer["password"])
        print(f"{what}; the password is shown only this once", file=sys.stderr)
    else:
        print(what, file=sys.stderr)


def run_user_command(client: Client, args: argparse.Namespace, stdin: TextIO | None = None) -> None:
    if args.action == "list":
        users = client.call("GET", "/users")["users"]
        if args.json:
            print_json(users)
            return
        table(
            ("NAME", "ROLE", "PASSWORD", "CREATED", "DISABLED"),
            [
                [
                    *(u["name"], u["role"], "set" if u["has_password"] else "-"),
                    *(u["created_at"], u["disabled_at"]),
                ]
                for u in users
            ],
        )
        return
    body: dict[str, Any] = {}
    if getattr(args, "password_stdin", False):
        body["password"] = read_password(stdin or sys.stdin)
    if args.action == "create":
        answer = client.call("POST", "/users", {"name": args.name, "role": args.role, **body})
        what = f"user {clean(answer['name'])} created with role {clean(answer['role'])}"
    elif args.action == "set-password":
        answer = client.call("PUT", f"/users/{segment(args.name)}/password", body)
        what = f"user {clean(answer['name'])}: password set"
    elif args.action == "disable":
        answer = client.call("POST", f"/users/{segment(args.name)}/disable")
        what = f"user {clean(answer['name'])} disabled"
    else:  # argparse allows only the actions above
        raise UsageError(f"unknown action {args.action!r}")
    if args.json:
        print_json(answer)
    else:
        _show_password(answer, what)
