"""Machine collectors on psutil: CPU, memory, disk, network and temperature sensors.

Each collector takes a psutil-like `source` (the `psutil` module by default) so tests can feed it
recorded readings. The protocols below name exactly what each one calls.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, Protocol

import psutil

from agent.telemetry.collectors import Collector, MachineTelemetry, Reading
from agent.telemetry.gpu import GpuCollector
from common.telemetry import Metric

# lo on Linux, lo0 on BSD and macOS, "Loopback Pseudo-Interface 1" on Windows.
_LOOPBACK = re.compile(r"^(lo\d*|loopback.*)$", re.IGNORECASE)


class CpuSource(Protocol):
    def cpu_percent(self, interval: float | None, percpu: Literal[True]) -> list[float]: ...

    def getloadavg(self) -> tuple[float, float, float]: ...


class CpuCollector:
    """Per-core and total utilisation as ratios of busy time since the previous sample, and load.

    psutil measures utilisation between two calls: the first call after start only primes it and
    reads 0 on every core, so the first sample after the agent starts may read 0.
    """

    name = "cpu"

    def __init__(self, source: CpuSource = psutil) -> None:
        self._source = source

    def collect(self) -> Reading:
        metrics: list[Metric] = []
        notes: list[str] = []
        per_core = [p / 100.0 for p in self._source.cpu_percent(interval=None, percpu=True)]
        if per_core:
            total = sum(per_core) / len(per_core)
            metrics.append(Metric("outpost_cpu_utilization_ratio", total, {"cpu": "total"}))
        metrics.extend(
            Metric("outpost_cpu_utilization_ratio", ratio, {"cpu": str(index)})
            for index, ratio in enumerate(per_core)
        )
        try:
            loads = self._source.getloadavg()
        except (OSError, AttributeError) as exc:
            notes.append(f"load average unavailable: {exc}")
        else:
            metrics.extend(
                Metric("outpost_load_average", load, {"period": period})
                for period, load in zip(("1m", "5m", "15m"), loads, strict=True)
            )
        return Reading(tuple(metrics), tuple(notes))


class MemoryInfo(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def available(self) -> int: ...


class MemorySource(Protocol):
    def virtual_memory(self) -> MemoryInfo: ...


class MemoryCollector:
    name = "memory"

    def __init__(self, source: MemorySource = psutil) -> None:
        self._source = source

    def collect(self) -> Reading:
        memory = self._source.virtual_memory()
        return Reading(
            (
                Metric("outpost_memory_used_bytes", memory.used),
                Metric("outpost_memory_available_bytes", memory.available),
                Metric("outpost_memory_total_bytes", memory.total),
            )
        )


class DiskUsage(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def used(self) -> int: ...
    @property
    def free(self) -> int: ...


class DiskSource(Protocol):
    def disk_usage(self, path: str) -> DiskUsage: ...


class DiskCollector:
    """Used, free and total bytes of the filesystems holding the given paths (state, models).

    A path that does not exist (yet) or cannot be read is a note on each sample, not an error.
    """

    name = "disk"

    def __init__(self, paths: Sequence[Path], source: DiskSource = psutil) -> None:
        self._paths = tuple(dict.fromkeys(Path(p) for p in paths))
        self._source = source

    def collect(self) -> Reading:
        metrics: list[Metric] = []
        notes: list[str] = []
        for path in self._paths:
            try:
                usage = self._source.disk_usage(str(path))
            except FileNotFoundError:
                notes.append(f"disk path {path} does not exist")
                continue
            except OSError as exc:
                notes.append(f"disk path {path} unreadable: {exc.strerror or exc}")
                continue
            labels = {"path": str(path)}
            metrics += [
                Metric("outpost_disk_used_bytes", usage.used, labels),
                Metric("outpost_disk_free_bytes", usage.free, labels),
                Metric("outpost_disk_total_bytes", usage.total, labels),
            ]
        return Reading(tuple(metrics), tuple(notes))


class NetCounters(Protocol):
    @property
    def bytes_sent(self) -> int: ...
    @property
    def bytes_recv(self) -> int: ...


class NetworkSource(Protocol):
    def net_io_counters(self, pernic: Literal[True]) -> Mapping[str, NetCounters]: ...


class NetworkCollector:
    """Bytes received and sent per interface since boot (counters); loopback is left out."""

    name = "network"

    def __init__(self, source: NetworkSource = psutil) -> None:
        self._source = source

    def collect(self) -> Reading:
        metrics: list[Metric] = []
        for interface, counters in sorted(self._source.net_io_counters(pernic=True).items()):
            if _LOOPBACK.match(interface):
                continue
            labels = {"interface": interface}
            metrics += [
                Metric("outpost_network_received_bytes_total", counters.bytes_recv, labels),
                Metric("outpost_network_sent_bytes_total", counters.bytes_sent, labels),
            ]
        return Reading(tuple(metrics))


class TemperatureCollector:
    """Temperatures from psutil.sensors_temperatures() where the platform and machine have them.

    `source` is psutil-like; only Linux and FreeBSD psutil have sensors_temperatures. A machine
    without it, or without any sensor, gets one note on the first sample and silence after.
    A sensor entry without a label is named by its position (temp1, temp2, ... as in hwmon).
    """

    name = "temperature"

    def __init__(self, source: object = psutil) -> None:
        self._read = getattr(source, "sensors_temperatures", None)
        self._noted_absence = False

    def collect(self) -> Reading:
        if not callable(self._read):
            return self._absent("temperature sensors unsupported on this platform")
        sensors = self._read()
        metrics: list[Metric] = []
        for sensor, entries in sorted(sensors.items()):
            seen: set[str] = set()
            for index, entry in enumerate(entries, start=1):
                label = entry.label or f"temp{index}"
                if label in seen:
                    label = f"{label} #{index}"
                seen.add(label)
                metrics.append(
                    Metric(
                        "outpost_temperature_celsius",
                        float(entry.current),
                        {"sensor": str(sensor), "label": str(label)},
                    )
                )
        if not metrics:
            return self._absent("no temperature sensors found")
        return Reading(tuple(metrics))

    def _absent(self, note: str) -> Reading:
        if self._noted_absence:
            return Reading()
        self._noted_absence = True
        return Reading(notes=(note,))


def machine_collectors(disk_paths: Sequence[Path]) -> tuple[Collector, ...]:
    """The collectors of this machine on the real psutil and NVML, disk usage for `disk_paths`."""
    return (
        CpuCollector(),
        MemoryCollector(),
        DiskCollector(disk_paths),
        NetworkCollector(),
        TemperatureCollector(),
        GpuCollector(),
    )


def machine_telemetry(disk_paths: Sequence[Path]) -> MachineTelemetry:
    return MachineTelemetry(machine_collectors(disk_paths))
