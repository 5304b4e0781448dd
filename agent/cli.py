"""`outpost-agent` command line: serve models, fetch the demo model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.control.client import EnrollmentRefused
from agent.control.identity import CaPinError, IdentityError
from agent.demo_model import DemoModelError, default_cache_dir, ensure_demo_model
from agent.engine.protocol import ModelBackend
from agent.model_file import ModelFileError
from agent.settings import (
    AgentSettings,
    ModelSettings,
    SettingsError,
    apply_environment,
    apply_overrides,
    load_toml,
    resolve_threads,
    validate,
)
from common.bundle_format import BundleError
from common.certificates import normalize_fingerprint
from common.lifecycle import configure_logging, run_until_signalled
from common.systemd_notify import NOTIFY_ENVIRONMENT, SystemdNotifier

if TYPE_CHECKING:
    from agent.managed import ManagedAgent

log = logging.getLogger("outpost.agent")


def _add_server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (0: any free port)")
    parser.add_argument("--http-port", type=int, help="HTTP port (0: any free port)")
    parser.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask")
    parser.add_argument("--threads", type=int, help="CPU threads per model (0: all cores)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost-agent", description="Outpost edge agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve GGUF models over gRPC and OpenAI HTTP")
    _add_server_options(serve)
    serve.add_argument("--model", type=Path, help="GGUF model file to serve")
    serve.add_argument("--alias", help="name clients use for --model (default: file stem)")
    serve.add_argument("--context-length", type=int, help="context size for --model")
    serve.add_argument("--gpu-layers", type=int, help="layers of --model to offload to GPU")
    serve.add_argument("--queue-depth", type=int, help="requests that may wait for --model")
    serve.add_argument("--parallel", type=int, help="requests --model decodes together (default 4)")
    serve.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a LoRA adapter (GGUF) of --model; requests name it as model 'ALIAS:NAME'",
    )

    run = commands.add_parser("run", help="serve what the control plane assigns (managed)")
    _add_server_options(run)
    run.add_argument("--state-dir", type=Path, help="identity, certificates, last desired state")
    run.add_argument("--control-plane", help="HOST:PORT of the control plane (first start)")
    run.add_argument("--join-token", help="single-use join token (first start)")
    run.add_argument("--ca-fingerprint", help="sha256 of the control plane's CA (first start)")
    run.add_argument(
        "--peer-address",
        help="HOST:PORT where the site's agents fetch models from this one (default: not served)",
    )
    run.add_argument(
        "--inference-address",
        help="HOST:PORT where the control plane's gateway and the site's agents forward requests "
        "to this one's HTTP port (PORT 0: the port bound; default: it takes none)",
    )
    run.add_argument(
        "--download-rate-limit", type=int, help="bytes per second for model downloads (0: no limit)"
    )
    run.add_argument(
        "--datasets-dir",
        type=Path,
        help="federated fine-tuning datasets, one directory each (default: STATE_DIR/datasets)",
    )
    run.add_argument(
        "--insecure-control",
        action="store_const",
        const=True,
        help="plain-text link to a demo control plane (never in production)",
    )

    demo = commands.add_parser("demo-model", help="fetch, verify and print the demo model path")
    demo.add_argument("--cache-dir", type=Path, help="where to keep it")

    bundle = commands.add_parser("bundle", help="signed offline bundles (air-gapped sites)")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    bundle_import = bundle_commands.add_parser("import", help="verify and install a bundle")
    bundle_import.add_argument("file", type=Path, help="the bundle (outpost bundle create)")
    bundle_import.add_argument("--state-dir", type=Path, required=True, help="the agent's state")
    bundle_import.add_argument(
        "--public-key", type=Path, help="PEM of the control plane's bundle key (first import)"
    )
    bundle_import.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def build_settings(args: argparse.Namespace, environ: dict[str, str]) -> AgentSettings:
    settings = load_toml(args.config) if args.config else AgentSettings()
    settings = apply_environment(settings, environ)
    overrides = {
        "host": args.host,
        "grpc_port": args.grpc_port,
        "http_port": args.http_port,
        "max_tokens_limit": args.max_tokens_limit,
        "log_level": args.log_level,
    }
    if args.command == "run":
        overrides |= {
            "state_dir": args.state_dir,
            "control_plane": args.control_plane,
            "join_token": args.join_token,
            "ca_fingerprint": args.ca_fingerprint,
            "insecure_control": args.insecure_control,
            "peer_address": args.peer_address,
            "inference_address": args.inference_address,
            "download_rate_limit": args.download_rate_limit,
            "datasets_dir": args.datasets_dir,
        }
    settings = apply_overrides(settings, overrides)
    if args.command == "run":
        if settings.ca_fingerprint:
            try:
                normalize_fingerprint(settings.ca_fingerprint)
            except ValueError as exc:
                raise SettingsError(f"--ca-fingerprint: {exc}") from exc
        return validate(settings, managed=True)
    if args.model is not None:
        model = ModelSettings(path=args.model, alias=args.alias or args.model.stem)
        model_overrides = {
            "context_length": args.context_length,
            "gpu_layers": args.gpu_layers,
            "threads": args.threads,
            "queue_depth": args.queue_depth,
            "parallel": args.parallel,
        }
        model = replace(model, **{k: v for k, v in model_overrides.items() if v is not None})
        if args.adapter:
            model = replace(model, adapters=tuple(_adapter_pair(a) for a in args.adapter))
        settings = replace(settings, models=(*settings.models, model))
    return validate(settings)


def _adapter_pair(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise SettingsError(f"--adapter {text!r}: use NAME=PATH")
    return name, Path(path)


def _llama_backend(model: ModelSettings) -> ModelBackend:
    from agent.engine.llama_backend import LlamaCppBackend  # loads llama.cpp's shared library

    return LlamaCppBackend(
        model.path,
        context_length=model.context_length,
        gpu_layers=model.gpu_layers,
        threads=resolve_threads(model),
        batch_size=model.batch_size,
        parallel=model.parallel,
        adapters=dict(model.adapters),
    )


def _managed_companion(settings: AgentSettings, threads: int | None) -> ManagedAgent:
    from agent.control.client import ControlLinkSettings
    from agent.managed import ManagedAgent

    assert settings.state_dir is not None
    if settings.insecure_control:
        logging.getLogger("outpost.agent").warning(
            "PLAIN-TEXT CONTROL LINK: nothing between this agent and the control plane is "
            "encrypted or authenticated. Use this only for a local demo."
        )
    link = ControlLinkSettings(
        control_plane=settings.control_plane,
        join_token=settings.join_token,
        ca_fingerprint=settings.ca_fingerprint,
        insecure=settings.insecure_control,
    )
    defaults = ModelSettings(path=Path(), alias="model", threads=threads or 0)
    return ManagedAgent(
        settings.state_dir,
        link,
        defaults,
        telemetry_interval_s=settings.telemetry_interval_s,
        peer_address=settings.peer_address,
        inference_address=settings.inference_address,
        download_rate_limit=settings.download_rate_limit,
        datasets_dir=settings.datasets_dir or settings.state_dir / "datasets",
    )


def _serve(
    settings: AgentSettings,
    notifier: SystemdNotifier | None,
    companion: ManagedAgent | None = None,
) -> int:
    """Serves; a managed agent also enforces the routing policy and inference keys its
    control plane sends (`env:` key references of cloud targets read from this environment).
    `notifier`: systemd's (Type=notify), told when the agent is ready; it feeds the watchdog."""
    from agent.server import AgentServer

    server = AgentServer(
        settings,
        _llama_backend,
        companion,
        policy=companion,
        environ=dict(os.environ),
        notifier=notifier,
    )
    run_until_signalled(server)
    return 0


