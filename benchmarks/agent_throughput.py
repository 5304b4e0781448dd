"""Single-stream tokens/s and time to first token: agent (gRPC, HTTP) vs in-process llama.cpp.

Runs the three paths interleaved on the same model and parameters, in the same run, and
reports medians and the agent/in-process ratios. Usage:

    .venv/bin/python benchmarks/agent_throughput.py [--runs 7] [--tokens 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import grpc
import httpx
import llama_cpp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.demo_model import default_cache_dir, ensure_demo_model
from outpost.v1 import inference_pb2 as pb
from outpost.v1 import inference_pb2_grpc as pb_grpc

PROMPT = "1, 2, 3, 4, 5,"  # greedy decoding counts on: every run yields exactly --tokens tokens
CONTEXT = 1024


@dataclass(frozen=True)
class Sample:
    ttft_s: float
    total_s: float
    tokens: int

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s


def timed(chunks: Iterator[object], tokens: int) -> Sample:
    start = time.perf_counter()
    first = None
    for _ in chunks:
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return Sample(first - start, end - start, tokens)


def in_process(llama: llama_cpp.Llama, tokens: int) -> Sample:
    def chunks() -> Iterator[object]:
        stream = cast(
            Iterator[dict[str, Any]],
            llama.create_completion(PROMPT, max_tokens=tokens, temperature=0.0, stream=True),
        )
        finish = None
        for chunk in stream:
            finish = chunk["choices"][0]["finish_reason"] or finish
            if chunk["choices"][0]["text"]:
                yield chunk
        assert finish == "length", finish

    return timed(chunks(), tokens)


def over_grpc(stub: pb_grpc.InferenceServiceStub, tokens: int) -> Sample:
    def chunks() -> Iterator[object]:
        request = pb.GenerateRequest(
            model="smol",
            prompt=PROMPT,
            sampling=pb.SamplingParams(max_tokens=tokens, temperature=0.0),
        )
        for response in stub.Generate(request, timeout=120):
            if response.text:
                yield response
            elif response.finish_reason:
                assert response.usage.completion_tokens == tokens

    return timed(chunks(), tokens)


def over_http(client: httpx.Client, tokens: int) -> Sample:
    def chunks() -> Iterator[object]:
        body = {
            "model": "smol",
            "prompt": PROMPT,
            "max_tokens": tokens,
            "temperature": 0.0,
            "stream": True,
        }
        with client.stream("POST", "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    choice = json.loads(line[6:])["choices"][0]
                    if choice["text"]:
                        yield choice
                    elif choice["finish_reason"]:
                        assert choice["finish_reason"] == "length"

    return timed(chunks(), tokens)


def start_agent(model: Path, threads: int) -> tuple[subprocess.Popen[str], int, int]:
    """Starts `outpost-agent serve` on free ports; returns it with its gRPC and HTTP ports."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "serve",
            "--model",
            str(model),
            "--alias",
            "smol",
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--threads",
            str(threads),
            "--context-length",
            str(CONTEXT),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    ports: dict[str, int] = {}
    found = threading.Event()

    def read_log() -> None:
        for line in process.stderr or []:
            match = re.search(r"(gRPC|HTTP) listening on (?:http://)?127\.0\.0\.1:(\d+)", line)
            if match:
                ports[match.group(1)] = int(match.group(2))
                if len(ports) == 2:
                    found.set()
        found.set()

    threading.Thread(target=read_log, daemon=True).start()
    if not found.wait(60) or len(ports) < 2:
        process.kill()
        raise RuntimeError("agent did not start")
    return process, ports["gRPC"], ports["HTTP"]


def wait_serving(channel: grpc.Channel) -> None:
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=60)
    for response in watch:
        if response.status == health_pb2.HealthCheckResponse.SERVING:
            return
    raise RuntimeError("agent never became ready")


def median(samples: list[Sample], key: Callable[[Sample], float]) -> float:
    return statistics.median(key(s) for s in samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = ensure_demo_model(default_cache_dir(os.environ))
    llama = llama_cpp.Llama(
        model_path=str(model),
        n_ctx=CONTEXT,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    agent, grpc_port, http_port = start_agent(model, args.threads)
    try:
        results: dict[str, list[Sample]] = {"in-process": [], "agent gRPC": [], "agent HTTP": []}
        with (
            grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
            httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=120) as client,
        ):
            stub = pb_grpc.InferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            wait_serving(channel)
            runners: dict[str, Callable[[], Sample]] = {
                "in-process": lambda: in_process(llama, args.tokens),
                "agent gRPC": lambda: over_grpc(stub, args.tokens),
                "agent HTTP": lambda: over_http(client, args.tokens),
            }
            for run in runners.values():  # warm-up, not counted
                run()
            for _ in range(args.runs):
                for name, run in runners.items():
                    results[name].append(run())
    finally:
        agent.terminate()
        agent.wait(30)
    report(results, args)
    return 0


def report(results: dict[str, list[Sample]], args: argparse.Namespace) -> None:
    base = results["in-process"]
    base_tps = median(base, lambda s: s.tokens_per_s)
    base_ttft = median(base, lambda s: s.ttft_s)
    print(
        f"SmolLM2-135M Q4_1, {args.tokens}-token streams, {args.threads} threads, "
        f"{args.runs} runs each, medians"
    )
    print(f"{'path':<12} {'tokens/s':>9} {'TTFT ms':>8} {'tok/s ratio':>12} {'TTFT added ms':>14}")
    for name, samples in results.items():
        tps = median(samples, lambda s: s.tokens_per_s)
        ttft = median(samples, lambda s: s.ttft_s)
        print(
            f"{name:<12} {tps:9.1f} {ttft * 1000:8.2f} {tps / base_tps:12.3f} "
            f"{(ttft - base_ttft) * 1000:14.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
