"""The control plane gateway's added latency against calling the agent directly, in one run."""

# What it does (docs/benchmarks.md, "Gateway added latency"): starts a real control plane
# (ControlPlaneServer, SQLite in a temporary directory) and a real managed agent
# (ManagedAgent + AgentServer) in two processes of their own on 127.0.0.1. The agent's model
# backend is a FAKE: it answers every request with a fixed short text at once, so what is
# measured is the HTTP, policy and forwarding work around a model, not inference. A routing
# policy with one local target is applied through the REST API, an inference key created,
# and once the gateway lists the target as ready, an open-loop load of small non-streaming
# /v1/chat/completions requests is sent at a fixed rate to each of the two paths, interleaved:
# the gateway (the control plane's HTTP port) and the agent directly (its HTTP port, same
# key). Only 127.0.0.1 is ever contacted.

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import ctypes
import errno
import json
import logging
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Protocol

import gguf
import httpx
import numpy

from agent.control.client import ControlLinkSettings
from agent.engine.protocol import BackendDescription, ModelBackend, ResolvedSampling
from agent.managed import ManagedAgent
from agent.server import AgentServer
from agent.settings import AgentSettings, ModelSettings
from common.inference import ChatMessage, Finished, FinishReason, GenerationEvent, TextDelta, Usage
from common.lifecycle import LOG_FORMAT
from controlplane.pki import CertificateAuthority
from controlplane.server import ADMIN_KEY_FILE, ControlPlaneServer
from controlplane.settings import ControlPlaneSettings

HOST = "127.0.0.1"
MODEL_ALIAS = "fast"
TARGET_NAME = "home"
FAKE_ANSWER = "fake answer"  # what the fake backend says, every time
PROMPT = "Summarise our meeting notes from Tuesday in two short sentences, please."
START_TIMEOUT_S = 120.0
GATEWAY = "gateway"
DIRECT = "direct"
PATHS = (GATEWAY, DIRECT)
GOAL_ADDED_P50_MS = 1.0
GOAL_ADDED_P99_MS = 5.0
PR_SET_PDEATHSIG = 1  # prctl(2)
MAX_SCHEDULE_LAG_P99_MS = 10.0  # beyond it the load generator is not keeping its schedule
MIN_SERVED_SHARE = 0.99  # of the offered rate, answered without error
PAUSE_BETWEEN_RATES_S = 3.0
DRAIN_TIMEOUT_S = 60.0  # after the last request is sent; what is still unanswered then is cut
STALE_CONNECTION_S = 2.0  # unused this long, a client connection is closed (uvicorn: 5 s)
MAX_CONNECTIONS_PER_PATH = 256  # requests beyond it wait for a connection (as httpx's pool)

POLICY = f"""
version: 1
detectors:
  - {{name: cards, builtin: payment_card, level: confidential}}
  - {{name: ssns, builtin: us_ssn, level: restricted}}
  - {{name: emails, builtin: email, level: internal}}
  - {{name: secrets, builtin: secret, level: restricted}}
roles:
  bench: {{max_level: restricted, targets: ["*"]}}
targets:
  {TARGET_NAME}: {{type: local, model: {MODEL_ALIAS}, max_level: restricted}}
routes:
  - {{name: everything-local, targets: [{TARGET_NAME}]}}
"""

# -- the fake model backend ---------------------------------------------------------------------


