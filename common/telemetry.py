"""Telemetry domain types both sides use: metrics, samples and the metric registry; no protobuf.

Every metric an agent may send is named in `METRICS`, in Prometheus style with the `outpost_`
prefix. A spec's `unit` is the Prometheus base unit its name ends with (bytes, seconds,
celsius, watts, ratio) or "" for a plain number, so handing it to `prometheus-client` leaves the
name as it is. `validate_metric` is the one check both the agent (before sending) and the
control plane (before storing) apply.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType

LABEL_VALUE_MAX_CHARS = 128

# Bounds that no real machine reaches: values beyond them are absurd, not large.
_BYTES_MAX = float(2**60)  # 1 EiB of memory or disk
_COUNTER_MAX = float(2**64)  # a 64-bit counter, e.g. bytes through a NIC since boot
_CELSIUS_MIN, _CELSIUS_MAX = -100.0, 200.0
_WATTS_MAX = 10_000.0


class MetricKind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"


class Labels(Mapping[str, str]):
    """An immutable, hashable mapping of label names to values; equal to any equal Mapping."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __repr__(self) -> str:
        return f"Labels({self._items!r})"


@dataclass(frozen=True)
class Metric:
    """One reading: a registered name, a value and its labels (any Mapping, stored frozen)."""

    name: str
    value: float
    labels: Mapping[str, str] = field(default_factory=Labels)

    def __post_init__(self) -> None:
        if not isinstance(self.labels, Labels):
            object.__setattr__(self, "labels", Labels(self.labels))


