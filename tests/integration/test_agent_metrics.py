"""`/metrics` on the agent: the machine and each model, parsed with prometheus-client."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_harness import RunningAgent
from tests.conftest import MODEL_ALIAS


def scrape(agent: RunningAgent) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{agent.http_base}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_metrics_cover_the_machine_and_count_the_models_work(agent: RunningAgent) -> None:
    model = (("model", MODEL_ALIAS),)
    before = scrape(agent)
    assert before[("outpost_model_loaded", model)] == 1.0
    assert before[("outpost_memory_total_bytes", ())] > 0
    assert 0.0 <= before[("outpost_cpu_utilization_ratio", (("cpu", "total"),))] <= 1.0
    response = httpx.post(
        f"{agent.http_base}/v1/completions",
        json={"model": MODEL_ALIAS, "prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    assert response.status_code == 200
    refused = httpx.post(
        f"{agent.http_base}/v1/completions", json={"model": MODEL_ALIAS, "prompt": ""}
    )
    assert refused.status_code == 400
    after = scrape(agent)
    requests = ("outpost_model_requests_total", model)
    assert after[requests] == before[requests] + 2
    errors = ("outpost_model_errors_total", model)
    assert after[errors] == before[errors] + 1
    completion = ("outpost_model_completion_tokens_total", model)
    assert after[completion] == before[completion] + 8
    assert after[("outpost_model_tokens_per_second", model)] > 0
    assert 0 < after[("outpost_model_time_to_first_token_seconds", model)] < 30
    assert after[("outpost_model_queue_depth", model)] == 0
