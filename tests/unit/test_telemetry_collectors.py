"""Machine and GPU collectors on recorded fixtures, and on this machine's real psutil and NVML."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import pytest

from agent.telemetry.collectors import MachineTelemetry, Reading
from agent.telemetry.gpu import GpuCollector
from agent.telemetry.machine import (
    CpuCollector,
    DiskCollector,
    MemoryCollector,
    NetworkCollector,
    TemperatureCollector,
    machine_collectors,
)
from common.telemetry import Metric, validate_metric
from tests.unit.test_import_layout import ROOT, imported_modules, python_files

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def values(reading: Reading) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted labels): value}: one entry per series, so duplicates would show."""
    found = {(m.name, tuple(sorted(m.labels.items()))): m.value for m in reading.metrics}
    assert len(found) == len(reading.metrics), "duplicate series"
    return found


def all_valid(metrics: Sequence[Metric]) -> None:
    reasons = [reason for m in metrics if (reason := validate_metric(m)) is not None]
    assert reasons == []


# Recorded psutil readings (a 4-core NUC), as psutil's own named tuples carry them.


class Svmem(NamedTuple):
    total: int
    available: int
    percent: float
    used: int
    free: int


class Sdiskusage(NamedTuple):
    total: int
    used: int
    free: int
    percent: float


class Snetio(NamedTuple):
    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int


class Shwtemp(NamedTuple):
    label: str
    current: float
    high: float | None
    critical: float | None


class RecordedPsutil:
    def __init__(self) -> None:
        self.cpu_calls = 0
        self.disk_paths: list[str] = []

    def cpu_percent(self, interval: float | None, percpu: Literal[True]) -> list[float]:
        assert interval is None  # never blocks the caller
        assert percpu is True
        self.cpu_calls += 1
        if self.cpu_calls == 1:
            return [0.0, 0.0, 0.0, 0.0]  # psutil's priming call
        return [10.0, 20.0, 30.0, 100.0]

    def getloadavg(self) -> tuple[float, float, float]:
        return (1.5, 0.75, 0.25)

    def virtual_memory(self) -> Svmem:
        return Svmem(16 * 2**30, 12 * 2**30, 25.0, 3 * 2**30, 10 * 2**30)

    def disk_usage(self, path: str) -> Sdiskusage:
        self.disk_paths.append(path)
        if path.startswith("/missing"):
            raise FileNotFoundError(2, "No such file or directory", path)
        if path == "/forbidden":
            raise PermissionError(13, "Permission denied", path)
        return Sdiskusage(500 * 10**9, 200 * 10**9, 275 * 10**9, 42.1)

    def net_io_counters(self, pernic: Literal[True]) -> dict[str, Snetio]:
        return {
            "lo": Snetio(5000, 5000, 50, 50),
            "eth0": Snetio(1_000, 9_000_000, 10, 7000),
            "wlp2s0": Snetio(20, 30, 1, 2),
        }

    def sensors_temperatures(self) -> dict[str, list[Shwtemp]]:
        return {
            "coretemp": [
                Shwtemp("Package id 0", 55.0, 100.0, 100.0),
                Shwtemp("Core 0", 51.0, 100.0, 100.0),
                Shwtemp("Core 0", 52.0, 100.0, 100.0),
            ],
            "acpitz": [Shwtemp("", 27.8, None, None), Shwtemp("", 29.8, None, None)],
        }


def test_cpu_reads_ratios_per_core_and_total_and_the_first_sample_may_be_zero() -> None:
    source = RecordedPsutil()
    collector = CpuCollector(source)
    first = values(collector.collect())
    assert first[("outpost_cpu_utilization_ratio", (("cpu", "total"),))] == 0.0
    second = values(collector.collect())
    ratio = "outpost_cpu_utilization_ratio"
    assert second[(ratio, (("cpu", "0"),))] == pytest.approx(0.1)
    assert second[(ratio, (("cpu", "3"),))] == pytest.approx(1.0)
    assert second[(ratio, (("cpu", "total"),))] == pytest.approx(0.4)
    assert second[("outpost_load_average", (("period", "1m"),))] == 1.5
    assert second[("outpost_load_average", (("period", "5m"),))] == 0.75
    assert second[("outpost_load_average", (("period", "15m"),))] == 0.25
    assert len(second) == 5 + 3