class FixedAnswerBackend:
    """A ModelBackend without a model: every generation is FAKE_ANSWER, produced at once."""

    def __init__(self, settings: ModelSettings) -> None:
        self._context_length = settings.context_length
        self._parallel = settings.parallel

    def describe(self) -> BackendDescription:
        return BackendDescription(
            architecture="fake",
            context_length=self._context_length,
            vocab_size=256,
            parallel=self._parallel,
        )

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return "\n".join(f"{m.role}: {m.content}" for m in messages)

    def tokenize(self, text: str) -> list[int]:
        return list(text.encode()[: self._context_length // 2])

    def generate(
        self, prompt_tokens: Sequence[int], sampling: ResolvedSampling, cancelled: threading.Event
    ) -> Iterator[GenerationEvent]:
        yield TextDelta(FAKE_ANSWER)
        yield Finished(FinishReason.STOP, Usage(len(prompt_tokens), 2))

    def self_test(self) -> None:
        return None

    def close(self) -> None:
        return None


def fixed_answer_backend(settings: ModelSettings) -> ModelBackend:
    return FixedAnswerBackend(settings)


def write_placeholder_model(path: Path) -> Path:
    """A small valid GGUF file to register and assign; the fake backend never reads it."""
    writer = gguf.GGUFWriter(str(path), "fake")
    writer.add_string("general.name", "gateway-latency-placeholder")
    writer.add_uint32("fake.context_length", 2048)
    writer.add_tensor("placeholder", numpy.arange(1024, dtype=numpy.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# -- the servers, each in a process of its own ------------------------------------------------


def _configure_child(log_path: Path, log_level: str) -> None:
    _terminate_with_parent()
    logging.basicConfig(filename=str(log_path), level=log_level, format=LOG_FORMAT)


def _terminate_with_parent() -> None:
    """Linux: this process gets SIGTERM when the benchmark that started it dies."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


async def _serve_until_terminated(server: Any, ports_out: Connection, profile: Path | None) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, server.request_stop)
    listening: asyncio.Future[Any] = loop.create_future()
    listening.add_done_callback(
        lambda done: ports_out.send(asdict(done.result())) if not done.exception() else None
    )
    profiler = cProfile.Profile() if profile is not None else None
    if profiler is not None:
        profiler.enable()
    try:
        await server.run(listening)
    finally:
        if profiler is not None and profile is not None:
            profiler.disable()
            profiler.dump_stats(str(profile))


def serve_control_plane(
    data_dir: Path,
    log_level: str,
    profile: Path | None,
    ports_out: Connection,
) -> None:
    """Child process: `outpost serve` on 127.0.0.1 with SQLite, until SIGTERM."""
    _configure_child(data_dir.parent / "control-plane.log", log_level)
    settings = ControlPlaneSettings(
        data_dir=data_dir,
        host=HOST,
        http_port=0,
        grpc_port=0,
        mtls_port=0,
        fleet_port=0,
        log_level=log_level,
    )
    asyncio.run(_serve_until_terminated(ControlPlaneServer(settings), ports_out, profile))


def serve_agent(
    state_dir: Path,
    enroll_address: str,
    join_token: str,
    ca_fingerprint: str,
    log_level: str,
    profile: Path | None,
    ports_out: Connection,
) -> None:
    """Child process: a managed agent whose model backend is FixedAnswerBackend, until SIGTERM."""
    _configure_child(state_dir.parent / "agent.log", log_level)
    link = ControlLinkSettings(
        control_plane=enroll_address, join_token=join_token, ca_fingerprint=ca_fingerprint
    )
    companion = ManagedAgent(
        state_dir,
        link,
        ModelSettings(path=Path(), alias="model"),
        inference_address=f"{HOST}:0",  # the agent's HTTP port, filled in once it is bound
    )
    settings = AgentSettings(
        host=HOST, grpc_port=0, http_port=0, state_dir=state_dir, log_level=log_level
    )
    server = AgentServer(settings, fixed_answer_backend, companion, policy=companion)
    asyncio.run(_serve_until_terminated(server, ports_out, profile))


@dataclass
class ServerProcess:
    name: str
    process: BaseProcess
    ports: dict[str, int]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (/proc/PID/stat)."""
        assert self.process.pid is not None
        return process_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: the server stops gracefully
            self.process.join(30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server_process(name: str, target: Any, *args: Any) -> ServerProcess:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=target, args=(*args, send), name=name, daemon=True)
    process.start()
    send.close()
    if not receive.poll(START_TIMEOUT_S):
        process.terminate()
        raise RuntimeError(f"{name} did not start listening within {START_TIMEOUT_S:.0f} s")
    try:
        ports = receive.recv()
    except EOFError:
        process.join(5)
        message = f"{name} exited before listening (exit code {process.exitcode})"
        raise RuntimeError(message) from None
    return ServerProcess(name, process, dict(ports))


# -- setting the fleet up through the REST API -------------------------------------------------


@dataclass
class Fleet:
    gateway_url: str  # the control plane's HTTP port
    direct_url: str  # the agent's HTTP port
    inference_key: str


def wait_until(check: Any, what: str, timeout_s: float = START_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.1)


def checked(response: httpx.Response, expected: int) -> Any:
    if response.status_code != expected:
        raise RuntimeError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}: {response.text[:500]}"
        )
    return response.json()


def enroll_and_configure(
    work_dir: Path, control_plane: ServerProcess, args: argparse.Namespace
) -> tuple[Fleet, ServerProcess]:
    """Enrolls the agent, assigns it the placeholder model, applies the policy, creates a key;
    returns once both paths answer."""
    admin_key = (work_dir / "control-plane" / ADMIN_KEY_FILE).read_text().strip()
    rest = httpx.Client(
        base_url=f"http://{HOST}:{control_plane.ports['http']}/api/v1",
        headers={"Authorization": f"Bearer {admin_key}"},
        timeout=60,
        trust_env=False,
    )
    with rest:
        join_token = checked(rest.post("/tokens", json={"site": "bench"}), 201)["token"]
        fingerprint = _ca_fingerprint(work_dir / "control-plane")
        agent = start_server_process(
            "agent",
            serve_agent,
            work_dir / "agent",
            f"{HOST}:{control_plane.ports['grpc']}",
            join_token,
            fingerprint,
            args.log_level,
            None if args.profile is None else Path(args.profile) / "agent.prof",
        )

        def connected_agent_id() -> str:
            agents = checked(rest.get("/agents"), 200)["agents"]
            return next((a["id"] for a in agents if a["state"] == "connected"), "")

        agent_id = wait_until(connected_agent_id, "the agent is connected")
        model_file = write_placeholder_model(work_dir / "placeholder.gguf")
        with model_file.open("rb") as handle:
            checked(
                rest.post(
                    "/models",
                    content=handle,
                    params={"name": "placeholder"},
                    headers={"Content-Type": "application/octet-stream"},
                ),
                201,
            )
        assignment = {"model": "placeholder", "agent": agent_id, "alias": MODEL_ALIAS}
        checked(rest.post("/assignments", json={**assignment, "context_length": 1024}), 201)
        key_body = {"name": "bench", "role": "bench", "team": "bench"}
        inference_key = checked(rest.post("/inference-keys", json=key_body), 201)["key"]
        checked(
            rest.put("/policy", content=POLICY, headers={"Content-Type": "application/yaml"}),
            201,
        )
    fleet = Fleet(
        gateway_url=f"http://{HOST}:{control_plane.ports['http']}",
        direct_url=f"http://{HOST}:{agent.ports['http']}",
        inference_key=inference_key,
    )
    auth = {"Authorization": f"Bearer {inference_key}"}

    def gateway_lists_target_ready() -> bool:
        response = httpx.get(f"{fleet.gateway_url}/v1/models", headers=auth, trust_env=False)
        models = response.json().get("data", []) if response.status_code == 200 else []
        return any(m["id"] == TARGET_NAME and m.get("ready") for m in models)

    wait_until(gateway_lists_target_ready, "the gateway lists the local target as ready")
    for base in (fleet.gateway_url, fleet.direct_url):
        wait_until(lambda base=base: _answers(base, auth), f"{base} answers a chat request")
    return fleet, agent


def _ca_fingerprint(data_dir: Path) -> str:
    """The fleet CA's fingerprint, read from the control plane's data directory."""
    authority, _ = CertificateAuthority.load_or_create(data_dir / "ca")
    return authority.fingerprint


def _answers(base: str, headers: dict[str, str]) -> bool:
    response = httpx.post(
        f"{base}/v1/chat/completions", json=chat_body(), headers=headers, trust_env=False
    )
    return response.status_code == 200


def chat_body() -> dict[str, Any]:
    return {
        "model": TARGET_NAME,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
    }


# -- the open-loop load ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadPlan:
    fleet: Fleet
    rate_per_path: float
    warmup_s: float
    duration_s: float
    start_at: float  # time.monotonic() of the first request, shared by every worker
    worker: int
    workers: int
    client: str  # a key of CLIENTS


@dataclass
class PathSamples:
    latencies_s: list[float] = field(default_factory=list)
    lags_s: list[float] = field(default_factory=list)  # actual send time - scheduled time
    errors: Counter[str] = field(default_factory=Counter)
    scheduled: int = 0  # counted requests due
    finished: int = 0  # of them, answered or failed before the load ended
    answered_in_window: int = 0  # answers that arrived within the counted window


def schedule(plan: LoadPlan) -> Iterator[tuple[float, str, bool]]:
    """(due time, path, counted) of this worker's requests: the two paths alternate at evenly
    spaced instants, 2 × rate in all; pairs are dealt to workers in turn."""
    interval = 1.0 / (2 * plan.rate_per_path)
    total = math.ceil((plan.warmup_s + plan.duration_s) * 2 * plan.rate_per_path)
    for index in range(total):
        if (index // 2) % plan.workers != plan.worker:
            continue
        offset = index * interval
        yield plan.start_at + offset, PATHS[index % 2], offset >= plan.warmup_s


class ChatClient(Protocol):
    async def post(self, path: str) -> tuple[int, bytes]:
        """POSTs the benchmark's chat request to GATEWAY or DIRECT: (status, body)."""
        ...

    async def aclose(self) -> None: ...


class HttpxChatClient:
    """POSTs the chat body with one keep-alive httpx.AsyncClient per path."""

    def __init__(self, fleet: Fleet, body: bytes) -> None:
        limits = httpx.Limits(
            max_connections=MAX_CONNECTIONS_PER_PATH,
            max_keepalive_connections=MAX_CONNECTIONS_PER_PATH,
        )
        self._clients = {
            path: httpx.AsyncClient(base_url=base, limits=limits, timeout=30, trust_env=False)
            for path, base in ((GATEWAY, fleet.gateway_url), (DIRECT, fleet.direct_url))
        }
        self._body = body
        self._headers = {
            "Authorization": f"Bearer {fleet.inference_key}",
            "Content-Type": "application/json",
        }

    async def post(self, path: str) -> tuple[int, bytes]:
        response = await self._clients[path].post(
            "/v1/chat/completions", content=self._body, headers=self._headers
        )
        return response.status_code, response.content

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


class MinimalChatClient:
    """POSTs the same pre-built HTTP/1.1 request over kept-alive asyncio connections, one
    request per connection at a time; reads answers framed by Content-Length only (what both
    servers send for a non-streaming answer). Far less client CPU per request than httpx."""

    def __init__(self, fleet: Fleet, body: bytes) -> None:
        self._addresses: dict[str, tuple[str, int]] = {}
        self._requests: dict[str, bytes] = {}
        for path, base in ((GATEWAY, fleet.gateway_url), (DIRECT, fleet.direct_url)):
            url = httpx.URL(base)
            assert url.host == HOST, "only 127.0.0.1 is ever contacted"
            self._addresses[path] = (url.host, url.port or 80)
            self._requests[path] = (
                f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
                f"Authorization: Bearer {fleet.inference_key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode() + body
        self._connection_slots = {
            path: asyncio.Semaphore(MAX_CONNECTIONS_PER_PATH) for path in PATHS
        }
        # Idle connections, each with the time it was last used; the most recent is reused.
        self._idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]]] = {
            path: [] for path in PATHS
        }

    async def post(self, path: str) -> tuple[int, bytes]:
        async with self._connection_slots[path]:
            return await self._post(path)

    async def _post(self, path: str) -> tuple[int, bytes]:
        idle = self._idle[path]
        now = time.monotonic()
        while idle and (idle[-1][0].at_eof() or now - idle[-1][2] > STALE_CONNECTION_S):
            idle.pop()[1].close()  # the server closed it, or will soon (keep-alive timeout)
        if idle:
            reader, writer, _ = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(*self._addresses[path])
        try:
            writer.write(self._requests[path])
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            length = 0
            for line in header_lines:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            content = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            raise
        idle.append((reader, writer, time.monotonic()))
        return int(status_line.split(" ", 2)[1]), content

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for _, writer, _ in connections:
                writer.close()


CLIENTS: dict[str, Callable[[Fleet, bytes], ChatClient]] = {
    "minimal": MinimalChatClient,
    "httpx": HttpxChatClient,
}


async def drive(plan: LoadPlan) -> dict[str, PathSamples]:
    samples = {path: PathSamples() for path in PATHS}
    client = CLIENTS[plan.client](plan.fleet, json.dumps(chat_body()).encode())

    async def one_request(path: str, due: float, counted: bool) -> None:
        sent_at = time.monotonic()
        error = ""
        try:
            status, content = await client.post(path)
            if status != 200:
                error = f"HTTP {status}"
            elif json.loads(content)["choices"][0]["message"]["content"] != FAKE_ANSWER:
                error = "unexpected answer"
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError) as exc:
            error = type(exc).__name__
            if isinstance(exc, OSError) and exc.errno is not None:
                error += f" {errno.errorcode.get(exc.errno, exc.errno)}"
        done_at = time.monotonic()
        if not counted:
            return
        record = samples[path]
        record.finished += 1
        record.lags_s.append(sent_at - due)
        if error:
            record.errors[error] += 1
        else:
            record.latencies_s.append(done_at - sent_at)
            record.answered_in_window += window_start <= done_at <= window_end

    window_start = plan.start_at + plan.warmup_s
    window_end = window_start + plan.duration_s
    pending: set[asyncio.Task[None]] = set()
    try:
        for due, path, counted in schedule(plan):
            samples[path].scheduled += counted
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one_request(path, due, counted))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_TIMEOUT_S)
        for task in list(pending):  # unfinished: counted as such, not as latencies
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await client.aclose()
    return samples


