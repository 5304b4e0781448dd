"""Aggregate tokens/s and TTFT at 1-16 concurrent streams: agent, llama_cpp.server, llama-server.

Serves the demo model with all servers at once (2 threads each) and, at each concurrency level,
runs rounds of N simultaneous 64-token greedy `/v1/completions` SSE streams, each from its own
client connection. Sets up its peers under the git-ignored `.bench/` on first use (a virtualenv
with `llama-cpp-python[server]`, and `llama-server` built from the llama.cpp sources in the
llama-cpp-python sdist: several minutes on 2 cores, cached afterwards); only that setup uses the
network. Usage:

    .venv/bin/python benchmarks/concurrency.py [--levels 1,2,4,8,16] [--tokens 64] [--rounds 3]
        [--only outpost,llama_cpp_server,llama_server] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from agent.demo_model import default_cache_dir, ensure_demo_model

PROMPT = "1, 2, 3, 4, 5,"  # greedy decoding counts on: every stream yields exactly --tokens tokens
ALIAS = "smol"
LLAMA_CPP_PYTHON = "0.3.36"
ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / ".bench"  # git-ignored: peers' virtualenv, sdist, llama-server build, logs
SERVERS = ("outpost", "llama_cpp_server", "llama_server")
LABELS = {
    "outpost": "Outpost agent",
    "llama_cpp_server": "llama_cpp.server",
    "llama_server": "llama-server",
}


class BenchError(Exception):
    """A server could not be set up, started or measured."""


# --- Server command lines -------------------------------------------------------------------


def agent_command(
    model: Path, http_port: int, *, parallel: int, threads: int, context: int
) -> list[str]:
    """`outpost-agent serve` on one model; `parallel` 0 leaves out `--parallel` (older agents)."""
    script = Path(sys.executable).parent / "outpost-agent"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "agent.cli"]
    command = [
        *base,
        "serve",
        "--model",
        str(model),
        "--alias",
        ALIAS,
        "--host",
        "127.0.0.1",
        "--grpc-port",
        "0",
        "--http-port",
        str(http_port),
        "--threads",
        str(threads),
        "--context-length",
        str(context),
    ]
    if parallel:
        command += ["--parallel", str(parallel)]
    return command


def llama_cpp_server_command(
    python: Path, model: Path, port: int, *, threads: int, context: int
) -> list[str]:
    return [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--model_alias",
        ALIAS,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(context),
        "--interrupt_requests",
        "False",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def llama_server_command(
    binary: Path, model: Path, port: int, *, parallel: int, threads: int, context: int
) -> list[str]:
    # -c is the whole KV cache, split evenly between the -np slots.
    return [
        str(binary),
        "--model",
        str(model),
        "--alias",
        ALIAS,
        "--parallel",
        str(parallel),
        "--ctx-size",
        str(parallel * context),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-webui",
        "--offline",
    ]


# --- Peer set-up under .bench/ --------------------------------------------------------------


def log_path(name: str) -> Path:
    path = BENCH_DIR / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def run_logged(command: list[str], log: Path, *, cwd: Path | None = None) -> None:
    env = {**os.environ, "CMAKE_ARGS": "-DGGML_NATIVE=OFF"}
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise BenchError(f"{command[0]} exited {result.returncode}; see {log}")


def ensure_llama_cpp_server_venv() -> Path:
    """A virtualenv with `llama-cpp-python[server]` (pip's cached wheel when it has one)."""
    venv = BENCH_DIR / "llama-cpp-server-venv"
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.exists():
        return python
    print(f"setting up {venv} (pip install llama-cpp-python[server]=={LLAMA_CPP_PYTHON})")
    log = log_path("llama-cpp-server-venv")
    shutil.rmtree(venv, ignore_errors=True)
    run_logged([sys.executable, "-m", "venv", str(venv)], log)
    run_logged(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}",
        ],
        log,
    )
    marker.touch()
    return python


