"""`outpost bundle create` and `outpost bundle public-key`: signed bundles for air-gapped sites."""

from __future__ import annotations

import argparse
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.bundle_format import BundleError
from common.errors import InvalidArgument, OutpostError
from controlplane.bundle_builder import BundleModel, BundleSummary, build_bundle
from controlplane.bundle_signing import BundleSigner, signing_directory

if TYPE_CHECKING:
    from controlplane.model_registry import ModelRegistry

DEFAULT_CONTEXT_LENGTH = 4096
DEFAULT_QUEUE_DEPTH = 16


def model_choice(text: str) -> tuple[str, str | None]:
    """`REF` or `REF=ALIAS`; REF is a name, name@version or sha256:<hex>."""
    ref, sep, alias = text.partition("=")
    if not ref or (sep and not alias):
        raise argparse.ArgumentTypeError(f"invalid model {text!r}: use REF or REF=ALIAS")
    return ref, alias or None


def _number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < -1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}")
    return value


def add_bundle_commands(subparsers: Any) -> None:
    """Adds `bundle create` and `bundle public-key` to `outpost`'s subcommands."""
    bundle = subparsers.add_parser("bundle", help="signed offline bundles for air-gapped sites")
    commands = bundle.add_subparsers(dest="bundle_command", required=True)

    create = commands.add_parser("create", help="write a signed bundle of registry models")
    create.add_argument("--data-dir", type=Path, required=True, help="the control plane's data")
    create.add_argument("--out", type=Path, required=True, help="bundle file to write")
    create.add_argument(
        "--model",
        type=model_choice,
        action="append",
        required=True,
        metavar="REF[=ALIAS]",
        help="name, name@version or sha256:<hex>, served as ALIAS (default: the name); repeatable",
    )
    create.add_argument("--db", help="database URL (default: sqlite:///DATA_DIR/outpost.db)")
    create.add_argument("--policy", type=Path, help="routing policy (a JSON object) to carry")
    create.add_argument("--wheels", type=Path, help="directory of the agent's *.whl files")
    create.add_argument("--context-length", type=_number, help="context size per model")
    create.add_argument("--gpu-layers", type=_number, default=0, help="-1: all layers")
    create.add_argument("--threads", type=_number, default=0, help="0: one per CPU core")
    create.add_argument("--queue-depth", type=_number, default=DEFAULT_QUEUE_DEPTH)
    create.add_argument("--json", action="store_true", help="machine-readable output")

    public_key = commands.add_parser("public-key", help="print the bundle-signing public key")
    public_key.add_argument("--data-dir", type=Path, required=True, help="the control plane's data")


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"[:255]


def resolve_models(args: argparse.Namespace, registry: ModelRegistry) -> list[BundleModel]:
    """The registry models `--model` names, with their serving parameters and blob files."""
    models, aliases = [], set()
    for ref, alias in args.model:
        view = registry.get(ref)
        alias = alias or view.name
        if alias in aliases:
            raise InvalidArgument(f"the alias {alias} is given to two models")
        aliases.add(alias)
        trained = view.context_length or DEFAULT_CONTEXT_LENGTH
        models.append(
            BundleModel(
                alias=alias,
                sha256=view.sha256,
                size_bytes=view.size_bytes,
                name=view.name,
                version=view.version,
                blob=args.data_dir / "models" / "blobs" / view.sha256,  # ModelStore.path's layout
                context_length=args.context_length or min(DEFAULT_CONTEXT_LENGTH, trained),
                gpu_layers=args.gpu_layers,
                threads=args.threads,
                queue_depth=args.queue_depth,
            )
        )
    return models


def _print_summary(summary: BundleSummary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2))
        return
    print(f"wrote {summary.path} ({summary.size_bytes} bytes), sequence {summary.sequence}")
    for model in summary.models:
        print(f"  {model.alias}: {model.name}@{model.version} sha256:{model.sha256}")
    if summary.policy:
        print("  policy: policy.json")
    for wheel in summary.wheels:
        print(f"  {wheel}")
    print(f"signed by key {summary.key_id}")


def _create(args: argparse.Namespace) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from controlplane.audit import AuditLog
    from controlplane.db.database import Database
    from controlplane.model_registry import ModelRegistry

    data_dir: Path = args.data_dir
    if args.db is None and not (data_dir / "outpost.db").is_file():
        raise BundleError(f"no control-plane database in {data_dir} (is --data-dir right?)")
    db = Database(args.db or f"sqlite:///{data_dir / 'outpost.db'}")
    actor = _actor()
    try:
        audit = AuditLog(db)
        # No ModelStore here: constructing one clears the uploads in progress of a running server.
        models = resolve_models(args, ModelRegistry(db, None, audit))
        signer = BundleSigner.load_or_create(signing_directory(data_dir))
        summary = build_bundle(
            args.out, models, signer, actor=actor, policy=args.policy, wheels_dir=args.wheels
        )
        detail = {"sequence": summary.sequence, "models": [m.sha256 for m in summary.models]}
        audit.record_now(actor=actor, action="bundle.create", target=str(args.out), detail=detail)
    except SQLAlchemyError as error:
        raise BundleError(f"cannot read the model registry: {error}") from None
    finally:
        db.dispose()
    _print_summary(summary, args.json)


def run_bundle_command(args: argparse.Namespace) -> int:
    """Runs `outpost bundle ...`: 0 done, 2 refused (bad input), 1 failed (I/O)."""
    try:
        if not args.data_dir.is_dir():
            raise BundleError(f"--data-dir {args.data_dir} is not a directory")
        if args.bundle_command == "public-key":
            signer = BundleSigner.load_or_create(signing_directory(args.data_dir))
            sys.stdout.write(signer.public_key_pem.decode())
        else:
            _create(args)
        return 0
    except (BundleError, OutpostError) as error:
        print(f"outpost: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"outpost: error: {error}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """`python -m controlplane.bundle_cli bundle ...`: these commands before `outpost` has them."""
    parser = argparse.ArgumentParser(prog="outpost")
    add_bundle_commands(parser.add_subparsers(dest="command", required=True))
    return run_bundle_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
