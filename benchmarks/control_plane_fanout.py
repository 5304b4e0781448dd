"""Agents one control plane holds on mTLS streams, and how fast one desired-state push reaches all.

For each fleet size N: prepares N enrolled agents with the control plane's own code (one
shared key pair, but each agent has its own id and certificate), starts `outpost serve`,
opens N real mutual-TLS `ControlService.Connect` streams from lightweight simulated agents
in client worker processes, then sends one site-wide `PUT /sites/bench/desired-state/models`
and times until each agent has received it (`--pushes K`: K pushes, the worst one counts).
Reports push latency p50/p99/max and the control plane's CPU and memory per connected agent;
stops at the first N that misses the goal (push p99 < 1 s, at most 1 % of agents failing to
connect; `--keep-going` tries the rest anyway) or would exceed a resource limit. All traffic
stays on 127.0.0.1. Usage:

    .venv/bin/python benchmarks/control_plane_fanout.py [--agents 100,1000,2500,5000,10000]
        [--pushes 1] [--client-processes 1] [--batch 200] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import grpc
import httpx

from agent.control.client import CHANNEL_OPTIONS
from agent.control.identity import build_csr, generate_key
from common.control import Hardware, Hello
from common.proto_convert import hello_to_pb
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.db.models import utcnow
from controlplane.pki import CertificateAuthority
from controlplane.services import ControlPlaneServices
from controlplane.settings import ControlPlaneSettings
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

HOST = "127.0.0.1"
SITE = "bench"
GOAL_P99_S = 1.0
MAX_CONNECT_FAILURE_SHARE = 0.01
ENROLL_BATCH = 500  # agents enrolled per transaction while preparing
TOKEN_TTL = timedelta(hours=1)
CERTIFICATE_TTL = ControlPlaneSettings(data_dir=Path()).agent_certificate_ttl
FD_MARGIN = 256  # files a process holds besides its agent connections
PORT_MARGIN = 1024  # ephemeral ports left for everything else
MEMORY_SAFETY = 1.5  # the next N must fit MemAvailable with this factor on the last per-agent use
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
REST_LINE = re.compile(r"REST API on http://127\.0\.0\.1:(\d+)/api/v1/")
MTLS_LINE = re.compile(r"agents connect on 127\.0\.0\.1:(\d+) \(gRPC, mutual TLS\)")


class BenchmarkError(Exception):
    """A round could not be run to the end (a process died, a phase timed out)."""


# -- process figures ----------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessUsage:
    cpu_s: float  # user + system, all threads
    rss_kib: int


def process_usage(pid: int | str = "self") -> ProcessUsage:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 of proc(5)
    cpu_s = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    rss_kib = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kib = int(line.split()[1])
    return ProcessUsage(cpu_s, rss_kib)


def open_sockets(pid: int) -> int:
    """How many sockets the process holds: one per agent stream plus its listeners."""
    count = 0
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(entry).startswith("socket:")
    return count


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (also run in the control plane's child)."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return 0


def ephemeral_ports() -> int:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(high) - int(low) + 1


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank; math.inf stands for an agent that never received the push."""
    ordered = sorted(values)
    if not ordered:
        return math.inf
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


# -- the fleet, prepared offline ----------------------------------------------------------


@dataclass(frozen=True)
class PreparedFleet:
    data_dir: Path
    ca_pem: bytes
    key_pem: bytes  # shared by every simulated agent
    agents: list[tuple[str, bytes]]  # (agent id, its own certificate PEM)
    admin_key: str
    seconds: float


