"""`outpost-agent` command line: serve models, fetch the demo model."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from agent import __version__
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

log = logging.getLogger("outpost.agent")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="outpost-agent", description="Outpost edge agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve GGUF models over gRPC and OpenAI HTTP")
    serve.add_argument("--config", type=Path, help="TOML config file")
    serve.add_argument("--model", type=Path, help="GGUF model file to serve")
    serve.add_argument("--alias", help="name clients use for --model (default: file stem)")
    serve.add_argument("--context-length", type=int, help="context size for --model")
    serve.add_argument("--gpu-layers", type=int, help="layers of --model to offload to GPU")
    serve.add_argument("--threads", type=int, help="CPU threads for --model (0: all cores)")
    serve.add_argument("--queue-depth", type=int, help="requests that may wait for --model")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (0: any free port)")
    serve.add_argument("--http-port", type=int, help="HTTP port (0: any free port)")
    serve.add_argument("--max-tokens-limit", type=int, help="largest max_tokens a request may ask")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")

    demo = commands.add_parser("demo-model", help="fetch, verify and print the demo model path")
    demo.add_argument("--cache-dir", type=Path, help="where to keep it")
    return parser


def build_settings(args: argparse.Namespace, environ: dict[str, str]) -> AgentSettings:
    settings = load_toml(args.config) if args.config else AgentSettings()
    settings = apply_environment(settings, environ)
    settings = apply_overrides(
        settings,
        {
            "host": args.host,
            "grpc_port": args.grpc_port,
            "http_port": args.http_port,
            "max_tokens_limit": args.max_tokens_limit,
            "log_level": args.log_level,
        },
    )
    if args.model is not None:
        model = ModelSettings(path=args.model, alias=args.alias or args.model.stem)
        model_overrides = {
            "context_length": args.context_length,
            "gpu_layers": args.gpu_layers,
            "threads": args.threads,
            "queue_depth": args.queue_depth,
        }
        model = replace(model, **{k: v for k, v in model_overrides.items() if v is not None})
        settings = replace(settings, models=(*settings.models, model))
    return validate(settings)


def _llama_backend(model: ModelSettings) -> ModelBackend:
    from agent.engine.llama_backend import LlamaCppBackend  # loads llama.cpp's shared library

    return LlamaCppBackend(
        model.path,
        context_length=model.context_length,
        gpu_layers=model.gpu_layers,
        threads=resolve_threads(model),
        batch_size=model.batch_size,
    )


def _serve(settings: AgentSettings) -> int:
    from agent.server import AgentServer

    server = AgentServer(settings, _llama_backend)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, server.request_stop)
        await server.run()

    asyncio.run(main())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        if args.command == "demo-model":
            cache_dir = args.cache_dir or default_cache_dir(environ)
            print(ensure_demo_model(cache_dir))
            return 0
        settings = build_settings(args, environ)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        return _serve(settings)
    except (SettingsError, ModelFileError, DemoModelError) as exc:
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"outpost-agent: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