def test_memory_reads_used_available_and_total() -> None:
    reading = MemoryCollector(RecordedPsutil()).collect()
    assert values(reading) == {
        ("outpost_memory_used_bytes", ()): 3 * 2**30,
        ("outpost_memory_available_bytes", ()): 12 * 2**30,
        ("outpost_memory_total_bytes", ()): 16 * 2**30,
    }
    assert reading.notes == ()


def test_disk_reports_each_path_and_notes_the_missing_ones_without_raising() -> None:
    source = RecordedPsutil()
    paths = [Path("/var/lib/outpost"), Path("/missing/models"), Path("/forbidden")]
    collector = DiskCollector([*paths, Path("/var/lib/outpost")], source)
    for _ in range(2):  # a state, not an event: noted on every sample
        reading = collector.collect()
        assert values(reading) == {
            ("outpost_disk_used_bytes", (("path", "/var/lib/outpost"),)): 200 * 10**9,
            ("outpost_disk_free_bytes", (("path", "/var/lib/outpost"),)): 275 * 10**9,
            ("outpost_disk_total_bytes", (("path", "/var/lib/outpost"),)): 500 * 10**9,
        }
        assert reading.notes == (
            "disk path /missing/models does not exist",
            "disk path /forbidden unreadable: Permission denied",
        )
    assert source.disk_paths.count("/var/lib/outpost") == 2  # the duplicate path read once


def test_network_counts_bytes_per_interface_without_loopback() -> None:
    reading = NetworkCollector(RecordedPsutil()).collect()
    assert values(reading) == {
        ("outpost_network_received_bytes_total", (("interface", "eth0"),)): 9_000_000,
        ("outpost_network_sent_bytes_total", (("interface", "eth0"),)): 1_000,
        ("outpost_network_received_bytes_total", (("interface", "wlp2s0"),)): 30,
        ("outpost_network_sent_bytes_total", (("interface", "wlp2s0"),)): 20,
    }


def test_temperatures_name_unlabelled_and_repeated_sensors_apart() -> None:
    reading = TemperatureCollector(RecordedPsutil()).collect()
    celsius = "outpost_temperature_celsius"
    assert values(reading) == {
        (celsius, (("label", "Package id 0"), ("sensor", "coretemp"))): 55.0,
        (celsius, (("label", "Core 0"), ("sensor", "coretemp"))): 51.0,
        (celsius, (("label", "Core 0 #3"), ("sensor", "coretemp"))): 52.0,
        (celsius, (("label", "temp1"), ("sensor", "acpitz"))): 27.8,
        (celsius, (("label", "temp2"), ("sensor", "acpitz"))): 29.8,
    }
    all_valid(reading.metrics)


class NoSensorsPlatform:
    """psutil on macOS or Windows: no sensors_temperatures at all."""


class NoSensorsMachine:
    def sensors_temperatures(self) -> dict[str, list[Shwtemp]]:
        return {}


@pytest.mark.parametrize(
    ("source", "note"),
    [
        (NoSensorsPlatform(), "temperature sensors unsupported on this platform"),
        (NoSensorsMachine(), "no temperature sensors found"),
    ],
)
def test_no_temperature_sensors_is_noted_once(source: object, note: str) -> None:
    collector = TemperatureCollector(source)
    assert collector.collect() == Reading(notes=(note,))
    assert collector.collect() == Reading()
    assert collector.collect() == Reading()


# A recorded NVML: pynvml's calls, errors and return shapes, for two different GPUs.


class FakeNVMLError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)


class Utilization(NamedTuple):
    gpu: int
    memory: int