def prepare_fleet(data_dir: Path, count: int) -> PreparedFleet:
    """Enrolls `count` agents of site "bench" into a new data dir, as `Enroll` would."""
    start = time.perf_counter()
    ca, _ = CertificateAuthority.load_or_create(data_dir / "ca")
    db = Database(f"sqlite:///{data_dir / 'outpost.db'}")
    try:
        db.migrate()
        services = ControlPlaneServices.build(db)
        admin_key, _ = services.api_keys.create("bench", Role.ADMIN)
        key_pem = generate_key()  # one key pair: generating 10,000 would dominate preparation
        agents: list[tuple[str, bytes]] = []
        for first in range(0, count, ENROLL_BATCH):
            pending = []
            for _ in range(min(ENROLL_BATCH, count - first)):
                agent_id = str(uuid.uuid4())
                _, issued = ca.sign_agent_csr(
                    build_csr(key_pem, agent_id),
                    expected_agent_id=agent_id,
                    valid_for=CERTIFICATE_TTL,
                )
                token, _ = services.tokens.create(
                    site=SITE, labels={}, ttl=TOKEN_TTL, created_by="bench"
                )
                pending.append((agent_id, token, issued))
            with db.session() as session:
                now = utcnow()
                for index, (agent_id, token, issued) in enumerate(pending, first):
                    grant = services.tokens.consume(session, token, agent_id=agent_id, now=now)
                    services.fleet.enroll(
                        session,
                        agent_id=agent_id,
                        name=f"bench-agent-{index}",
                        grant=grant,
                        certificate=issued,
                    )
            agents.extend((agent_id, issued.pem) for agent_id, _, issued in pending)
    finally:
        db.dispose()
    return PreparedFleet(
        data_dir=data_dir,
        ca_pem=ca.certificate_pem,
        key_pem=key_pem,
        agents=agents,
        admin_key=admin_key,
        seconds=time.perf_counter() - start,
    )


# -- the control plane process ------------------------------------------------------------


