"""`outpost policy ...`: validate (offline), apply, show, versions, explain the routing policy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from common.errors import InvalidArgument
from common.policy.document import MAX_DOCUMENT_BYTES, PolicyError
from common.policy.routing import PolicyEngine
from controlplane.cli_client import ApiFailure, Client, UsageError, clean, print_json, table
from controlplane.policy_explain import (
    ExplainRequest,
    decision_view,
    explain,
    explanation_text,
    problem_view,
    read_explain_request,
)
from controlplane.policy_store import validate

DOCUMENT_TYPE = "application/yaml"  # YAML is a superset of JSON: either reads as YAML


def add_policy_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    policy = commands.add_parser("policy", help="the routing policy")
    actions = policy.add_subparsers(dest="action", required=True, metavar="ACTION")
    validated = actions.add_parser(
        "validate", parents=[common], help="check a policy file (offline: no server needed)"
    )
    validated.add_argument("file", type=Path)
    applied = actions.add_parser("apply", parents=[common], help="make a policy file live")
    applied.add_argument("file", type=Path)
    shown = actions.add_parser("show", parents=[common], help="show the live policy")
    shown.add_argument("--version", type=int, help="an earlier version instead")
    actions.add_parser("versions", parents=[common], help="list applied versions")
    explained = actions.add_parser(
        "explain", parents=[common], help="how a prompt is classified and routed"
    )
    explained.add_argument("--role", required=True, help="the caller's role")
    explained.add_argument("--prompt", required=True, help="the prompt text")
    explained.add_argument("--team", help="the caller's team")
    explained.add_argument("--declared-level", help="the level the caller declares")
    explained.add_argument("--model", help="the model the caller asks for")
    explained.add_argument(
        "--file", type=Path, help="explain against this draft, locally (no server needed)"
    )


def runs_offline(args: argparse.Namespace) -> bool:
    """validate, and explain with --file, need no server (the engine is shared code)."""
    return args.action == "validate" or (args.action == "explain" and args.file is not None)


def read_document(path: Path) -> bytes:
    """The file's bytes, at most MAX_DOCUMENT_BYTES (ApiFailure: exit 1, pointing at it)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_DOCUMENT_BYTES + 1)
    except OSError as exc:
        raise ApiFailure(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ApiFailure(f"{path}: the file has more than {MAX_DOCUMENT_BYTES} bytes")
    return data


def _problem_line(source: str, problem: Mapping[str, Any], kind: str = "") -> str:
    line, column = problem.get("line", 0), problem.get("column", 0)
    where = f"{source}:{line}:{column}:" if line else f"{source}:"
    path = f" {problem.get('path')}:" if problem.get("path") else ""
    return clean(f"{where}{kind}{path} {problem.get('message', '')}")


def _report_problems(source: str, problems: Sequence[Mapping[str, Any]]) -> ApiFailure:
    for problem in problems:
        print(_problem_line(source, problem), file=sys.stderr)
    count = len(problems)
    return ApiFailure(f"{source} is not a valid policy ({count} problem{'s' * (count != 1)})")


def run_offline_policy_command(args: argparse.Namespace) -> int:
    if args.action == "validate":
        return _validate(args)
    document = read_document(args.file)
    try:
        engine = PolicyEngine(validate(document, str(args.file)).policy)
    except PolicyError as exc:
        raise _report_problems(str(args.file), [problem_view(p) for p in exc.problems]) from None
    view = decision_view(explain(engine, _explain_request(args)))
    _print_explanation(args, {"policy": {"version": None, "draft": True}, **view})
    return 0


def _validate(args: argparse.Namespace) -> int:
    source = str(args.file)
    try:
        checked = validate(read_document(args.file), source)
    except PolicyError as exc:
        problems = [problem_view(p) for p in exc.problems]
        if getattr(args, "json", False):
            print_json({"valid": False, "problems": problems})
            return 1
        raise _report_problems(source, problems) from None
    warnings = [problem_view(w) for w in checked.warnings]
    if getattr(args, "json", False):
        print_json({"valid": True, "digest": checked.policy.digest, "warnings": warnings})
        return 0
    for warning in warnings:
        print(_problem_line(source, warning, " warning:"))
    print(f"{clean(source)}: valid policy, digest sha256:{checked.policy.digest}")
    return 0


def _explain_request(args: argparse.Namespace) -> ExplainRequest:
    document: dict[str, Any] = {"prompt": args.prompt, "role": args.role}
    for field in ("team", "declared_level", "model"):
        if getattr(args, field) is not None:
            document[field] = getattr(args, field)
    try:
        return read_explain_request(document)
    except InvalidArgument as exc:  # a bad command line
        raise UsageError(str(exc)) from None


def _print_explanation(args: argparse.Namespace, view: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print_json(view)
        return
    policy = view.get("policy") or {}
    which = "draft" if policy.get("draft") else f"version {policy.get('version') or '-'}"
    print(f"policy:   {which}")
    for line in explanation_text(view):
        print(clean(line))


def run_policy_command(client: Client, args: argparse.Namespace) -> None:
    """The commands that ask the control plane."""
    if args.action == "apply":
        _apply(client, args)
    elif args.action == "show":
        if args.version is not None and args.version < 1:
            raise UsageError("--version must be 1 or more")
        path = "/policy" if args.version is None else f"/policy/versions/{args.version}"
        policy = client.call("GET", path)
        if args.json:
            print_json(policy)
            return
        print(f"version:  {policy['version']}")
        print(f"digest:   sha256:{clean(policy['digest'])}")
        print(f"applied:  {clean(policy['created_at'])} by {clean(policy['created_by'])}")
        print()
        document = policy["document"]
        sys.stdout.write(document if document.endswith("\n") else document + "\n")
    elif args.action == "versions":
        versions = client.call("GET", "/policy/versions")["versions"]
        if args.json:
            print_json(versions)
            return
        rows = [
            [v["version"], v["digest"][:16], v["created_at"], v["created_by"]] for v in versions
        ]
        table(("VERSION", "DIGEST", "APPLIED", "BY"), rows)
    else:  # explain against the live policy
        request = _explain_request(args)
        body: dict[str, Any] = {"prompt": args.prompt, "role": request.caller.role}
        body.update({k: getattr(args, k) for k in ("team", "declared_level", "model")})
        view = client.call("POST", "/policy/explain", {k: v for k, v in body.items() if v})
        _print_explanation(args, view)


def _apply(client: Client, args: argparse.Namespace) -> None:
    document = read_document(args.file)
    source = str(args.file)
    try:
        applied = client.send("PUT", "/policy", document, DOCUMENT_TYPE, source=source[:255])
    except ApiFailure as exc:
        if exc.problems:
            raise _report_problems(source, exc.problems) from None
        raise
    if args.json:
        print_json(applied)
        return
    for warning in applied.get("warnings", []):
        print(_problem_line(source, warning, " warning:"))
    digest = clean(applied["digest"])
    if applied["created"]:
        print(f"policy version {applied['version']} applied (sha256:{digest})")
    else:
        print(f"unchanged: version {applied['version']} is live with this policy (sha256:{digest})")