def _import_bundle(args: argparse.Namespace) -> int:
    import json

    from agent.bundle_import import import_bundle

    try:
        key = args.public_key.read_bytes() if args.public_key is not None else None
    except OSError as exc:
        raise BundleError(f"cannot read --public-key {args.public_key}: {exc.strerror}") from None
    result = import_bundle(args.file, args.state_dir, public_key_pem=key)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"imported bundle sequence {result.sequence} ({result.created_at}, {result.created_by})")
    for model in result.models:
        print(f"  {model.alias}: {model.model_name}@{model.model_version} sha256:{model.sha256}")
    if result.policy:
        print("  policy installed")
    for wheel in result.wheels:
        print(f"  {wheel}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.command == "bundle":
            return _import_bundle(args)
        if args.command == "demo-model":
            cache_dir = args.cache_dir or default_cache_dir(environ)
            print(ensure_demo_model(cache_dir))
            return 0
        settings = build_settings(args, environ)
        configure_logging(settings.log_level)
        notifier = SystemdNotifier.from_environ(environ)  # None when not run by systemd
        for name in NOTIFY_ENVIRONMENT:  # systemd's socket is not for the agent's children
            os.environ.pop(name, None)
        if args.command == "run":
            return _serve(settings, notifier, _managed_companion(settings, args.threads))
        return _serve(settings, notifier)
    except (
        BundleError,
        SettingsError,
        ModelFileError,
        DemoModelError,
        EnrollmentRefused,
        CaPinError,
        IdentityError,
    ) as exc:
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