class MemoryInfo(NamedTuple):
    total: int
    free: int
    used: int


class ProcessInfo(NamedTuple):
    pid: int
    usedGpuMemory: int


class Handle(NamedTuple):
    position: int


T = TypeVar("T")


def ok(value: T | Exception) -> T:
    if isinstance(value, Exception):
        raise value
    return value


@dataclass
class FakeGpu:
    name: str | bytes | Exception
    util: Utilization | Exception
    memory: MemoryInfo | Exception
    temperature: int | Exception
    power_mw: int | Exception
    limit_mw: int | Exception
    processes: list[ProcessInfo] | Exception


class FakeNvml:
    NVML_TEMPERATURE_GPU = 0

    def __init__(self) -> None:
        self.init_calls = 0
        self.shutdown_calls = 0
        self.init_error: Exception | None = None
        self.gpus = [
            FakeGpu(
                name="NVIDIA RTX A4000",
                util=Utilization(37, 12),
                memory=MemoryInfo(16 * 2**30, 12 * 2**30, 4 * 2**30),
                temperature=61,
                power_mw=71_500,
                limit_mw=140_000,
                processes=[ProcessInfo(4242, 3 * 2**30), ProcessInfo(4343, 2**30)],
            ),
            FakeGpu(
                name=b"Tesla T4",  # older pynvml returned bytes
                util=Utilization(0, 0),
                memory=MemoryInfo(15 * 2**30, 15 * 2**30, 0),
                temperature=FakeNVMLError("Not Supported"),
                power_mw=9_800,
                limit_mw=70_000,
                processes=[],
            ),
        ]

    def _gpu(self, handle: object) -> FakeGpu:
        assert isinstance(handle, Handle)
        return self.gpus[handle.position]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        assert self.init_calls
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> object:
        if index >= len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return Handle(index)

    def nvmlDeviceGetName(self, handle: object) -> str | bytes:
        name = self._gpu(handle).name
        if isinstance(name, Exception):
            raise name
        return name

    def nvmlDeviceGetUtilizationRates(self, handle: object) -> Utilization:
        return ok(self._gpu(handle).util)

    def nvmlDeviceGetMemoryInfo(self, handle: object) -> MemoryInfo:
        return ok(self._gpu(handle).memory)

    def nvmlDeviceGetTemperature(self, handle: object, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return ok(self._gpu(handle).temperature)

    def nvmlDeviceGetPowerUsage(self, handle: object) -> int:
        return ok(self._gpu(handle).power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object) -> int:
        return ok(self._gpu(handle).limit_mw)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: object) -> list[ProcessInfo]:
        return ok(self._gpu(handle).processes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_two_gpus_are_read_and_a_failing_field_costs_only_itself() -> None:
    nvml = FakeNvml()
    reading = GpuCollector(nvml, clock=Clock()).collect()
    a4000 = (("gpu", "0"), ("name", "NVIDIA RTX A4000"))
    t4 = (("gpu", "1"), ("name", "Tesla T4"))
    assert values(reading) == {
        ("outpost_gpu_utilization_ratio", a4000): pytest.approx(0.37),
        ("outpost_gpu_memory_used_bytes", a4000): 4 * 2**30,
        ("outpost_gpu_memory_total_bytes", a4000): 16 * 2**30,
        ("outpost_gpu_temperature_celsius", a4000): 61,
        ("outpost_gpu_power_watts", a4000): pytest.approx(71.5),
        ("outpost_gpu_power_limit_watts", a4000): pytest.approx(140.0),
        ("outpost_gpu_processes", a4000): 2,
        ("outpost_gpu_utilization_ratio", t4): 0.0,
        ("outpost_gpu_memory_used_bytes", t4): 0,
        ("outpost_gpu_memory_total_bytes", t4): 15 * 2**30,
        ("outpost_gpu_power_watts", t4): pytest.approx(9.8),
        ("outpost_gpu_power_limit_watts", t4): pytest.approx(70.0),
        ("outpost_gpu_processes", t4): 0,
    }
    assert reading.notes == ("gpu 1 (Tesla T4): temperature unavailable: Not Supported",)
    all_valid(reading.metrics)
    assert nvml.init_calls == 1


def test_nvml_is_initialised_once_and_shut_down_on_close() -> None:
    nvml = FakeNvml()
    collector = GpuCollector(nvml, clock=Clock())
    for _ in range(3):
        collector.collect()
    assert nvml.init_calls == 1
    collector.close()
    collector.close()
    assert nvml.shutdown_calls == 1


def test_a_gpu_that_cannot_be_reached_does_not_hide_the_other() -> None:
    nvml = FakeNvml()
    lost = FakeNVMLError("GPU is lost")
    nvml.gpus[0].name = nvml.gpus[0].util = nvml.gpus[0].memory = lost
    reading = GpuCollector(nvml, clock=Clock()).collect()
    names = {m.labels["name"] for m in reading.metrics}
    assert names == {"unknown", "Tesla T4"}
    assert len([m for m in reading.metrics if m.labels["gpu"] == "1"]) == 6
    assert reading.notes[:3] == (
        "gpu 0: name unavailable: GPU is lost",
        "gpu 0 (unknown): utilization unavailable: GPU is lost",
        "gpu 0 (unknown): memory unavailable: GPU is lost",
    )


def test_without_a_driver_there_are_no_gpus_one_note_and_a_retry_every_5_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    nvml = FakeNvml()
    nvml.init_error = FakeNVMLError("Driver Not Loaded")
    clock = Clock()
    collector = GpuCollector(nvml, clock=clock)
    telemetry = MachineTelemetry([collector])
    note = "no NVIDIA driver: Driver Not Loaded"
    with caplog.at_level(logging.DEBUG):
        for _ in range(50):  # samples every 5 s for about 4 minutes
            sample = telemetry.collect(NOW)
            assert sample.metrics == ()
            assert sample.notes == (note,)
            clock.now += 5.0
        assert nvml.init_calls == 1
        clock.now = 1000.0 + 299.0
        collector.collect()
        assert nvml.init_calls == 1
        clock.now = 1000.0 + 300.0
        assert collector.collect() == Reading(notes=(note,))
        assert nvml.init_calls == 2
        clock.now += 60.0
        collector.collect()
        assert nvml.init_calls == 2
    # Neither a warning per sample nor an error loop: the reason is logged once.
    assert [r.getMessage() for r in caplog.records if note in r.getMessage()] == [
        f"telemetry: {note}; reporting no GPUs"
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # The driver loads (after an install, say): the next retry finds the GPUs.
    nvml.init_error = None
    clock.now += 300.0
    reading = collector.collect()
    assert nvml.init_calls == 3
    assert {m.labels["gpu"] for m in reading.metrics} == {"0", "1"}


@pytest.mark.parametrize(
    "error",
    [OSError("libnvidia-ml.so.1: cannot open shared object file"), RuntimeError("odd")],
)
def test_any_init_failure_means_no_gpus(error: Exception) -> None:
    nvml = FakeNvml()
    nvml.init_error = error
    reading = GpuCollector(nvml, clock=Clock()).collect()
    assert reading == Reading(notes=(f"no NVIDIA driver: {error}",))


def test_a_missing_nvml_package_means_no_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    reading = GpuCollector(clock=Clock()).collect()
    assert reading.metrics == ()
    assert len(reading.notes) == 1
    assert reading.notes[0].startswith("no NVIDIA driver: nvidia-ml-py is not installed")


def test_a_failing_gpu_count_is_a_note() -> None:
    nvml = FakeNvml()

    def broken_count() -> int:
        raise FakeNVMLError("Unknown Error")

    nvml.nvmlDeviceGetCount = broken_count  # type: ignore[method-assign]
    reading = GpuCollector(nvml, clock=Clock()).collect()
    assert reading == Reading(notes=("NVIDIA GPUs not countable: Unknown Error",))


# MachineTelemetry: every collector into one sample, whatever one of them does.


class Exploding:
    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    def collect(self) -> Reading:
        self.calls += 1
        raise ValueError(f"bad reading {self.calls % 2}")


class Absurd:
    name = "absurd"

    def collect(self) -> Reading:
        return Reading(
            (
                Metric("outpost_temperature_celsius", 3276.7, {"sensor": "x", "label": "y"}),
                Metric("outpost_memory_used_bytes", 1024),
            ),
            ("a note of its own",),
        )


def test_a_collector_that_raises_costs_a_note_and_one_warning_per_distinct_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exploding = Exploding()
    telemetry = MachineTelemetry([exploding, MemoryCollector(RecordedPsutil())])
    with caplog.at_level(logging.WARNING):
        samples = [telemetry.collect(NOW) for _ in range(6)]
    for index, sample in enumerate(samples, start=1):
        assert sample.collected_at == NOW
        assert sample.notes == (f"exploding collector failed: ValueError: bad reading {index % 2}",)
        assert len(sample.metrics) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "telemetry: exploding collector failed: ValueError: bad reading 1",
        "telemetry: exploding collector failed: ValueError: bad reading 0",
    ]


def test_metrics_that_fail_validation_are_dropped_with_a_note() -> None:
    sample = MachineTelemetry([Absurd()]).collect(NOW)
    assert sample.metrics == (Metric("outpost_memory_used_bytes", 1024),)
    assert sample.notes[0] == "a note of its own"
    assert sample.notes[1].startswith("absurd: dropped a metric: outpost_temperature_celsius")


def test_collect_without_a_time_stamps_now_in_utc() -> None:
    before = datetime.now(UTC)
    sample = MachineTelemetry([]).collect()
    assert before <= sample.collected_at <= datetime.now(UTC)
    assert sample == type(sample)(sample.collected_at)


# This machine: the real psutil and the real pynvml.


def test_the_real_machine_gives_a_valid_sample(tmp_path: Path) -> None:
    collectors = machine_collectors([tmp_path, tmp_path / "not-yet"])
    telemetry = MachineTelemetry(collectors)
    telemetry.collect(NOW)  # primes psutil's CPU counters
    sample = telemetry.collect(NOW)
    all_valid(sample.metrics)
    names = {m.name for m in sample.metrics}
    assert {
        "outpost_cpu_utilization_ratio",
        "outpost_load_average",
        "outpost_memory_used_bytes",
        "outpost_memory_total_bytes",
        "outpost_disk_used_bytes",
        "outpost_disk_free_bytes",
    } <= names
    assert not any("dropped" in note or "failed" in note for note in sample.notes)
    assert f"disk path {tmp_path / 'not-yet'} does not exist" in sample.notes
    for collector in collectors:
        if isinstance(collector, GpuCollector):
            collector.close()


def test_the_real_nvml_reports_gpus_or_a_reason_never_an_exception() -> None:
    collector = GpuCollector()
    try:
        reading = collector.collect()
        again = collector.collect()
    finally:
        collector.close()
    if reading.metrics:  # a machine with NVIDIA GPUs and a driver
        all_valid(reading.metrics)
        assert {m.name for m in again.metrics} == {m.name for m in reading.metrics}
    else:  # this machine: no driver, no library
        assert len(reading.notes) == 1
        assert reading.notes[0].startswith("no NVIDIA driver: ")
        assert again == reading


def test_only_the_agents_telemetry_package_imports_psutil_or_nvml() -> None:
    offenders = {}
    for package in ("agent", "controlplane", "common"):
        for path in python_files(ROOT / package):
            relative = path.relative_to(ROOT)
            if relative.parts[:2] == ("agent", "telemetry"):
                continue
            found = [m for m in imported_modules(path) if m.split(".")[0] in {"psutil", "pynvml"}]
            if found:
                offenders[str(relative)] = found
    assert offenders == {}
