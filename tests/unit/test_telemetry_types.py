"""Telemetry domain types: frozen metrics and samples, the metric registry, validation."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType

import pytest

from common.telemetry import (
    LABEL_VALUE_MAX_CHARS,
    METRICS,
    Labels,
    Metric,
    MetricKind,
    Sample,
    validate_metric,
)

GPU = {"gpu": "0", "name": "NVIDIA L4"}


def test_metric_is_frozen_and_hashable_whatever_mapping_it_was_given() -> None:
    from_dict = Metric("outpost_cpu_utilization_ratio", 0.5, {"cpu": "total"})
    from_proxy = Metric("outpost_cpu_utilization_ratio", 0.5, MappingProxyType({"cpu": "total"}))
    assert from_dict == from_proxy
    assert hash(from_dict) == hash(from_proxy)
    assert len({from_dict, from_proxy}) == 1
    assert isinstance(from_dict.labels, Labels)
    assert from_dict.labels == {"cpu": "total"}
    with pytest.raises(dataclasses.FrozenInstanceError):
        from_dict.value = 1.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        from_dict.labels["cpu"] = "0"  # type: ignore[index]


def test_labels_given_as_a_dict_are_copied_not_shared() -> None:
    labels = {"cpu": "total"}
    metric = Metric("outpost_cpu_utilization_ratio", 0.5, labels)
    labels["cpu"] = "3"
    assert metric.labels == {"cpu": "total"}


def test_a_metric_without_labels_has_empty_ones() -> None:
    assert Metric("outpost_memory_used_bytes", 1.0).labels == {}


def test_sample_keeps_utc_and_refuses_naive_times() -> None:
    berlin = timezone(timedelta(hours=1))
    sample = Sample(datetime(2025, 1, 1, 13, 0, tzinfo=berlin), [], [])  # type: ignore[arg-type]
    assert sample.collected_at == datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert sample.collected_at.tzinfo is UTC
    assert sample.metrics == ()
    assert sample.notes == ()
    with pytest.raises(ValueError, match="timezone-aware"):
        Sample(datetime(2025, 1, 1, 12, 0))


def test_registry_names_every_metric_of_the_issue_in_prometheus_style() -> None:
    expected_labels = {
        "outpost_cpu_utilization_ratio": ("cpu",),
        "outpost_load_average": ("period",),
        "outpost_memory_used_bytes": (),
        "outpost_memory_total_bytes": (),
        "outpost_disk_used_bytes": ("path",),
        "outpost_disk_free_bytes": ("path",),
        "outpost_network_received_bytes_total": ("interface",),
        "outpost_network_sent_bytes_total": ("interface",),
        "outpost_temperature_celsius": ("sensor", "label"),
        "outpost_gpu_utilization_ratio": ("gpu", "name"),
        "outpost_gpu_memory_used_bytes": ("gpu", "name"),
        "outpost_gpu_memory_total_bytes": ("gpu", "name"),
        "outpost_gpu_temperature_celsius": ("gpu", "name"),
        "outpost_gpu_power_watts": ("gpu", "name"),
        "outpost_gpu_power_limit_watts": ("gpu", "name"),
        "outpost_gpu_processes": ("gpu", "name"),
        "outpost_model_requests_total": ("model",),
        "outpost_model_errors_total": ("model",),
        "outpost_model_prompt_tokens_total": ("model",),
        "outpost_model_completion_tokens_total": ("model",),
        "outpost_model_tokens_per_second": ("model",),
        "outpost_model_time_to_first_token_seconds": ("model",),
        "outpost_model_queue_depth": ("model",),
        "outpost_model_loaded": ("model",),
    }
    for name, labels in expected_labels.items():
        assert METRICS[name].labels == labels, name
    for name, spec in METRICS.items():
        assert spec.name == name
        assert re.fullmatch(r"outpost_[a-z0-9_]+", name), name
        assert spec.help, name
        assert "\n" not in spec.help, name
        assert spec.minimum < spec.maximum, name
        # Counters end in _total; a unit, when given, is the suffix the name already carries.
        assert name.endswith("_total") == (spec.kind is MetricKind.COUNTER), name
        if spec.unit:
            assert name.removesuffix("_total").endswith("_" + spec.unit), name


def test_registry_cannot_be_changed() -> None:
    with pytest.raises(TypeError):
        METRICS["outpost_made_up"] = METRICS["outpost_load_average"]  # type: ignore[index]


@pytest.mark.parametrize(
    "metric",
    [
        Metric("outpost_cpu_utilization_ratio", 0.0, {"cpu": "total"}),
        Metric("outpost_cpu_utilization_ratio", 1.0, {"cpu": "15"}),
        Metric("outpost_memory_used_bytes", 8 * 2**30),
        Metric("outpost_memory_total_bytes", 0),
        Metric("outpost_network_sent_bytes_total", 2**63, {"interface": "eth0"}),
        Metric("outpost_temperature_celsius", -12.5, {"sensor": "acpitz", "label": "temp1"}),
        Metric("outpost_gpu_power_watts", 72.3, GPU),
        Metric("outpost_model_loaded", 1, {"model": "smol"}),
        Metric("outpost_disk_free_bytes", 1.0, {"path": "x" * LABEL_VALUE_MAX_CHARS}),
    ],
    ids=lambda m: m.name,
)
def test_plausible_metrics_pass(metric: Metric) -> None:
    assert validate_metric(metric) is None


@pytest.mark.parametrize(
    ("metric", "reason"),
    [
        (Metric("outpost_load_average", math.nan, {"period": "1m"}), "not finite"),
        (Metric("outpost_load_average", math.inf, {"period": "1m"}), "not finite"),
        (Metric("outpost_memory_used_bytes", -math.inf), "not finite"),
        (Metric("outpost_memory_used_bytes", -1), "outside"),
        (Metric("outpost_disk_used_bytes", -4096, {"path": "/var"}), "outside"),
        (Metric("outpost_memory_total_bytes", 2.0**70), "outside"),
        (Metric("outpost_cpu_utilization_ratio", 1.5, {"cpu": "total"}), "outside"),
        (Metric("outpost_gpu_utilization_ratio", -0.1, GPU), "outside"),
        (Metric("outpost_gpu_temperature_celsius", 3276.7, GPU), "outside"),
        (Metric("outpost_model_requests_total", -3, {"model": "smol"}), "outside"),
        (Metric("outpost_made_up_total", 1.0), "unknown metric"),
        (Metric("cpu_utilization_ratio", 0.5, {"cpu": "total"}), "unknown metric"),
        (Metric("outpost_cpu_utilization_ratio", 0.5), "labels"),
        (Metric("outpost_cpu_utilization_ratio", 0.5, {"core": "0"}), "labels"),
        (Metric("outpost_memory_used_bytes", 1.0, {"host": "a"}), "labels"),
        (Metric("outpost_gpu_power_watts", 70.0, {"gpu": "0"}), "labels"),
        (
            Metric("outpost_disk_free_bytes", 1.0, {"path": "x" * (LABEL_VALUE_MAX_CHARS + 1)}),
            "longer than 128",
        ),
        (Metric("outpost_load_average", "1.0", {"period": "1m"}), "not a number"),  # type: ignore[arg-type]
        (Metric("outpost_model_loaded", True, {"model": "smol"}), "not a number"),
    ],
    ids=lambda x: str(x)[:60] if isinstance(x, str) else None,
)
def test_bad_metrics_are_rejected_with_a_reason(metric: Metric, reason: str) -> None:
    found = validate_metric(metric)
    assert found is not None
    assert reason in found