def ensure_llama_server(jobs: int) -> tuple[Path, float | None]:
    """Builds `llama-server` from the sdist's llama.cpp; returns it and the build time (None:
    cached from an earlier run)."""
    source = BENCH_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}" / "vendor" / "llama.cpp"
    binary = source / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary, None
    log = log_path("llama-server-build")
    started = time.perf_counter()
    sdist = BENCH_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not sdist.exists():
        print(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON} sdist into {BENCH_DIR}")
        run_logged(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--dest",
                str(BENCH_DIR),
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            ],
            log,
        )
    if not (source / "CMakeLists.txt").exists():
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
            archive.extractall(BENCH_DIR, members=members, filter="data")
    print(f"building llama-server in {source / 'build'} (several minutes; log: {log})")
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run_logged(
        [
            "cmake",
            "-S",
            str(source),
            "-B",
            str(source / "build"),
            *generator,
            "-DCMAKE_BUILD_TYPE=Release",
            "-DGGML_NATIVE=OFF",  # a native build crashes in AMX code on these CPUs
            "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF",
            "-DLLAMA_USE_PREBUILT_UI=OFF",  # would fetch the web UI from Hugging Face
            "-DLLAMA_BUILD_UI=OFF",
            "-DLLAMA_BUILD_TESTS=OFF",
            "-DLLAMA_BUILD_EXAMPLES=OFF",
            "-DBUILD_SHARED_LIBS=OFF",
        ],
        log,
    )
    build = ["cmake", "--build", str(source / "build"), "--target", "llama-server"]
    run_logged([*build, "-j", str(jobs)], log)
    if not binary.exists():
        raise BenchError(f"the build made no {binary}; see {log}")
    return binary, time.perf_counter() - started


