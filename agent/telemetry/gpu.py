"""NVIDIA GPU collector on NVML (the nvidia-ml-py package, module `pynvml`).

NVML is initialised once, on the first sample. A machine without an NVIDIA driver (or without
the library) reports no GPUs and one note with the reason on every sample; initialisation is
retried at most every `retry_interval` seconds (5 minutes), and the failure is logged once.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from agent.telemetry.collectors import Reading
from common.telemetry import Metric

log = logging.getLogger(__name__)

INIT_RETRY_SECONDS = 300.0


class Utilization(Protocol):
    @property
    def gpu(self) -> int: ...


class MemoryInfo(Protocol):
    @property
    def total(self) -> int: ...
    @property
    def used(self) -> int: ...


class Nvml(Protocol):
    """The part of pynvml the collector calls, under its names; handles are opaque."""

    @property
    def NVML_TEMPERATURE_GPU(self) -> int: ...

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int, /) -> object: ...
    def nvmlDeviceGetName(self, handle: object, /) -> str | bytes: ...
    def nvmlDeviceGetUtilizationRates(self, handle: object, /) -> Utilization: ...
    def nvmlDeviceGetMemoryInfo(self, handle: object, /) -> MemoryInfo: ...
    def nvmlDeviceGetTemperature(self, handle: object, sensor: int, /) -> int: ...
    def nvmlDeviceGetPowerUsage(self, handle: object, /) -> int: ...
    def nvmlDeviceGetEnforcedPowerLimit(self, handle: object, /) -> int: ...
    def nvmlDeviceGetComputeRunningProcesses(self, handle: object, /) -> Sequence[object]: ...


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # pynvml's __str__ calls into the library, which may be absent
        text = ""
    return text or type(exc).__name__


class GpuCollector:
    """Per NVIDIA GPU: name, utilisation, memory used/total, temperature, power, processes.

    `nvml` is a pynvml-like module (pynvml itself by default, imported on first use); `clock` is
    monotonic seconds. A field that raises for one GPU is skipped with a note naming the GPU and
    the field; the other fields and GPUs are still reported.
    """

    name = "gpu"

    def __init__(
        self,
        nvml: Nvml | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_interval: float = INIT_RETRY_SECONDS,
    ) -> None:
        self._nvml = nvml
        self._clock = clock
        self._retry_interval = retry_interval
        self._initialized = False
        self._init_failure = ""
        self._next_init_at: float | None = None

    def collect(self) -> Reading:
        nvml = self._ensure_initialized()
        if nvml is None:
            return Reading(notes=(self._init_failure,))
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception as exc:
            return Reading(notes=(f"NVIDIA GPUs not countable: {_describe(exc)}",))
        metrics: list[Metric] = []
        notes: list[str] = []
        for index in range(count):
            self._collect_gpu(nvml, index, metrics, notes)
        return Reading(tuple(metrics), tuple(notes))

    def close(self) -> None:
        if self._initialized and self._nvml is not None:
            self._initialized = False
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", _describe(exc))

    def _ensure_initialized(self) -> Nvml | None:
        if self._initialized:
            return self._nvml
        now = self._clock()
        if self._next_init_at is not None and now < self._next_init_at:
            return None
        self._next_init_at = now + self._retry_interval
        try:
            if self._nvml is None:
                self._nvml = _import_pynvml()
            self._nvml.nvmlInit()
        except ImportError as exc:
            self._fail(f"no NVIDIA driver: nvidia-ml-py is not installed ({exc})")
            return None
        except Exception as exc:
            # NVMLError (Driver Not Loaded, LibraryNotFound, ...), OSError from loading the
            # library; anything else a broken install raises is the same fact: no GPUs here.
            self._fail(f"no NVIDIA driver: {_describe(exc)}")
            return None
        self._initialized = True
        self._init_failure = ""
        log.info("telemetry: NVML initialised")
        return self._nvml

    def _fail(self, reason: str) -> None:
        if reason != self._init_failure:
            log.info("telemetry: %s; reporting no GPUs", reason)
        self._init_failure = reason

    def _collect_gpu(self, nvml: Nvml, index: int, metrics: list[Metric], notes: list[str]) -> None:
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:
            notes.append(f"gpu {index}: unavailable: {_describe(exc)}")
            return
        try:
            raw_name = nvml.nvmlDeviceGetName(handle)
            name = raw_name.decode(errors="replace") if isinstance(raw_name, bytes) else raw_name
        except Exception as exc:
            name = "unknown"
            notes.append(f"gpu {index}: name unavailable: {_describe(exc)}")
        labels = {"gpu": str(index), "name": name}
        for what, read in _FIELDS:
            try:
                values = read(nvml, handle)
            except Exception as exc:
                notes.append(f"gpu {index} ({name}): {what} unavailable: {_describe(exc)}")
                continue
            metrics.extend(Metric(metric, value, labels) for metric, value in values)


_Values = list[tuple[str, float]]


def _utilization(nvml: Nvml, handle: object) -> _Values:
    return [("outpost_gpu_utilization_ratio", nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100)]


def _memory(nvml: Nvml, handle: object) -> _Values:
    info = nvml.nvmlDeviceGetMemoryInfo(handle)
    return [
        ("outpost_gpu_memory_used_bytes", info.used),
        ("outpost_gpu_memory_total_bytes", info.total),
    ]


def _temperature(nvml: Nvml, handle: object) -> _Values:
    celsius = nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    return [("outpost_gpu_temperature_celsius", celsius)]


def _power(nvml: Nvml, handle: object) -> _Values:
    return [("outpost_gpu_power_watts", nvml.nvmlDeviceGetPowerUsage(handle) / 1000)]


def _power_limit(nvml: Nvml, handle: object) -> _Values:
    return [("outpost_gpu_power_limit_watts", nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000)]


def _processes(nvml: Nvml, handle: object) -> _Values:
    return [("outpost_gpu_processes", len(nvml.nvmlDeviceGetComputeRunningProcesses(handle)))]


# Each field is read on its own: one that raises (Not Supported, say) costs only itself.
# NVML reports power in milliwatts.
_FIELDS: tuple[tuple[str, Callable[[Nvml, object], _Values]], ...] = (
    ("utilization", _utilization),
    ("memory", _memory),
    ("temperature", _temperature),
    ("power", _power),
    ("power limit", _power_limit),
    ("processes", _processes),
)


def _import_pynvml() -> Nvml:
    module: Nvml = importlib.import_module("pynvml")
    return module
