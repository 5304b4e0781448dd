"""Per-request LoRA adapters on one loaded model, batched with the base model's requests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.engine.llama_backend import LlamaCppBackend
from agent.settings import ModelSettings
from common.errors import InvalidArgument
from common.inference import Finished, TextDelta
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import GREEDY, llama_factory
from tests.lora_adapters import make_lora_adapter, not_gguf_adapter

pytestmark = pytest.mark.model

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def adapters(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_lora_adapter(demo_model, folder / "a.gguf", seed=1),
        "b": make_lora_adapter(demo_model, folder / "b.gguf", seed=2),
    }


@pytest.fixture(scope="module")
def backend(demo_model: Path, adapters: dict[str, Path]) -> Iterator[LlamaCppBackend]:
    engine = LlamaCppBackend(
        demo_model,
        context_length=256,
        gpu_layers=0,
        threads=2,
        batch_size=256,
        parallel=6,
        adapters=adapters,
    )
    yield engine
    engine.close()


def generate(backend: LlamaCppBackend, adapter: str) -> tuple[str, Finished]:
    text, finished = "", None
    sampling = replace(GREEDY, max_tokens=16, adapter=adapter)
    for event in backend.generate(backend.tokenize(PROMPT), sampling, threading.Event()):
        if isinstance(event, TextDelta):
            text += event.text
        else:
            finished = event
    assert finished is not None
    return text, finished


def test_two_adapters_and_the_base_served_together_match_each_served_alone(
    backend: LlamaCppBackend,
) -> None:
    assert backend.describe().adapters == ("a", "b")
    alone = {name: generate(backend, name) for name in ("", "a", "b")}
    assert len({text for text, _ in alone.values()}) == 3  # each adapter changes the output
    wanted = ["", "a", "b", "b", "a", ""]
    with ThreadPoolExecutor(len(wanted)) as pool:
        together = list(pool.map(lambda name: generate(backend, name), wanted))
    for name, (text, finished) in zip(wanted, together, strict=True):
        alone_text, alone_finished = alone[name]
        assert finished == alone_finished, name
        assert text == alone_text, name  # token for token
    assert backend.used_cells() == 0


def test_an_unknown_adapter_is_refused(backend: LlamaCppBackend) -> None:
    with pytest.raises(InvalidArgument, match="no adapter 'c'"):
        generate(backend, "c")


def test_a_file_that_is_not_an_adapter_fails_the_model_load(
    demo_model: Path, tmp_path: Path
) -> None:
    broken = not_gguf_adapter(tmp_path / "broken.gguf")
    with pytest.raises(RuntimeError, match=r"LoRA adapter 'x' .* cannot be loaded"):
        LlamaCppBackend(
            demo_model,
            context_length=256,
            gpu_layers=0,
            threads=2,
            batch_size=256,
            adapters={"x": broken},
        )


def test_the_agent_serves_adapters_as_alias_colon_name(
    demo_model: Path, adapters: dict[str, Path]
) -> None:
    model = ModelSettings(
        path=demo_model,
        alias="smol",
        context_length=256,
        parallel=3,
        adapters=tuple(adapters.items()),
    )
    with RunningAgent(agent_settings([model]), llama_factory()) as agent:
        agent.wait_until_serving()

        def complete(model_name: str) -> httpx.Response:
            body = {"model": model_name, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
            return httpx.post(f"{agent.http_base}/v1/completions", json=body, timeout=120)

        with ThreadPoolExecutor(3) as pool:
            base, with_a, with_b = pool.map(complete, ["smol", "smol:a", "smol:b"])
        unknown = complete("smol:nope")
        scraped = httpx.get(f"{agent.http_base}/metrics", timeout=30).text
    texts = [r.json()["choices"][0]["text"] for r in (base, with_a, with_b)]
    assert len(set(texts)) == 3
    assert unknown.status_code == 404
    assert "has no adapter 'nope' (adapters: a, b)" in unknown.json()["error"]["message"]
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
    }
    for adapter in ("a", "b"):
        labels = (("adapter", adapter), ("model", "smol"))
        assert samples[("outpost_adapter_requests_total", labels)] == 1.0
        assert samples[("outpost_adapter_completion_tokens_total", labels)] == 16.0
    # "smol:nope" was refused before it reached the model, like an unknown alias.
    assert samples[("outpost_model_requests_total", (("model", "smol"),))] == 3.0