# --- Running a server -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def running(name: str, command: list[str], port: int, ready_path: str) -> Iterator[tuple[str, int]]:
    """Starts a server, waits until `ready_path` answers 200, yields its base URL and process id,
    stops it."""
    log = log_path(name)
    with log.open("w") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        with httpx.Client(base_url=base_url, timeout=5, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise BenchError(f"{name} exited {process.returncode}:\n{tail(log)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} not ready after 180 s:\n{tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get(ready_path).status_code == 200:
                        break
                time.sleep(0.1)  # poll interval, not a settle delay
        yield base_url, process.pid
    finally:
        stop(process)


# --- Clients --------------------------------------------------------------------------------


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (steal included: the host's other guests)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


class OthersCpu:
    """CPU used during a level by everything but the server and this benchmark: work that
    competes for the cores the servers' threads spin on, and so skews the level's numbers."""

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.start = self.sample()

    def sample(self) -> tuple[float, float, float]:
        ours = process_cpu_s(self.server_pid) + time.process_time()
        return busy_cpu_s(), ours, time.perf_counter()

    def share(self) -> float:
        """Others' CPU as a fraction of all the machine's cores over the level."""
        busy, ours, now = self.sample()
        others = (busy - self.start[0]) - (ours - self.start[1])
        return max(others, 0.0) / ((now - self.start[2]) * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Stream:
    ttft_s: float
    total_s: float
    tokens: int


@dataclass
class Level:
    streams: int
    round_s: list[float] = field(default_factory=list)
    results: list[Stream] = field(default_factory=list)
    others_cpu_s: float = 0.0  # others' share of the cores, times each round's seconds

    @property
    def aggregate_tps(self) -> float:
        return sum(s.tokens for s in self.results) / sum(self.round_s)

    @property
    def others_cpu(self) -> float:
        """Others' share of the cores over this level's rounds."""
        return self.others_cpu_s / sum(self.round_s) if self.round_s else 0.0

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft_s for s in self.results]

    @property
    def stream_tps_p50(self) -> float:
        return statistics.median(s.tokens / s.total_s for s in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "streams": self.streams,
            "aggregate_tokens_per_s": self.aggregate_tps,
            "ttft_p50_s": percentile(self.ttfts, 50),
            "ttft_p99_s": percentile(self.ttfts, 99),
            "stream_tokens_per_s_p50": self.stream_tps_p50,
            "others_cpu_share": self.others_cpu,
            "round_s": self.round_s,
            "ttft_s": self.ttfts,
            "stream_total_s": [s.total_s for s in self.results],
        }


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


async def stream_once(client: httpx.AsyncClient, tokens: int) -> Stream:
    body = {
        "model": ALIAS,
        "prompt": PROMPT,
        "max_tokens": tokens,
        "temperature": 0.0,
        "repeat_penalty": 1.0,  # llama_cpp.server's default is 1.1, the others' 1.0
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    finish: str | None = None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            raise BenchError(f"HTTP {response.status_code}: {response.text[:300]}")
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                if choice.get("text") and first is None:
                    first = time.perf_counter()
                finish = choice.get("finish_reason") or finish
            usage = chunk.get("usage")
            if usage and usage.get("completion_tokens") not in (None, tokens):
                raise BenchError(f"{usage['completion_tokens']} tokens, expected {tokens}")
    end = time.perf_counter()
    if first is None or finish != "length":
        raise BenchError(f"stream ended with finish_reason {finish!r}, text: {first is not None}")
    return Stream(first - start, end - start, tokens)


@dataclass
class Server:
    """A running server being measured: its clients (one connection per stream) and levels."""

    name: str
    pid: int
    clients: list[httpx.AsyncClient]
    levels: list[Level]
    error: str | None = None


async def measure_round(server: Server, level: Level, tokens: int) -> None:
    """One round of `level.streams` simultaneous streams on `server`."""
    others = OthersCpu(server.pid)
    start = time.perf_counter()
    level.results += await asyncio.gather(
        *(stream_once(c, tokens) for c in server.clients[: level.streams])
    )
    span = time.perf_counter() - start
    level.round_s.append(span)
    level.others_cpu_s += others.share() * span


async def measure(
    running_servers: dict[str, tuple[str, int]], levels: list[int], tokens: int, rounds: int
) -> dict[str, Server]:
    """Interleaved: round r of level N runs on each server in turn (the order rotating from
    round to round) before the next level or round starts, so that a drift in the machine's
    speed over the run (these VMs' vary by 20-30 % within minutes) falls on every server alike.
    Each server gets one warm-up stream first; a server that fails is dropped, the rest go on."""
    servers = {
        name: Server(
            name,
            pid,
            [
                httpx.AsyncClient(base_url=base_url, timeout=600, trust_env=False)
                for _ in range(max(levels))
            ],
            [Level(n) for n in levels],
        )
        for name, (base_url, pid) in running_servers.items()
    }
    try:
        for server in servers.values():
            await stream_once(server.clients[0], tokens)
        order = list(servers.values())
        for round_index in range(rounds):
            for level_index in range(len(levels)):
                turn = round_index % len(order)
                for server in order[turn:] + order[:turn]:
                    if server.error is not None:
                        continue
                    try:
                        await measure_round(server, server.levels[level_index], tokens)
                    except (BenchError, httpx.HTTPError) as exc:
                        server.error = f"{type(exc).__name__}: {exc}"
                        print(f"{LABELS[server.name]} failed: {server.error}", file=sys.stderr)
            print(f"round {round_index + 1} of {rounds} done", flush=True)
        for server in servers.values():
            for level in server.levels if server.error is None else []:
                print(
                    f"{LABELS[server.name]}, {level.streams:2d} streams: "
                    f"{level.aggregate_tps:6.1f} tok/s aggregate, TTFT p50 "
                    f"{percentile(level.ttfts, 50) * 1000:.0f} ms, "
                    f"p99 {percentile(level.ttfts, 99) * 1000:.0f} ms; others' CPU "
                    f"{level.others_cpu:.0%}",
                    flush=True,
                )
        return servers
    finally:
        for server in servers.values():
            for client in server.clients:
                await client.aclose()


# --- Report ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    command: list[str] = field(default_factory=list)
    levels: list[Level] = field(default_factory=list)
    error: str | None = None
    load_before: float | None = None  # 1-minute load average: others' work skews the numbers
    load_after: float | None = None

    def at(self, streams: int) -> Level | None:
        return next((level for level in self.levels if level.streams == streams), None)


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"


def ratios(outcomes: dict[str, Outcome], levels: list[int]) -> list[tuple[str, str, float]]:
    """(JSON key, description, value): Outpost at 8 streams vs itself at 1 and vs llama-server
    at 8 (the largest and smallest levels when 8 or 1 is not measured)."""
    high = 8 if 8 in levels else max(levels)
    low = 1 if 1 in levels else min(levels)
    found: list[tuple[str, str, float]] = []
    ours = outcomes.get("outpost")
    theirs = outcomes.get("llama_server")
    ours_high = ours.at(high) if ours else None
    ours_low = ours.at(low) if ours else None
    theirs_high = theirs.at(high) if theirs else None
    if ours_high and ours_low and high != low:
        found.append(
            (
                f"outpost_{high}_vs_outpost_{low}",
                f"Outpost at {high} streams / Outpost at {low}",
                ours_high.aggregate_tps / ours_low.aggregate_tps,
            )
        )
    if ours_high and theirs_high:
        found.append(
            (
                f"outpost_{high}_vs_llama_server_{high}",
                f"Outpost at {high} streams / llama-server at {high}",
                ours_high.aggregate_tps / theirs_high.aggregate_tps,
            )
        )
    return found


def report(outcomes: dict[str, Outcome], args: argparse.Namespace) -> dict[str, float]:
    print()
    print(
        f"SmolLM2-135M-Instruct Q4_1, {args.tokens}-token greedy streams, {args.threads} threads, "
        f"{args.rounds} rounds per level; {machine()}"
    )
    print()
    print(
        "| server | streams | aggregate tok/s | per-stream tok/s p50 | TTFT p50 ms | TTFT p99 ms "
        "| others' CPU |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, outcome in outcomes.items():
        if outcome.error is not None:
            print(f"| {LABELS[name]} | unavailable: {outcome.error.splitlines()[0]} | | | | | |")
        for level in outcome.levels:
            ttfts = level.ttfts
            print(
                f"| {LABELS[name]} | {level.streams} | {level.aggregate_tps:.1f} | "
                f"{level.stream_tps_p50:.1f} | {percentile(ttfts, 50) * 1000:.0f} | "
                f"{percentile(ttfts, 99) * 1000:.0f} | {level.others_cpu:.0%} |"
            )
    print()
    print(
        "others' CPU: the share of all cores used during the level by processes other than the "
        "server and this client;\nllama.cpp's threads spin-wait for each other, so even a few "
        "per cent of competing work can slow a level many times over."
    )
    found = ratios(outcomes, args.levels)
    print()
    for _, description, value in found:
        print(f"aggregate tokens/s, {description}: {value:.2f}")
    return {key: value for key, _, value in found}


# --- Main -----------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="1,2,4,8,16", help="concurrent streams per level")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of N streams per level")
    parser.add_argument("--only", default=",".join(SERVERS), help="servers to measure")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every server")
    parser.add_argument("--context", type=int, default=1024, help="context tokens per sequence")
    parser.add_argument(
        "--agent-parallel",
        type=int,
        default=None,
        help="the agent's --parallel (default: the largest level; 0: leave the flag out)",
    )
    parser.add_argument("--build-jobs", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    args.levels = sorted({int(n) for n in args.levels.split(",")})
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(args.only) - set(SERVERS)
    if unknown or not args.only:
        parser.error(f"--only takes some of {', '.join(SERVERS)}")
    if args.levels[0] < 1 or args.tokens < 1 or args.rounds < 1:
        parser.error("--levels, --tokens and --rounds must be positive")
    if args.agent_parallel is None:
        args.agent_parallel = max(args.levels)
    return args


def main() -> int:
    args = parse_args()
    # Terminated, unwind like Ctrl-C so that every server started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    model = ensure_demo_model(default_cache_dir(os.environ))
    parallel = max(args.levels)
    outcomes = {name: Outcome(name) for name in SERVERS if name in args.only}
    build_s: float | None = None

    # Set-up first (the only network use), then measure the servers in turns.
    commands: dict[str, tuple[list[str], int, str]] = {}
    for name in outcomes:
        port = free_port()
        try:
            if name == "outpost":
                command = agent_command(
                    model,
                    port,
                    parallel=args.agent_parallel,
                    threads=args.threads,
                    context=args.context,
                )
                commands[name] = (command, port, "/readyz")
            elif name == "llama_cpp_server":
                python = ensure_llama_cpp_server_venv()
                command = llama_cpp_server_command(
                    python, model, port, threads=args.threads, context=args.context
                )
                commands[name] = (command, port, "/v1/models")
            else:
                binary, build_s = ensure_llama_server(args.build_jobs)
                if build_s is not None:
                    print(f"built llama-server in {build_s:.0f} s")
                command = llama_server_command(
                    binary,
                    model,
                    port,
                    parallel=parallel,
                    threads=args.threads,
                    context=args.context,
                )
                commands[name] = (command, port, "/health")
        except (BenchError, OSError, tarfile.TarError) as exc:
            outcomes[name].error = f"set-up failed: {exc}"
            print(f"{LABELS[name]}: {outcomes[name].error}", file=sys.stderr)

    # All servers run at once (an idle one uses no CPU) and are measured in turns.
    with contextlib.ExitStack() as stack:
        started: dict[str, tuple[str, int]] = {}
        for name, (command, port, ready_path) in commands.items():
            outcome = outcomes[name]
            outcome.command = command
            print(f"{LABELS[name]}: {' '.join(command)}")
            try:
                started[name] = stack.enter_context(running(name, command, port, ready_path))
            except (BenchError, httpx.HTTPError, OSError) as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
                print(f"{LABELS[name]} failed to start: {outcome.error}", file=sys.stderr)
        load_before = os.getloadavg()[0]
        print(f"measuring (load average {load_before:.2f})", flush=True)
        try:
            measured = asyncio.run(measure(started, args.levels, args.tokens, args.rounds))
        except (BenchError, httpx.HTTPError, OSError) as exc:  # a warm-up failed
            for name in started:
                outcomes[name].error = f"{type(exc).__name__}: {exc}"
            measured = {}
        load_after = os.getloadavg()[0]
        for name, server in measured.items():
            outcome = outcomes[name]
            outcome.load_before, outcome.load_after = load_before, load_after
            outcome.error = server.error
            outcome.levels = server.levels if server.error is None else []

    ratios = report(outcomes, args)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "date": time.strftime("%Y-%m-%d"),
                    "machine": machine(),
                    "model": str(model),
                    "prompt": PROMPT,
                    "tokens": args.tokens,
                    "rounds": args.rounds,
                    "threads": args.threads,
                    "context_per_sequence": args.context,
                    "llama_server_build_s": build_s,
                    "servers": {
                        name: {
                            "label": LABELS[name],
                            "command": o.command,
                            "error": o.error,
                            "load_average_before": o.load_before,
                            "load_average_after": o.load_after,
                            "levels": [level.to_json() for level in o.levels],
                        }
                        for name, o in outcomes.items()
                    },
                    "ratios": ratios,
                },
                indent=2,
            )
            + "\n"
        )
    measured_failed = any(o.error and not o.error.startswith("set-up") for o in outcomes.values())
    return 1 if measured_failed else 0


if __name__ == "__main__":
    sys.exit(main())