def drive_in_process(plan: LoadPlan, results_out: Connection) -> None:
    """Worker process entry: runs its share of the schedule and sends the samples back."""
    samples = asyncio.run(drive(plan))
    results_out.send({path: asdict(s) for path, s in samples.items()})


def run_load(fleet: Fleet, args: argparse.Namespace, rate: float) -> dict[str, PathSamples]:
    """Runs the schedule in `args.workers` load processes (1: in this process)."""
    start_at = time.monotonic() + 1.0
    plans = [
        LoadPlan(
            fleet,
            rate,
            args.warmup,
            args.duration,
            start_at,
            worker,
            args.workers,
            args.client,
        )
        for worker in range(args.workers)
    ]
    if args.workers == 1:
        return asyncio.run(drive(plans[0]))
    context = multiprocessing.get_context("fork")  # starts at once; nothing threaded yet here
    pipes: list[Connection] = []
    processes: list[BaseProcess] = []
    for plan in plans:
        receive, send = context.Pipe(duplex=False)
        process: BaseProcess = context.Process(
            target=drive_in_process, args=(plan, send), daemon=True
        )
        process.start()
        send.close()
        pipes.append(receive)
        processes.append(process)
    merged = {path: PathSamples() for path in PATHS}
    for receive, process in zip(pipes, processes, strict=True):
        part = receive.recv()
        process.join(30)
        for path in PATHS:
            target = merged[path]
            target.latencies_s += part[path]["latencies_s"]
            target.lags_s += part[path]["lags_s"]
            target.errors.update(part[path]["errors"])
            target.scheduled += part[path]["scheduled"]
            target.finished += part[path]["finished"]
            target.answered_in_window += part[path]["answered_in_window"]
    return merged


