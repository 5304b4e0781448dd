"""Registered metrics rendered for Prometheus and parsed back with prometheus-client."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from agent.telemetry.inference_metrics import ModelMetrics
from common.inference import Usage
from common.prometheus import exposition
from common.telemetry import Metric


def test_counters_and_gauges_round_trip() -> None:
    metrics = [
        Metric("outpost_model_requests_total", 7, {"model": "smol"}),
        Metric("outpost_model_requests_total", 2, {"model": "big"}),
        Metric("outpost_memory_total_bytes", 1024, {}),
    ]
    families = {
        f.name: f for f in text_string_to_metric_families(exposition(lambda: metrics).decode())
    }
    assert families["outpost_model_requests"].type == "counter"
    assert {
        (s.name, s.labels["model"], s.value)
        for s in families["outpost_model_requests"].samples
        if s.name.endswith("_total")
    } == {
        ("outpost_model_requests_total", "smol", 7.0),
        ("outpost_model_requests_total", "big", 2.0),
    }
    assert families["outpost_memory_total_bytes"].type == "gauge"
    assert families["outpost_memory_total_bytes"].samples[0].value == 1024.0


def test_model_metrics_count_and_time() -> None:
    metrics = ModelMetrics()
    metrics.admitted()
    metrics.rejected()
    metrics.finished(Usage(prompt_tokens=5, completion_tokens=11), ttft_s=0.25, decode_s=0.5)
    metrics.admitted()
    metrics.failed()
    snapshot = metrics.snapshot()
    assert (snapshot.requests, snapshot.errors) == (3, 2)
    assert (snapshot.prompt_tokens, snapshot.completion_tokens) == (5, 11)
    assert snapshot.tokens_per_second == 20.0  # 10 tokens after the first, in 0.5 s
    assert snapshot.time_to_first_token_s == 0.25


def test_adapter_requests_count_for_the_adapter_and_the_model() -> None:
    metrics = ModelMetrics(adapters=("support", "legal"))
    metrics.admitted("support")
    metrics.finished(Usage(prompt_tokens=4, completion_tokens=3), 0.1, 0.5, "support")
    metrics.admitted()
    metrics.finished(Usage(prompt_tokens=6, completion_tokens=9), 0.2, 1.0)
    metrics.rejected("support")
    metrics.admitted("unknown")  # not an adapter of the model: counted for the model only
    snapshot = metrics.snapshot()
    assert (snapshot.requests, snapshot.errors, snapshot.completion_tokens) == (4, 1, 12)
    support = snapshot.adapters["support"]
    assert (support.requests, support.errors) == (2, 1)
    assert (support.prompt_tokens, support.completion_tokens) == (4, 3)
    assert support.tokens_per_second == 4.0  # 2 tokens after the first, in 0.5 s
    assert snapshot.adapters["legal"].requests == 0
    assert set(snapshot.adapters) == {"support", "legal"}