class ControlPlane:
    """`outpost serve` on free ports; its log is drained for as long as it runs."""

    def __init__(self, data_dir: Path, log_path: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "controlplane.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--http-port",
                "0",
                "--grpc-port",
                "0",
                "--mtls-port",
                "0",
                "--fleet-port",
                "0",
                "--log-level",
                "INFO",  # the ports are logged at INFO
            ],
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=raise_nofile_limit,  # the parent starts no children from other threads
        )
        self.pid = self.process.pid
        self.tail: deque[str] = deque(maxlen=20)
        self.problems: deque[str] = deque(maxlen=5)
        self.problem_count = 0
        ports: dict[str, int] = {}
        found = threading.Event()

        def read_log() -> None:
            log_file = log_path.open("w") if log_path is not None else None
            for line in self.process.stderr or []:
                if log_file is not None:
                    log_file.write(line)
                self.tail.append(line.rstrip())
                if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                    self.problem_count += 1
                    self.problems.append(line.rstrip())
                for name, pattern in (("http", REST_LINE), ("mtls", MTLS_LINE)):
                    match = pattern.search(line)
                    if match:
                        ports[name] = int(match.group(1))
                        if len(ports) == 2:
                            found.set()
            if log_file is not None:
                log_file.close()
            found.set()

        threading.Thread(target=read_log, daemon=True).start()
        if not found.wait(120) or len(ports) < 2:
            self.process.kill()
            raise BenchmarkError("the control plane did not start:\n" + "\n".join(self.tail))
        self.http_port = ports["http"]
        self.mtls_port = ports["mtls"]

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"the control plane exited with status {self.process.returncode}:\n"
                + "\n".join(self.tail)
            )

    def usage(self) -> ProcessUsage:
        self.check_alive()
        return process_usage(self.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


# -- simulated agents (in client worker processes) ----------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    mtls_port: int
    ca_pem: bytes
    key_pem: bytes
    agents: list[tuple[str, bytes]]
    batch: int
    connect_timeout_s: float


@dataclass(frozen=True)
class Command:
    name: str  # "connect", "pushed", "stop"
    alias: str = ""  # the pushed model alias
    t0: float = 0.0  # time.time() just before the push was sent
    window_s: float = 0.0


@dataclass(frozen=True)
class WorkerReport:
    phase: str  # "ready", "connected", "received", "stopped", "error"
    usage: ProcessUsage
    connected: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    received_at: list[float] = field(default_factory=list)  # time.time() per agent that got it
    dropped: int = 0  # streams that ended after connecting
    detail: str = ""


def describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SimulatedAgent:
    """One mTLS channel and `Connect` stream: Hello, the initial DesiredState, then reads."""

    def __init__(
        self,
        agent_id: str,
        certificate_pem: bytes,
        spec: WorkerSpec,
        on_push: Callable[[str], None],
    ) -> None:
        self.agent_id = agent_id
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.received_at: dict[str, float] = {}  # model alias -> when it first arrived
        self.error: str | None = None
        self._on_push = on_push
        credentials = grpc.ssl_channel_credentials(
            root_certificates=spec.ca_pem,
            private_key=spec.key_pem,
            certificate_chain=certificate_pem,
        )
        self.channel = grpc.aio.secure_channel(
            f"{HOST}:{spec.mtls_port}", credentials, options=CHANNEL_OPTIONS
        )
        self.task = asyncio.create_task(self._stream())

    async def _stream(self) -> None:
        try:
            stub = cpb_grpc.ControlServiceStub(self.channel)  # type: ignore[no-untyped-call]
            call = stub.Connect()
            hello = Hello(agent_id=self.agent_id, version="bench", hardware=Hardware())
            await call.write(cpb.AgentMessage(hello=hello_to_pb(hello)))
            while True:
                message = await call.read()
                now = time.time()
                if message is grpc.aio.EOF:
                    raise ConnectionError("the control plane ended the stream")
                if not self.ready.done():
                    self.ready.set_result(True)  # the initial DesiredState
                    continue
                for model in message.desired_state.models:
                    if model.alias not in self.received_at:
                        self.received_at[model.alias] = now
                        self._on_push(model.alias)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = describe(exc)
            if not self.ready.done():
                self.ready.set_result(False)

    async def close(self) -> None:
        self.task.cancel()
        await self.channel.close()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def client_worker(conn: Connection, spec: WorkerSpec) -> None:
    """Entry point of a client worker process."""
    raise_nofile_limit()
    try:
        asyncio.run(_client_main(conn, spec))
    except Exception:
        conn.send(WorkerReport("error", process_usage(), detail=traceback.format_exc()))


async def _client_main(conn: Connection, spec: WorkerSpec) -> None:
    conn.send(WorkerReport("ready", process_usage()))
    command: Command = await asyncio.to_thread(conn.recv)
    if command.name != "connect":
        return
    received: Counter[str] = Counter()  # agents that got each alias
    awaited = ""
    all_received = asyncio.Event()
    live: list[SimulatedAgent] = []
    errors: Counter[str] = Counter()
    failed = 0

    def on_push(alias: str) -> None:
        received[alias] += 1
        if alias == awaited and received[alias] >= len(live):
            all_received.set()

    for first in range(0, len(spec.agents), spec.batch):
        batch = [
            SimulatedAgent(agent_id, pem, spec, on_push)
            for agent_id, pem in spec.agents[first : first + spec.batch]
        ]
        await asyncio.wait([agent.ready for agent in batch], timeout=spec.connect_timeout_s)
        for agent in batch:
            if agent.ready.done() and agent.ready.result():
                live.append(agent)
                continue
            failed += 1
            errors[agent.error or f"no DesiredState within {spec.connect_timeout_s:g} s"] += 1
            if not agent.ready.done():
                agent.ready.set_result(False)
            await agent.close()
    conn.send(
        WorkerReport(
            "connected",
            process_usage(),
            connected=len(live),
            failed=failed,
            errors=dict(errors.most_common(5)),
            dropped=sum(agent.error is not None for agent in live),
        )
    )
    command = await asyncio.to_thread(conn.recv)
    while command.name == "pushed":
        awaited = command.alias
        all_received.clear()
        if received[awaited] >= len(live):
            all_received.set()
        remaining = command.t0 + command.window_s - time.time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_received.wait(), max(remaining, 0.0))
        dropped = [agent for agent in live if agent.error is not None]
        conn.send(
            WorkerReport(
                "received",
                process_usage(),
                connected=len(live),
                received_at=[a.received_at[awaited] for a in live if awaited in a.received_at],
                dropped=len(dropped),
                errors=dict(Counter(a.error for a in dropped if a.error).most_common(5)),
            )
        )
        command = await asyncio.to_thread(conn.recv)
    for first in range(0, len(live), 1000):  # the failed ones were closed already
        await asyncio.gather(*(agent.close() for agent in live[first : first + 1000]))
    conn.send(WorkerReport("stopped", process_usage()))