# -- reporting ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of sorted `values` (nan when empty)."""
    if not values:
        return math.nan
    rank = max(math.ceil(fraction * len(values)), 1)
    return values[rank - 1]


def summarise(samples: PathSamples, duration_s: float) -> dict[str, Any]:
    latencies = sorted(samples.latencies_s)
    lags = sorted(samples.lags_s)
    ms = 1000.0
    return {
        "scheduled": samples.scheduled,
        "answered": len(latencies),
        "unfinished": samples.scheduled - samples.finished,
        # Answers that arrived within the counted window, per second of it.
        "achieved_rate": samples.answered_in_window / duration_s,
        "errors": dict(samples.errors),
        "p50_ms": percentile(latencies, 0.50) * ms,
        "p90_ms": percentile(latencies, 0.90) * ms,
        "p99_ms": percentile(latencies, 0.99) * ms,
        "max_ms": (latencies[-1] if latencies else math.nan) * ms,
        "lag_p50_ms": percentile(lags, 0.50) * ms,
        "lag_p99_ms": percentile(lags, 0.99) * ms,
        "lag_max_ms": (lags[-1] if lags else math.nan) * ms,
    }


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
    }


def code_version() -> dict[str, Any]:
    """The commit measured, and the files changed against it (this file, when uncommitted)."""
    root = Path(__file__).resolve().parents[1]

    def git(*arguments: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *arguments], capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    changed = [line[3:] for line in git("status", "--porcelain").splitlines()]
    return {"commit": git("rev-parse", "HEAD"), "uncommitted": changed}


