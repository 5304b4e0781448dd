"""Telemetry cost: agent collection CPU/RSS vs idle, and `outpost serve` samples/s vs in-process.

Usage: .venv/bin/python benchmarks/telemetry_overhead.py [--interval 5] [--duration 60]
    [--agents 50,200] [--batch 1] [--seconds 30] [--only agent|ingest] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import httpx

from agent.control.client import CHANNEL_OPTIONS
from agent.telemetry.machine import machine_telemetry
from common.control import Hardware, Hello
from common.lifecycle import collect_garbage_less_often
from common.proto_convert import hello_to_pb, telemetry_batch_to_pb
from common.telemetry import Sample, SequencedSample, TelemetryBatch
from controlplane.db.database import Database
from controlplane.settings import ControlPlaneSettings
from controlplane.telemetry_store import TelemetryStore
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc

if TYPE_CHECKING:
    import benchmarks.control_plane_fanout as fanout
else:  # run as a script, benchmarks/ (not the repository root) is on sys.path
    import control_plane_fanout as fanout

GOAL_CPU_PERCENT = 1.0  # of one core
GOAL_MEMORY_BYTES = 50_000_000  # 50 MB
AGENT_INTERVAL_S = 5.0  # the agent's sampling interval: "agents supportable" = rate x this
MIB = 1024 * 1024
SETTINGS = ControlPlaneSettings(data_dir=Path())

# -- part 1: the agent's collection, in a fresh interpreter ---------------------------------

# Run with `sys.executable -c`: a spawned multiprocessing child would re-import this module
# (grpc, SQLAlchemy, the control plane) and inflate both RSS figures. Both modes import the
# same modules and run the same asyncio loop; "collect" mirrors agent.managed's `_sample`
# (collect and append each in asyncio.to_thread, then wait for the interval).
CHILD = """
import asyncio, json, resource, sys, time
from pathlib import Path

from agent.telemetry.buffer import TelemetryBuffer
from agent.telemetry.machine import machine_telemetry

def memory():
    found = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found

def timed(function, *args):
    start = time.thread_time()
    result = function(*args)
    return result, time.thread_time() - start