class ClientWorkers:
    """The client worker processes of one round, and the parent's end of their pipes."""

    def __init__(self, spec: WorkerSpec, processes: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process that loaded grpc
        self.conns: list[Connection] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for index in range(processes):
            share = spec.agents[index::processes]
            if not share:
                continue
            parent_end, child_end = context.Pipe()
            process = context.Process(
                target=client_worker,
                args=(child_end, WorkerSpec(**{**asdict(spec), "agents": share})),
                name=f"fanout-client-{index}",
                daemon=True,
            )
            process.start()
            child_end.close()
            self.conns.append(parent_end)
            self.processes.append(process)

    def usage(self) -> ProcessUsage:
        """CPU and RSS of all the worker processes together."""
        each = [process_usage(p.pid) for p in self.processes if p.pid is not None]
        return ProcessUsage(sum(u.cpu_s for u in each), sum(u.rss_kib for u in each))

    def send(self, command: Command) -> None:
        for conn in self.conns:
            conn.send(command)

    def collect(self, phase: str, timeout_s: float, server: ControlPlane) -> list[WorkerReport]:
        reports: dict[int, WorkerReport] = {}
        deadline = time.monotonic() + timeout_s
        while len(reports) < len(self.conns):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchmarkError(f"the client workers did not report {phase!r} in time")
            waiting = [c for i, c in enumerate(self.conns) if i not in reports]
            for ready in wait(waiting, timeout=min(remaining, 1.0)):
                assert isinstance(ready, Connection)
                index = self.conns.index(ready)
                try:
                    report: WorkerReport = ready.recv()
                except EOFError:
                    raise BenchmarkError(f"client worker {index} exited during {phase!r}") from None
                if report.phase == "error":
                    raise BenchmarkError(f"client worker {index} failed:\n{report.detail}")
                if report.phase != phase:
                    raise BenchmarkError(f"client worker {index} sent {report.phase!r}")
                reports[index] = report
            if phase != "stopped":
                server.check_alive()
        return [reports[i] for i in range(len(self.conns))]

    def stop(self) -> None:
        """Ends the workers: a worker still waiting for a command takes "stop" and closes."""
        for conn in self.conns:
            with contextlib.suppress(OSError):  # it may have exited already
                conn.send(Command("stop"))
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
                process.join(10)
        for conn in self.conns:
            conn.close()


# -- one round ----------------------------------------------------------------------------


@dataclass
class PushResult:
    alias: str
    rest_s: float  # the PUT's round trip
    updated: int  # "updated" in its answer
    received: int  # connected agents that got it within the window
    p50_ms: float | None  # over connected agents; None: some never got it within the window
    p99_ms: float | None
    max_ms: float | None
    seconds: float  # from just before the PUT until the last agent had it (or the window closed)
    cp_cpu_s: float  # control plane CPU over those seconds
    client_cpu_s: float  # client workers' CPU over those seconds
    dropped: int  # streams that had ended by the end of the window


@dataclass
class RoundResult:
    agents: int
    prepare_s: float
    connected: int
    connect_failed: int
    connect_errors: dict[str, int]
    connect_s: float
    cp_new_sockets: int  # sockets the control plane opened while the agents connected
    cp_rss_before_kib: int
    cp_rss_connected_kib: int
    cp_rss_kib_per_agent: float
    cp_cpu_connect_s: float
    cp_cpu_ms_per_agent: float
    cp_idle_cpu_percent: float | None  # of one core, with N streams up and nothing pushed
    client_rss_kib_per_agent: float
    client_idle_cpu_percent: float | None  # of one core, all workers, nothing pushed
    pushes: list[PushResult]
    worst: PushResult  # the push with the highest p99: it decides the goal
    cp_log_problems: int  # WARNING/ERROR lines in its log until the end of the last push
    cp_log_samples: list[str]
    cp_log_problems_at_stop: int  # ... while the agents disconnected and it shut down
    cp_log_samples_at_stop: list[str]
    goal_met: bool
    verdict: str


def finite_ms(seconds: float) -> float | None:
    return None if math.isinf(seconds) else round(seconds * 1000, 1)


def percent_of_core(cpu_s: float, seconds: float) -> float | None:
    return round(100 * cpu_s / seconds, 1) if seconds > 0 else None


def push_once(
    alias: str,
    server: ControlPlane,
    workers: ClientWorkers,
    admin_key: str,
    connected: int,
    window_s: float,
) -> PushResult:
    """One site-wide PUT; waits until every connected agent has it or the window closes."""
    body = {"models": [{"alias": alias, "path": "/models/bench.gguf", "context_length": 2048}]}
    url = f"http://{HOST}:{server.http_port}/api/v1/sites/{SITE}/desired-state/models"
    cp_start, clients_start = server.usage(), workers.usage()
    with httpx.Client(timeout=300) as client:
        t0 = time.time()
        response = client.put(url, json=body, headers={"Authorization": f"Bearer {admin_key}"})
        rest_s = time.time() - t0
    if response.status_code != 200:
        raise BenchmarkError(f"PUT {url} answered {response.status_code}: {response.text[:500]}")
    workers.send(Command("pushed", alias=alias, t0=t0, window_s=window_s))
    reports = workers.collect("received", window_s + 120, server)
    cp_end, clients_end = server.usage(), workers.usage()
    latencies = [t - t0 for r in reports for t in r.received_at]
    padded = latencies + [math.inf] * (connected - len(latencies))
    return PushResult(
        alias=alias,
        rest_s=round(rest_s, 3),
        updated=int(response.json().get("updated", -1)),
        received=sum(1 for t in latencies if t <= window_s),
        p50_ms=finite_ms(percentile(padded, 0.50)),
        p99_ms=finite_ms(percentile(padded, 0.99)),
        max_ms=finite_ms(max(padded, default=math.inf)),
        seconds=round(window_s if len(latencies) < connected else max(latencies, default=0), 3),
        cp_cpu_s=round(cp_end.cpu_s - cp_start.cpu_s, 2),
        client_cpu_s=round(clients_end.cpu_s - clients_start.cpu_s, 2),
        dropped=sum(r.dropped for r in reports),
    )


def run_round(count: int, args: argparse.Namespace) -> RoundResult:
    with tempfile.TemporaryDirectory(prefix="outpost-fanout-", dir=args.work_dir) as tmp:
        fleet = prepare_fleet(Path(tmp) / "cp", count)
        print(
            f"N={count}: prepared {count} enrolled agents in {fleet.seconds:.1f} s "
            "(not part of the results; one key pair shared by all simulated agents, "
            "each with its own agent id and certificate)",
            flush=True,
        )
        log_path = None if args.server_logs is None else args.server_logs / f"cp-{count}.log"
        server = ControlPlane(fleet.data_dir, log_path)
        spec = WorkerSpec(
            mtls_port=server.mtls_port,
            ca_pem=fleet.ca_pem,
            key_pem=fleet.key_pem,
            agents=fleet.agents,
            batch=args.batch,
            connect_timeout_s=args.connect_timeout,
        )
        workers: ClientWorkers | None = None
        try:
            workers = ClientWorkers(spec, args.client_processes)
            ready = workers.collect("ready", 120, server)
            cp_before = server.usage()
            sockets_before = open_sockets(server.pid)
            workers.send(Command("connect"))
            start = time.perf_counter()
            connect_budget = 120 + count * args.connect_timeout / args.batch
            connected_reports = workers.collect("connected", connect_budget, server)
            connect_s = time.perf_counter() - start
            cp_connected, clients_connected = server.usage(), workers.usage()
            cp_sockets = open_sockets(server.pid) - sockets_before
            connected = sum(r.connected for r in connected_reports)
            failed = sum(r.failed for r in connected_reports)
            errors: Counter[str] = Counter()
            for report in connected_reports:
                errors.update(report.errors)
            print(
                f"N={count}: {connected} streams up, {failed} failed, in {connect_s:.1f} s; "
                f"settling {args.settle:g} s before each push",
                flush=True,
            )
            pushes = []
            for index in range(args.pushes):
                time.sleep(args.settle)  # keepalives only: the steady-state cost of holding N
                if index == 0:
                    cp_settled, clients_settled = server.usage(), workers.usage()
                alias = f"bench-{count}" if args.pushes == 1 else f"bench-{count}-{index + 1}"
                pushes.append(
                    push_once(alias, server, workers, fleet.admin_key, connected, args.push_window)
                )
            problems_measured = server.problem_count
            problem_samples = list(server.problems)
            workers.send(Command("stop"))
            workers.collect("stopped", 300, server)
        finally:
            if workers is not None:
                workers.stop()
            server.stop()

    per_agent = max(connected, 1)
    client_rss = sum(
        c.usage.rss_kib - r.usage.rss_kib for c, r in zip(connected_reports, ready, strict=True)
    )
    worst = max(pushes, key=lambda p: math.inf if p.p99_ms is None else p.p99_ms)
    why = []
    if failed > MAX_CONNECT_FAILURE_SHARE * count:
        why.append(f"{failed} of {count} agents failed to connect (> 1 %)")
    if worst.p99_ms is None or not worst.p99_ms < GOAL_P99_S * 1000:
        shown = "not reached" if worst.p99_ms is None else f"{worst.p99_ms:.0f} ms"
        which = "" if len(pushes) == 1 else " (worst push)"
        why.append(f"push p99 {shown}{which} (goal < {GOAL_P99_S * 1000:.0f} ms)")
    return RoundResult(
        agents=count,
        prepare_s=round(fleet.seconds, 2),
        connected=connected,
        connect_failed=failed,
        connect_errors=dict(errors.most_common(5)),
        connect_s=round(connect_s, 2),
        cp_new_sockets=cp_sockets,
        cp_rss_before_kib=cp_before.rss_kib,
        cp_rss_connected_kib=cp_connected.rss_kib,
        cp_rss_kib_per_agent=round((cp_connected.rss_kib - cp_before.rss_kib) / per_agent, 1),
        cp_cpu_connect_s=round(cp_connected.cpu_s - cp_before.cpu_s, 2),
        cp_cpu_ms_per_agent=round((cp_connected.cpu_s - cp_before.cpu_s) * 1000 / per_agent, 2),
        cp_idle_cpu_percent=percent_of_core(cp_settled.cpu_s - cp_connected.cpu_s, args.settle),
        client_rss_kib_per_agent=round(client_rss / per_agent, 1),
        client_idle_cpu_percent=percent_of_core(
            clients_settled.cpu_s - clients_connected.cpu_s, args.settle
        ),
        pushes=pushes,
        worst=worst,
        cp_log_problems=problems_measured,
        cp_log_samples=problem_samples,
        cp_log_problems_at_stop=server.problem_count - problems_measured,
        cp_log_samples_at_stop=[]
        if server.problem_count == problems_measured
        else list(server.problems)[-3:],
        goal_met=not why,
        verdict="; ".join(why) or "goal met",
    )


def resource_problem(count: int, args: argparse.Namespace, last: RoundResult | None) -> str | None:
    """Why `count` agents would not fit this machine, judged before trying; None if they fit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if count + FD_MARGIN > hard:
        return (
            f"{count} agents need about {count + FD_MARGIN} open files in the control plane; "
            f"the RLIMIT_NOFILE hard limit is {hard}"
        )
    ports = ephemeral_ports()
    if count + PORT_MARGIN > ports:
        return f"{count} agents need {count} ephemeral ports on {HOST}; the range has {ports}"
    if last is not None:
        per_agent = last.cp_rss_kib_per_agent + last.client_rss_kib_per_agent
        needed = count * max(per_agent, 0.0) * MEMORY_SAFETY
        available = mem_available_kib()
        if needed > available:
            return (
                f"{count} agents would need about {needed / 1024:.0f} MiB at "
                f"{per_agent:.0f} KiB per agent (x{MEMORY_SAFETY}); "
                f"{available / 1024:.0f} MiB is available"
            )
    return None


# -- output -------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def print_table(results: list[RoundResult], args: argparse.Namespace) -> None:
    print()
    pushes = "one push" if args.pushes == 1 else f"{args.pushes} pushes, the worst shown"
    print(
        f"Control plane fan-out on {os.cpu_count()} CPUs, {args.client_processes} client "
        f"process(es), {pushes}, push window {args.push_window:g} s; latency over connected "
        "agents; CPU ms/agent is the control plane's for connecting"
    )
    header = (
        f"{'agents':>7} {'connected':>9} {'connect s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'recv %':>7} {'CP KiB/agent':>12} {'CP CPU ms/agent':>15} "
        f"{'client KiB/agent':>16} {'goal met':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        w = r.worst
        print(
            f"{r.agents:>7} {r.connected:>9} {r.connect_s:>9.1f} {ms(w.p50_ms):>8} "
            f"{ms(w.p99_ms):>8} {ms(w.max_ms):>8} {100 * w.received / r.agents:>7.1f} "
            f"{r.cp_rss_kib_per_agent:>12.1f} {r.cp_cpu_ms_per_agent:>15.2f} "
            f"{r.client_rss_kib_per_agent:>16.1f} {'yes' if r.goal_met else 'no':>8}"
        )
    print()
    for r in results:
        print(
            f"N={r.agents}: {r.verdict}. Connecting cost the control plane "
            f"{r.cp_cpu_connect_s:.1f} s CPU and RSS {r.cp_rss_before_kib // 1024} -> "
            f"{r.cp_rss_connected_kib // 1024} MiB ({r.cp_new_sockets} new sockets); idle with "
            f"all connected: control plane {r.cp_idle_cpu_percent}%, clients "
            f"{r.client_idle_cpu_percent}% of a core; {r.cp_log_problems} warnings/errors in "
            f"its log (+{r.cp_log_problems_at_stop} while stopping)"
        )
        for p in r.pushes:
            print(
                f"    push {p.alias}: PUT {p.rest_s * 1000:.0f} ms (updated {p.updated}); "
                f"p50/p99/max {ms(p.p50_ms)}/{ms(p.p99_ms)}/{ms(p.max_ms)} ms; "
                f"{p.received} received; in the {p.seconds:.2f} s until the last agent had "
                f"it, CPU {p.cp_cpu_s:.2f} s control plane + {p.client_cpu_s:.2f} s clients; "
                f"{p.dropped} streams dropped"
            )
        for error, times in r.connect_errors.items():
            print(f"    connect failure x{times}: {error}")
        for line in r.cp_log_samples:
            print(f"    control plane log: {line}")
        for line in r.cp_log_samples_at_stop:
            print(f"    control plane log while stopping: {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--agents",
        default="100,1000,2500,5000,10000",
        help="fleet sizes to try, in order (comma-separated)",
    )
    parser.add_argument("--client-processes", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200, help="streams opened at a time")
    parser.add_argument(
        "--connect-timeout", type=float, default=60.0, help="seconds per batch to connect"
    )
    parser.add_argument(
        "--push-window", type=float, default=10.0, help="seconds the push has to arrive"
    )
    parser.add_argument("--work-dir", type=Path, help="where the data dirs go (default: /tmp)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument(
        "--server-logs", type=Path, help="write each control plane's log to DIR/cp-N.log"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds between the last connect (or push) and a push; the control plane's "
        "CPU over the first is its steady-state cost (a profiler can attach then)",
    )
    parser.add_argument(
        "--pushes",
        type=int,
        default=1,
        help="site-wide pushes per N, one after another; the worst one decides the goal",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="try the next N even after one missed the goal (resource limits still stop)",
    )
    args = parser.parse_args()
    counts = [int(part) for part in args.agents.split(",") if part.strip()]
    if not counts or min([*counts, args.client_processes, args.batch, args.pushes]) < 1:
        parser.error("--agents, --client-processes, --batch and --pushes must be positive")
    raise_nofile_limit()
    if args.server_logs is not None:
        args.server_logs.mkdir(parents=True, exist_ok=True)

    results: list[RoundResult] = []
    stopped = "every N was tried"
    for count in counts:
        problem = resource_problem(count, args, results[-1] if results else None)
        if problem is not None:
            stopped = f"stopped before N={count}: resource limit: {problem}"
            break
        try:
            result = run_round(count, args)
        except BenchmarkError as exc:
            stopped = f"stopped at N={count}: {exc}"
            break
        results.append(result)
        print(f"N={count}: {result.verdict}", flush=True)
        if not result.goal_met and not args.keep_going:
            stopped = f"stopped after N={count}: it missed the goal ({result.verdict})"
            break

    print_table(results, args)
    met = [r.agents for r in results if r.goal_met]
    print()
    print(stopped)
    print(f"largest N meeting p99 < 1 s: {max(met) if met else 'none'}")
    if args.json is not None:
        document: dict[str, Any] = {
            "goal": {"p99_ms": GOAL_P99_S * 1000, "max_connect_failure_share": 0.01},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "grpc": grpc.__version__,
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": [asdict(r) for r in results],
            "stopped": stopped,
            "largest_n_meeting_goal": max(met) if met else None,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