@dataclass(frozen=True)
class Sample:
    """Everything one collection produced at one instant, with notes on what it could not read.

    Notes are short, human-readable reasons ("no NVIDIA driver: Driver Not Loaded").
    """

    collected_at: datetime
    metrics: tuple[Metric, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.collected_at.tzinfo is None or self.collected_at.utcoffset() is None:
            raise ValueError("Sample.collected_at must be timezone-aware")
        object.__setattr__(self, "collected_at", self.collected_at.astimezone(UTC))
        object.__setattr__(self, "metrics", tuple(self.metrics))
        object.__setattr__(self, "notes", tuple(self.notes))


@dataclass(frozen=True)
class SequencedSample:
    """A sample with the agent's sequence number: stored once per (agent, seq)."""

    seq: int
    sample: Sample


@dataclass(frozen=True)
class TelemetryBatch:
    samples: tuple[SequencedSample, ...]
    dropped: int = 0  # samples the agent's full buffer dropped since its last batch


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: MetricKind
    unit: str
    help: str
    labels: tuple[str, ...] = ()
    minimum: float = 0.0
    maximum: float = math.inf


def _gauge(
    name: str,
    unit: str,
    help: str,
    labels: tuple[str, ...] = (),
    minimum: float = 0.0,
    maximum: float = math.inf,
) -> MetricSpec:
    return MetricSpec(name, MetricKind.GAUGE, unit, help, labels, minimum, maximum)


def _counter(name: str, unit: str, help: str, labels: tuple[str, ...] = ()) -> MetricSpec:
    return MetricSpec(name, MetricKind.COUNTER, unit, help, labels, 0.0, _COUNTER_MAX)


_GPU = ("gpu", "name")
_MODEL = ("model",)
_ADAPTER = ("model", "adapter")

_SPECS = (
    # Machine (psutil).
    _gauge(
        "outpost_cpu_utilization_ratio",
        "ratio",
        "CPU busy time since the previous sample; cpu is 'total' or the core index.",
        ("cpu",),
        maximum=1.0,
    ),
    _gauge(
        "outpost_load_average",
        "",
        "System load average; period is 1m, 5m or 15m.",
        ("period",),
        maximum=1e6,
    ),
    _gauge("outpost_memory_used_bytes", "bytes", "Memory in use.", maximum=_BYTES_MAX),
    _gauge(
        "outpost_memory_available_bytes",
        "bytes",
        "Memory available to new processes without swapping.",
        maximum=_BYTES_MAX,
    ),
    _gauge("outpost_memory_total_bytes", "bytes", "Physical memory.", maximum=_BYTES_MAX),
    _gauge(
        "outpost_disk_used_bytes",
        "bytes",
        "Bytes used on the filesystem holding path.",
        ("path",),
        maximum=_BYTES_MAX,
    ),
    _gauge(
        "outpost_disk_free_bytes",
        "bytes",
        "Bytes free for unprivileged users on the filesystem holding path.",
        ("path",),
        maximum=_BYTES_MAX,
    ),
    _gauge(
        "outpost_disk_total_bytes",
        "bytes",
        "Size of the filesystem holding path.",
        ("path",),
        maximum=_BYTES_MAX,
    ),
    _counter(
        "outpost_network_received_bytes_total",
        "bytes",
        "Bytes received on a network interface since boot.",
        ("interface",),
    ),
    _counter(
        "outpost_network_sent_bytes_total",
        "bytes",
        "Bytes sent on a network interface since boot.",
        ("interface",),
    ),
    _gauge(
        "outpost_temperature_celsius",
        "celsius",
        "Hardware sensor temperature.",
        ("sensor", "label"),
        minimum=_CELSIUS_MIN,
        maximum=_CELSIUS_MAX,
    ),
    # NVIDIA GPUs (NVML).
    _gauge(
        "outpost_gpu_utilization_ratio",
        "ratio",
        "Share of the last sample period the GPU was busy.",
        _GPU,
        maximum=1.0,
    ),
    _gauge("outpost_gpu_memory_used_bytes", "bytes", "GPU memory in use.", _GPU, 0, _BYTES_MAX),
    _gauge("outpost_gpu_memory_total_bytes", "bytes", "GPU memory.", _GPU, 0, _BYTES_MAX),
    _gauge(
        "outpost_gpu_temperature_celsius",
        "celsius",
        "GPU core temperature.",
        _GPU,
        minimum=_CELSIUS_MIN,
        maximum=_CELSIUS_MAX,
    ),
    _gauge("outpost_gpu_power_watts", "watts", "GPU power draw.", _GPU, 0, _WATTS_MAX),
    _gauge(
        "outpost_gpu_power_limit_watts", "watts", "Enforced GPU power limit.", _GPU, 0, _WATTS_MAX
    ),
    _gauge("outpost_gpu_processes", "", "Compute processes on the GPU.", _GPU, 0, 1e6),
    # Inference, per model alias.
    _counter("outpost_model_requests_total", "", "Inference requests received.", _MODEL),
    _counter("outpost_model_errors_total", "", "Inference requests that failed.", _MODEL),
    _counter("outpost_model_prompt_tokens_total", "", "Prompt tokens processed.", _MODEL),
    _counter("outpost_model_completion_tokens_total", "", "Completion tokens generated.", _MODEL),
    _gauge(
        "outpost_model_tokens_per_second",
        "",
        "Recent completion tokens per second.",
        _MODEL,
        maximum=1e6,
    ),
    _gauge(
        "outpost_model_time_to_first_token_seconds",
        "seconds",
        "Recent time from request to first completion token.",
        _MODEL,
        maximum=86_400.0,
    ),
    _gauge("outpost_model_queue_depth", "", "Requests waiting for the model.", _MODEL, maximum=1e6),
    _gauge(
        "outpost_model_loaded", "", "1 when the model is loaded and serving, else 0.", _MODEL, 0, 1
    ),
    # Inference, per LoRA adapter of a model (requests that named "alias:adapter").
    _counter("outpost_adapter_requests_total", "", "Requests naming the adapter.", _ADAPTER),
    _counter("outpost_adapter_errors_total", "", "Requests naming it that failed.", _ADAPTER),
    _counter("outpost_adapter_prompt_tokens_total", "", "Prompt tokens processed.", _ADAPTER),
    _counter(
        "outpost_adapter_completion_tokens_total", "", "Completion tokens generated.", _ADAPTER
    ),
    _gauge(
        "outpost_adapter_tokens_per_second",
        "",
        "Recent completion tokens per second with the adapter.",
        _ADAPTER,
        maximum=1e6,
    ),
    _gauge(
        "outpost_adapter_time_to_first_token_seconds",
        "seconds",
        "Recent time from request to first completion token with the adapter.",
        _ADAPTER,
        maximum=86_400.0,
    ),
)

METRICS: Mapping[str, MetricSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})


def validate_metric(metric: Metric) -> str | None:
    """Why `metric` may not be sent or stored, or None when it is fine."""
    spec = METRICS.get(metric.name)
    if spec is None:
        return f"unknown metric {metric.name[:LABEL_VALUE_MAX_CHARS]!r}"
    value = metric.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{spec.name}: value is not a number: {type(value).__name__}"
    if not math.isfinite(value):
        return f"{spec.name}: value is not finite: {value}"
    if not spec.minimum <= value <= spec.maximum:
        return f"{spec.name}: value {value} outside [{spec.minimum}, {spec.maximum}]"
    if set(metric.labels) != set(spec.labels):
        found = sorted(metric.labels)[:10]
        return f"{spec.name}: labels {found} are not the expected {sorted(spec.labels)}"
    for key, label_value in metric.labels.items():
        if not isinstance(label_value, str):
            return f"{spec.name}: label {key} is not a string"
        if len(label_value) > LABEL_VALUE_MAX_CHARS:
            return f"{spec.name}: label {key} is longer than {LABEL_VALUE_MAX_CHARS} characters"
    return None