def load_generator_cpu_seconds() -> float:
    """This process's CPU time and its ended children's: the load worker processes (the
    servers are still running, so they are not counted)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (/proc/stat), steal as busy."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(values) - idle) / ticks, sum(values) / ticks


def verdict(paths: dict[str, dict[str, Any]], rate: float) -> dict[str, Any]:
    """The added latency against the goals, and whether this phase can judge them: the load
    generator must have kept its schedule, and both paths must have been served in full."""
    added_p50 = paths[GATEWAY]["p50_ms"] - paths[DIRECT]["p50_ms"]
    added_p99 = paths[GATEWAY]["p99_ms"] - paths[DIRECT]["p99_ms"]
    generator_kept_up = all(paths[p]["lag_p99_ms"] <= MAX_SCHEDULE_LAG_P99_MS for p in PATHS)
    served = {
        path: paths[path]["achieved_rate"] >= MIN_SERVED_SHARE * rate
        and paths[path]["answered"] >= MIN_SERVED_SHARE * paths[path]["scheduled"]
        for path in PATHS
    }
    if not generator_kept_up:
        outcome = "inconclusive: the load generator fell behind its schedule"
    elif not served[DIRECT]:
        outcome = "inconclusive: the agent alone did not serve the offered rate"
    elif not served[GATEWAY]:
        outcome = "not met: the gateway did not serve the offered rate"
    elif added_p50 <= GOAL_ADDED_P50_MS and added_p99 <= GOAL_ADDED_P99_MS:
        outcome = "met"
    else:
        outcome = "not met"
    return {
        "p50_ms": added_p50,
        "p99_ms": added_p99,
        "p50_within_goal": added_p50 <= GOAL_ADDED_P50_MS,
        "p99_within_goal": added_p99 <= GOAL_ADDED_P99_MS,
        "generator_kept_up": generator_kept_up,
        "served_in_full": served,
        "outcome": outcome,
    }


def print_phase(phase: dict[str, Any]) -> None:
    rate = phase["rate_per_path"]
    print()
    print(f"offered: {rate:g} requests/s to each path ({2 * rate:g}/s in all)")
    print(
        f"{'path':<8} {'rate/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'errors':>7} {'lag p50':>8} {'lag p99':>8} {'lag max':>8}"
    )
    for path in PATHS:
        row = phase["paths"][path]
        print(
            f"{path:<8} {row['achieved_rate']:>8.1f} {row['p50_ms']:>8.2f} {row['p90_ms']:>8.2f} "
            f"{row['p99_ms']:>8.2f} {row['max_ms']:>8.2f} {sum(row['errors'].values()):>7} "
            f"{row['lag_p50_ms']:>8.2f} {row['lag_p99_ms']:>8.2f} {row['lag_max_ms']:>8.2f}"
        )
        if row["errors"] or row["unfinished"]:
            print(f"         errors: {row['errors']}; unfinished: {row['unfinished']}")
    added = phase["added"]
    print(
        f"added by the gateway: p50 {added['p50_ms']:+.2f} ms (goal ≤ {GOAL_ADDED_P50_MS:g}), "
        f"p99 {added['p99_ms']:+.2f} ms (goal ≤ {GOAL_ADDED_P99_MS:g}): {added['outcome']}"
    )
    cpu = phase["cpu"]
    print(
        "CPU in the counted window: "
        + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in cpu["seconds"].items())
        + f"; machine busy {cpu['machine_busy_share']:.0%}, others' processes "
        f"{cpu['others_share']:.0%} of all cores; control plane "
        f"{cpu['control_plane_ms_per_gateway_request']:.2f} ms per gateway request, agent "
        f"{cpu['agent_ms_per_request']:.2f} ms per request (both paths)"
    )
    print(f"load average before / after: {phase['load_before']} / {phase['load_after']}")


def run_phase(
    fleet: Fleet,
    args: argparse.Namespace,
    rate: float,
    control_plane: ServerProcess,
    agent: ServerProcess,
) -> dict[str, Any]:
    """One rate: the load, its latencies, and the CPU each process used meanwhile."""
    load_before = os.getloadavg()
    cpu_before = {p.name: p.cpu_seconds() for p in (control_plane, agent)}
    generator_before = load_generator_cpu_seconds()
    machine_before = machine_busy_seconds()
    samples = run_load(fleet, args, rate)
    # The counters cover warm-up and counted window together: scaled to the counted part.
    share = args.duration / (args.warmup + args.duration)
    used = {p.name: p.cpu_seconds() - cpu_before[p.name] for p in (control_plane, agent)}
    used["load generator"] = load_generator_cpu_seconds() - generator_before
    machine_after = machine_busy_seconds()
    busy = machine_after[0] - machine_before[0]
    total = machine_after[1] - machine_before[1]
    cpu_seconds = {name: seconds * share for name, seconds in used.items()}
    paths = {path: summarise(samples[path], args.duration) for path in PATHS}
    gateway_requests = max(samples[GATEWAY].finished, 1)
    all_requests = max(samples[GATEWAY].finished + samples[DIRECT].finished, 1)
    return {
        "rate_per_path": rate,
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "paths": paths,
        "added": verdict(paths, rate),
        "cpu": {
            "seconds": cpu_seconds,
            "machine_busy_share": busy / total if total else math.nan,
            # Other processes' (other people's work on the machine) share of all cores.
            "others_share": max(busy - sum(used.values()), 0.0) / total if total else math.nan,
            "control_plane_ms_per_gateway_request": cpu_seconds["control-plane"]
            / gateway_requests
            * 1000,
            "agent_ms_per_request": cpu_seconds["agent"] / all_requests * 1000,
        },
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.profile is not None:
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "backend": "FAKE: a fixed short answer at once, no model; the figures are the gateway's "
        "own overhead",
        "settings": {
            "rates_per_path": args.rate,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "workers": args.workers,
            "client": args.client,
            "log_level": args.log_level,
        },
        "machine": machine(),
        "code": code_version(),
        "phases": [],
    }
    print(
        "NOTE: the agent's model backend is a FAKE that answers a fixed short text at once: "
        "what is measured is the gateway's own overhead, not inference."
    )
    print(
        f"{args.duration:g} s counted after {args.warmup:g} s of warm-up per rate; "
        f"{args.workers} load process(es), {args.client} client; servers log at "
        f"{args.log_level}"
    )
    code = report["code"]
    print(f"code: {code['commit'][:12]}, {len(code['uncommitted'])} uncommitted change(s)")
    with tempfile.TemporaryDirectory(prefix="gateway-latency-") as temporary:
        work_dir = Path(temporary)
        control_plane = start_server_process(
            "control-plane",
            serve_control_plane,
            work_dir / "control-plane",
            args.log_level,
            None if args.profile is None else Path(args.profile) / "control-plane.prof",
        )
        agent: ServerProcess | None = None
        try:
            fleet, agent = enroll_and_configure(work_dir, control_plane, args)
            print(
                f"gateway {fleet.gateway_url} (control plane pid {control_plane.process.pid}), "
                f"agent {fleet.direct_url} (pid {agent.process.pid}): both answer; measuring",
                flush=True,
            )
            for index, rate in enumerate(args.rate):
                if index:
                    time.sleep(PAUSE_BETWEEN_RATES_S)  # what is queued drains
                phase = run_phase(fleet, args, rate, control_plane, agent)
                print_phase(phase)
                report["phases"].append(phase)
        finally:
            for server in (agent, control_plane):
                if server is not None:
                    server.stop()
            if args.keep_logs:
                kept = Path(args.keep_logs)
                kept.mkdir(parents=True, exist_ok=True)
                for log_file in work_dir.glob("*.log"):
                    shutil.copyfile(log_file, kept / log_file.name)
    return report


def rates(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if not values or any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError("give positive rates, e.g. 500 or 50,100,500")
    return values


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--rate",
        type=rates,
        default=[500.0],
        help="requests/s to EACH path (default 500); several, comma-separated, run in turn",
    )
    parser.add_argument("--duration", type=float, default=30.0, help="counted seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds sent, not counted")
    parser.add_argument(
        "--workers", type=int, default=1, help="load generator processes (default 1)"
    )
    parser.add_argument(
        "--client",
        choices=sorted(CLIENTS),
        default="minimal",
        help="the load generator's HTTP client (default minimal: asyncio streams)",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="the servers' log level (default INFO, as shipped)"
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="cProfile both servers' event loops into DIR/*.prof"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the servers' logs into DIR")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.warmup < 0 or args.workers < 1:
        parser.error("--duration must be positive, --warmup not negative, --workers at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    report = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