collecting = sys.argv[1] == "collect"
interval, duration, work = float(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
report = {"imports_cpu_s": time.process_time(), "imports_kib": memory()}
collect_s, append_s, metrics, notes = [], [], 0, []
setup_start = time.process_time()
if collecting:
    (work / "disk").mkdir()
    telemetry = machine_telemetry([work / "disk"])
    buffer = TelemetryBuffer(work / "state")
report["setup_cpu_s"] = time.process_time() - setup_start

async def run():
    global metrics, notes
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(duration, stop.set)
    while not stop.is_set():
        if collecting:
            sample, spent = await asyncio.to_thread(timed, telemetry.collect)
            collect_s.append(spent)
            _, spent = await asyncio.to_thread(timed, buffer.append, sample)
            append_s.append(spent)
            metrics, notes = len(sample.metrics), list(sample.notes)
        if "first_done_cpu_s" not in report:  # steady state: what follows the first sample
            report["first_done_cpu_s"] = time.process_time()
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass

cpu_start, wall_start = time.process_time(), time.perf_counter()
asyncio.run(run())
cpu_end = time.process_time()
report.update(
    loop_cpu_s=cpu_end - cpu_start,
    steady_cpu_s=cpu_end - report.pop("first_done_cpu_s"),
    loop_wall_s=time.perf_counter() - wall_start,
    end_kib=memory(),
    collect_s=collect_s,
    append_s=append_s,
    metrics=metrics,
    notes=notes,
)
usage = resource.getrusage(resource.RUSAGE_SELF)
report["total_cpu_s"] = usage.ru_utime + usage.ru_stime
if collecting:
    report["buffered"] = len(buffer)
    buffer.close()
    report["buffer_bytes"] = sum(p.stat().st_size for p in (work / "state").iterdir())
print(json.dumps(report))
"""


@dataclass
class AgentResult:
    interval_s: float
    duration_s: float
    samples: int
    metrics_per_sample: int
    notes: list[str]
    collect_loop_cpu_s: float
    idle_loop_cpu_s: float
    cpu_ms_per_sample: float  # steady state: (collecting - idle) CPU after the first / samples
    cpu_ms_per_sample_with_first: float  # (collecting - idle) loop CPU / samples
    cpu_percent_at_interval: float  # of one core
    cpu_percent_at_1s_extrapolated: float
    collect_ms_median: float  # in-thread CPU of MachineTelemetry.collect
    append_ms_median: float  # in-thread CPU of TelemetryBuffer.append
    first_sample_ms: float  # collect + append of the first sample (psutil priming, NVML init)
    setup_ms: float  # machine_telemetry() + TelemetryBuffer()
    collect_rss_kib: int
    idle_rss_kib: int
    rss_diff_kib: int
    collect_peak_kib: int
    idle_peak_kib: int
    imports_rss_kib: int  # the idle child right after its imports
    buffered: int
    buffer_bytes: int
    goal_met: bool
    verdict: str


def run_children(interval: float, duration: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """The collecting child and its idle twin, side by side (each measures its own process)."""
    with tempfile.TemporaryDirectory(prefix="outpost-telemetry-agent-") as tmp:
        processes = {}
        for mode in ("collect", "idle"):
            work = Path(tmp) / mode
            work.mkdir()
            processes[mode] = subprocess.Popen(
                [sys.executable, "-c", CHILD, mode, str(interval), str(duration), str(work)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        reports = {}
        for mode, process in processes.items():
            try:
                out, err = process.communicate(timeout=duration + 120)
            except subprocess.TimeoutExpired:
                for other in processes.values():
                    other.kill()
                raise fanout.BenchmarkError(f"the {mode} child did not finish in time") from None
            if process.returncode != 0:
                raise fanout.BenchmarkError(
                    f"the {mode} child failed ({process.returncode}):\n{err}"
                )
            reports[mode] = json.loads(out.strip().splitlines()[-1])
    return reports["collect"], reports["idle"]


def measure_agent(interval: float, duration: float) -> AgentResult:
    collect, idle = run_children(interval, duration)
    samples = len(collect["collect_s"])
    with_first = (collect["loop_cpu_s"] - idle["loop_cpu_s"]) / max(samples, 1)
    if samples >= 2:
        cpu_per_sample = (collect["steady_cpu_s"] - idle["steady_cpu_s"]) / (samples - 1)
    else:
        cpu_per_sample = with_first
    percent = 100 * cpu_per_sample / interval
    at_1s = 100 * cpu_per_sample / 1.0
    rss_diff = collect["end_kib"]["VmRSS"] - idle["end_kib"]["VmRSS"]
    why = []
    if not percent < GOAL_CPU_PERCENT:
        why.append(f"CPU {percent:.3f} % of a core (goal < {GOAL_CPU_PERCENT:g} %)")
    if not rss_diff * 1024 < GOAL_MEMORY_BYTES:
        why.append(f"RSS +{rss_diff / 1024:.1f} MiB (goal < 50 MB)")
    return AgentResult(
        interval_s=interval,
        duration_s=duration,
        samples=samples,
        metrics_per_sample=int(collect["metrics"]),
        notes=list(collect["notes"]),
        collect_loop_cpu_s=round(collect["loop_cpu_s"], 4),
        idle_loop_cpu_s=round(idle["loop_cpu_s"], 4),
        cpu_ms_per_sample=round(cpu_per_sample * 1000, 3),
        cpu_ms_per_sample_with_first=round(with_first * 1000, 3),
        cpu_percent_at_interval=round(percent, 4),
        cpu_percent_at_1s_extrapolated=round(at_1s, 4),
        collect_ms_median=round(statistics.median(collect["collect_s"][1:] or [0]) * 1000, 3),
        append_ms_median=round(statistics.median(collect["append_s"][1:] or [0]) * 1000, 3),
        first_sample_ms=round((collect["collect_s"][0] + collect["append_s"][0]) * 1000, 3)
        if samples
        else 0.0,
        setup_ms=round(collect["setup_cpu_s"] * 1000, 3),
        collect_rss_kib=collect["end_kib"]["VmRSS"],
        idle_rss_kib=idle["end_kib"]["VmRSS"],
        rss_diff_kib=rss_diff,
        collect_peak_kib=collect["end_kib"]["VmHWM"],
        idle_peak_kib=idle["end_kib"]["VmHWM"],
        imports_rss_kib=idle["imports_kib"]["VmRSS"],
        buffered=int(collect.get("buffered", 0)),
        buffer_bytes=int(collect.get("buffer_bytes", 0)),
        goal_met=not why,
        verdict="; ".join(why) or "goal met",
    )


def print_agent(r: AgentResult) -> None:
    print()
    print(
        f"Agent collection overhead: interval {r.interval_s:g} s for {r.duration_s:g} s "
        f"({r.samples} samples of {r.metrics_per_sample} metrics), each in a fresh interpreter; "
        "baseline: the same imports and asyncio loop, sleeping"
    )
    print(
        f"  loop CPU: collecting {r.collect_loop_cpu_s * 1000:.1f} ms, idle baseline "
        f"{r.idle_loop_cpu_s * 1000:.1f} ms -> {r.cpu_ms_per_sample_with_first:.3f} ms CPU "
        f"per sample counting the first, {r.cpu_ms_per_sample:.3f} ms in steady state (after "
        "the first; used below)"
    )
    print(
        f"  of which in the worker thread (median, after the first): MachineTelemetry.collect "
        f"{r.collect_ms_median:.3f} ms + TelemetryBuffer.append {r.append_ms_median:.3f} ms; "
        f"the first sample {r.first_sample_ms:.1f} ms (psutil priming, NVML attempt); "
        f"setup {r.setup_ms:.1f} ms"
    )
    print(
        f"  CPU at {r.interval_s:g} s: {r.cpu_percent_at_interval:.4f} % of one core "
        f"(goal < {GOAL_CPU_PERCENT:g} %)"
    )
    if r.interval_s != 1.0:
        print(
            f"  CPU at 1 s (EXTRAPOLATED from CPU per sample, not measured): "
            f"{r.cpu_percent_at_1s_extrapolated:.4f} % of one core"
        )
    print(
        f"  RSS: collecting {r.collect_rss_kib / 1024:.1f} MiB, idle baseline "
        f"{r.idle_rss_kib / 1024:.1f} MiB, difference {r.rss_diff_kib / 1024:+.2f} MiB "
        f"(goal < 50 MB = 47.7 MiB); peak {r.collect_peak_kib / 1024:.1f} vs "
        f"{r.idle_peak_kib / 1024:.1f} MiB; the idle child after its imports "
        f"{r.imports_rss_kib / 1024:.1f} MiB"
    )
    print(
        f"  buffer: {r.buffered} samples unacked, {r.buffer_bytes / 1024:.1f} KiB on disk "
        "(nothing acks them here)"
    )
    for note in r.notes:
        print(f"  note on each sample: {note}")
    print(f"  -> {r.verdict}")


# -- part 2: ingestion by one control plane ------------------------------------------------


@dataclass
class Window:
    end: float = math.inf  # time.perf_counter() after which no new batch is sent


@dataclass
class StreamStats:
    connected: bool = False  # Hello sent and the initial DesiredState received
    acked_in_window: int = 0  # samples acked by the end of the window
    acked_after: int = 0  # samples of the batch in flight when the window closed
    wrong_acks: int = 0  # acks whose acked_seq was not the batch's last seq
    latencies_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass
class IngestResult:
    agents: int
    batch: int
    seconds: float
    metrics_per_sample: int
    connected: int
    errors: dict[str, int]
    acked_in_window: int
    acked_total: int
    wrong_acks: int
    rate: float  # samples/s acked (stored) within the window
    agents_supportable: int  # rate x 5 s
    ack_p50_ms: float
    ack_p99_ms: float
    summary: dict[str, int]  # GET /fleet/summary's telemetry counters at the end
    summary_matches: bool
    cp_cpu_percent: float  # of one core, over the window
    cp_rss_kib: int
    client_cpu_percent: float  # this process (all the simulated agents), over the window
    db_bytes_per_sample: float
    cp_log_problems: int
    cp_log_samples: list[str]
    inproc_samples: int
    inproc_seconds: float
    inproc_rate: float
    ratio: float  # gRPC path / in-process


def real_sample(disk: Path) -> Sample:
    """One real sample of this machine (the second: psutil's CPU figures need a first)."""
    telemetry = machine_telemetry([disk])
    telemetry.collect()
    time.sleep(0.5)
    return telemetry.collect()


def batch_of(sample: Sample, first_seq: int, size: int) -> TelemetryBatch:
    """`size` copies of the sample's metrics with consecutive seqs, collected now."""
    now = datetime.now(UTC)
    return TelemetryBatch(
        samples=tuple(
            SequencedSample(first_seq + i, Sample(now, sample.metrics, sample.notes))
            for i in range(size)
        )
    )


async def telemetry_agent(
    agent_id: str,
    certificate_pem: bytes,
    fleet: fanout.PreparedFleet,
    port: int,
    sample: Sample,
    batch: int,
    ready: asyncio.Event,
    start: asyncio.Event,
    window: Window,
    stats: StreamStats,
) -> None:
    """One agent's mTLS `Connect` stream: Hello, the initial DesiredState, then one
    TelemetryBatch in flight at a time until the window closes."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=fleet.ca_pem, private_key=fleet.key_pem, certificate_chain=certificate_pem
    )
    channel = grpc.aio.secure_channel(f"{fanout.HOST}:{port}", credentials, options=CHANNEL_OPTIONS)
    try:
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Connect()
        hello = Hello(agent_id=agent_id, version="bench", hardware=Hardware())
        await call.write(cpb.AgentMessage(hello=hello_to_pb(hello)))
        if await call.read() is grpc.aio.EOF:
            raise ConnectionError("the control plane ended the stream before DesiredState")
        stats.connected = True
        ready.set()
        await start.wait()
        seq = 0
        while time.perf_counter() < window.end:
            message = telemetry_batch_to_pb(batch_of(sample, seq + 1, batch))
            sent = time.perf_counter()
            await call.write(cpb.AgentMessage(telemetry=message))
            while True:
                answer = await call.read()
                if answer is grpc.aio.EOF:
                    raise ConnectionError("the control plane ended the stream")
                if answer.HasField("telemetry_ack"):
                    break
            acked = time.perf_counter()
            seq += batch
            stats.wrong_acks += answer.telemetry_ack.acked_seq != seq
            stats.latencies_s.append(acked - sent)
            if acked <= window.end:
                stats.acked_in_window += batch
            else:
                stats.acked_after += batch
        await call.done_writing()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                while await call.read() is not grpc.aio.EOF:
                    pass
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        stats.error = fanout.describe(exc)
    finally:
        ready.set()
        await channel.close()


async def drive(
    fleet: fanout.PreparedFleet,
    server: fanout.ControlPlane,
    sample: Sample,
    batch: int,
    seconds: float,
) -> tuple[list[StreamStats], float, float, int]:
    """Connects every agent, runs the window; answers the stats, the control plane's and this
    process's CPU seconds over the window, and the control plane's RSS at its end."""
    window = Window()
    start = asyncio.Event()
    stats = [StreamStats() for _ in fleet.agents]
    readies = [asyncio.Event() for _ in fleet.agents]
    tasks = [
        asyncio.create_task(
            telemetry_agent(
                agent_id, pem, fleet, server.mtls_port, sample, batch, ready, start, window, s
            )
        )
        for (agent_id, pem), ready, s in zip(fleet.agents, readies, stats, strict=True)
    ]
    try:
        async with asyncio.timeout(120):
            await asyncio.gather(*(ready.wait() for ready in readies))
        cp_start, self_start = server.usage(), fanout.process_usage()
        window.end = time.perf_counter() + seconds
        start.set()
        await asyncio.sleep(seconds)
        cp_end, self_end = server.usage(), fanout.process_usage()
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return (
        stats,
        cp_end.cpu_s - cp_start.cpu_s,
        self_end.cpu_s - self_start.cpu_s,
        cp_end.rss_kib,
    )


def database_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("outpost.db*"))


def ingest_in_process(
    db_path: Path, agent_ids: list[str], sample: Sample, batch: int, target: int, seconds: float
) -> tuple[int, float]:
    """The baseline: `TelemetryStore.ingest` called directly, one thread, agents in turn,
    until `target` samples are stored (or `seconds` pass). Answers (stored, seconds)."""
    db = Database(f"sqlite:///{db_path}")
    try:
        store = TelemetryStore(
            db,
            raw_retention=SETTINGS.telemetry_raw_retention,
            rollup_retention=SETTINGS.telemetry_rollup_retention,
        )
        seqs = dict.fromkeys(agent_ids, 0)
        stored = 0
        began = time.perf_counter()
        deadline = began + seconds
        while stored < target and time.perf_counter() < deadline:
            for agent_id in agent_ids:
                result = store.ingest(agent_id, batch_of(sample, seqs[agent_id] + 1, batch))
                seqs[agent_id] += batch
                stored += result.stored
                if stored >= target:
                    break
        elapsed = time.perf_counter() - began
        if store.totals().stored != stored:
            raise fanout.BenchmarkError(
                "the in-process store's counters disagree with ingest's results"
            )
    finally:
        db.dispose()
    return stored, elapsed


def fleet_summary(server: fanout.ControlPlane, admin_key: str) -> dict[str, int]:
    url = f"http://{fanout.HOST}:{server.http_port}/api/v1/fleet/summary"
    response = httpx.get(url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    if response.status_code != 200:
        raise fanout.BenchmarkError(
            f"GET {url} answered {response.status_code}: {response.text[:500]}"
        )
    telemetry: dict[str, int] = response.json()["telemetry"]
    return telemetry


def percentile_ms(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return round(ordered[max(1, math.ceil(fraction * len(ordered))) - 1] * 1000, 2)


def measure_ingest(count: int, args: argparse.Namespace, sample: Sample) -> IngestResult:
    with tempfile.TemporaryDirectory(prefix="outpost-telemetry-cp-") as tmp:
        fleet = fanout.prepare_fleet(Path(tmp) / "cp", count)
        baseline_db = Path(tmp) / "inproc" / "outpost.db"
        baseline_db.parent.mkdir()
        for path in fleet.data_dir.glob("outpost.db*"):  # the same enrolled fleet, separately
            shutil.copy(path, baseline_db.parent / path.name)
        print(
            f"K={count}: prepared {count} enrolled agents in {fleet.seconds:.1f} s",
            flush=True,
        )
        bytes_before = database_bytes(fleet.data_dir)
        server = fanout.ControlPlane(fleet.data_dir)
        try:
            stats, cp_cpu_s, self_cpu_s, cp_rss = asyncio.run(
                drive(fleet, server, sample, args.batch, args.seconds)
            )
            summary = fleet_summary(server, fleet.admin_key)
            server.check_alive()
            problems, problem_samples = server.problem_count, list(server.problems)
        finally:
            server.stop()
        bytes_after = database_bytes(fleet.data_dir)

        connected = sum(s.connected for s in stats)
        errors: dict[str, int] = {}
        for s in stats:
            if s.error is not None:
                errors[s.error] = errors.get(s.error, 0) + 1
        in_window = sum(s.acked_in_window for s in stats)
        total = in_window + sum(s.acked_after for s in stats)
        latencies = [t for s in stats for t in s.latencies_s]
        rate = in_window / args.seconds
        print(
            f"K={count}: {rate:.0f} samples/s over gRPC; in-process baseline on a copy of the "
            "database ...",
            flush=True,
        )
        inproc_samples, inproc_seconds = ingest_in_process(
            baseline_db, [a for a, _ in fleet.agents], sample, args.batch, total, args.seconds
        )
    inproc_rate = inproc_samples / inproc_seconds if inproc_seconds > 0 else math.nan
    stored = int(summary.get("stored", -1))
    return IngestResult(
        agents=count,
        batch=args.batch,
        seconds=args.seconds,
        metrics_per_sample=len(sample.metrics),
        connected=connected,
        errors=errors,
        acked_in_window=in_window,
        acked_total=total,
        wrong_acks=sum(s.wrong_acks for s in stats),
        rate=round(rate, 1),
        agents_supportable=int(rate * AGENT_INTERVAL_S),
        ack_p50_ms=percentile_ms(latencies, 0.50),
        ack_p99_ms=percentile_ms(latencies, 0.99),
        summary={k: int(v) for k, v in summary.items()},
        summary_matches=stored == total
        and summary.get("received") == total
        and not summary.get("duplicates")
        and not summary.get("rejected"),
        cp_cpu_percent=round(100 * cp_cpu_s / args.seconds, 1),
        cp_rss_kib=cp_rss,
        client_cpu_percent=round(100 * self_cpu_s / args.seconds, 1),
        db_bytes_per_sample=round((bytes_after - bytes_before) / max(stored, 1), 1),
        cp_log_problems=problems,
        cp_log_samples=problem_samples,
        inproc_samples=inproc_samples,
        inproc_seconds=round(inproc_seconds, 2),
        inproc_rate=round(inproc_rate, 1),
        ratio=round(rate / inproc_rate, 3) if inproc_rate > 0 else math.nan,
    )


def print_ingest(results: list[IngestResult]) -> None:
    if not results:
        return
    r0 = results[0]
    print()
    print(
        f"Control-plane ingestion: one `outpost serve` (SQLite) on {os.cpu_count()} CPUs, "
        f"K agents on mTLS Connect streams in one client process, one batch of {r0.batch} "
        f"sample(s) of {r0.metrics_per_sample} metrics in flight per agent, {r0.seconds:g} s; "
        "baseline: TelemetryStore.ingest in-process (one thread) on a copy of the database"
    )
    header = (
        f"{'agents':>6} {'samples/s':>10} {'agents@5s':>9} {'ack p50 ms':>10} "
        f"{'ack p99 ms':>10} {'CP CPU %':>8} {'client CPU %':>12} {'in-proc/s':>10} "
        f"{'ratio':>6} {'stored ok':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{r.agents:>6} {r.rate:>10.1f} {r.agents_supportable:>9} {r.ack_p50_ms:>10.2f} "
            f"{r.ack_p99_ms:>10.2f} {r.cp_cpu_percent:>8.1f} {r.client_cpu_percent:>12.1f} "
            f"{r.inproc_rate:>10.1f} {r.ratio:>6.3f} {'yes' if r.summary_matches else 'NO':>9}"
        )
    print()
    for r in results:
        print(
            f"K={r.agents}: {r.connected} streams, {r.acked_in_window} samples acked in the "
            f"window (+{r.acked_total - r.acked_in_window} in flight at its end); "
            f"/fleet/summary telemetry {r.summary}; {r.wrong_acks} acks with an unexpected "
            f"acked_seq; control plane RSS {r.cp_rss_kib / 1024:.0f} MiB at the end; "
            f"database +{r.db_bytes_per_sample:.0f} bytes per stored sample; in-process "
            f"{r.inproc_samples} samples in {r.inproc_seconds:.1f} s; "
            f"{r.cp_log_problems} warnings/errors in the control plane's log"
        )
        print(
            f"    agents supportable at one sample per {AGENT_INTERVAL_S:g} s = "
            f"{r.rate:.1f} samples/s x {AGENT_INTERVAL_S:g} s = {r.agents_supportable} "
            "(if telemetry were the control plane's only work)"
        )
        for error, times in r.errors.items():
            print(f"    stream error x{times}: {error}")
        for line in r.cp_log_samples:
            print(f"    control plane log: {line}")


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", type=float, default=5.0, help="agent sampling interval, s")
    parser.add_argument("--duration", type=float, default=60.0, help="agent measurement, s")
    parser.add_argument("--agents", default="50,200", help="stream counts K (comma-separated)")
    parser.add_argument("--batch", type=int, default=1, help="samples per TelemetryBatch")
    parser.add_argument("--seconds", type=float, default=30.0, help="ingestion window per K")
    parser.add_argument("--only", choices=("agent", "ingest"), help="run one part only")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    args = parser.parse_args()
    counts = [int(part) for part in args.agents.split(",") if part.strip()]
    if min([*counts, args.batch]) < 1 or min(args.interval, args.duration, args.seconds) <= 0:
        parser.error("--agents, --batch, --interval, --duration and --seconds must be positive")
    fanout.raise_nofile_limit()
    collect_garbage_less_often()  # as `outpost serve` does: also for the in-process baseline

    agent: AgentResult | None = None
    ingest: list[IngestResult] = []
    stopped = ""
    if args.only != "ingest":
        print(f"agent: measuring for {args.duration:g} s ...", flush=True)
        agent = measure_agent(args.interval, args.duration)
    if args.only != "agent":
        with tempfile.TemporaryDirectory(prefix="outpost-telemetry-disk-") as disk:
            sample = real_sample(Path(disk))
        for count in counts:
            try:
                ingest.append(measure_ingest(count, args, sample))
            except fanout.BenchmarkError as exc:
                stopped = f"stopped at K={count}: {exc}"
                break

    if agent is not None:
        print_agent(agent)
    print_ingest(ingest)
    if stopped:
        print()
        print(stopped)
    if args.json is not None:
        document: dict[str, Any] = {
            "goal": {"cpu_percent_of_core": GOAL_CPU_PERCENT, "memory_bytes": GOAL_MEMORY_BYTES},
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "grpc": grpc.__version__,
            },
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "agent": asdict(agent) if agent is not None else None,
            "ingest": [asdict(r) for r in ingest],
            "stopped": stopped or None,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
