"""A LoRA adapter from the registry, assigned with its base model, reaches an agent and serves."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from agent.engine.llama_backend import LlamaCppBackend
from common.inference import TextDelta
from tests.conftest import GREEDY
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_model_distribution import (
    DEMO_SHA256,
    agent_id_of,
    assign,
    upload,
    wait_state,
)
from tests.lora_adapters import make_lora_adapter

pytestmark = pytest.mark.model

PROMPT = "The capital of France is"
TOKENS = 12


def served_alone(model: Path, adapter: Path) -> str:
    """The greedy text of PROMPT with `adapter`, from the engine in this process."""
    backend = LlamaCppBackend(
        model, context_length=512, gpu_layers=0, threads=2, batch_size=512,
        adapters={"support": adapter},
    )  # fmt: skip
    try:
        sampling = replace(GREEDY, max_tokens=TOKENS, adapter="support")
        events = backend.generate(backend.tokenize(PROMPT), sampling, threading.Event())
        return "".join(e.text for e in events if isinstance(e, TextDelta))
    finally:
        backend.close()


def completion(base: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0}
    return httpx.post(f"{base}/v1/completions", json=body, timeout=60)


def test_an_assigned_adapter_is_fetched_verified_and_served_per_request(
    tmp_path: Path, demo_model: Path
) -> None:
    adapter_file = make_lora_adapter(demo_model, tmp_path / "support.gguf", seed=7)
    expected = served_alone(demo_model, adapter_file)
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        upload(cp, demo_model, name="smollm2")
        adapter = upload(cp, adapter_file, name="support-lora")
        assert adapter["kind"] == "adapter"
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, cp.create_token(site="hq"), cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            agent_id = agent_id_of(cp)
            response = assign(
                cp,
                model="smollm2",
                agent=agent_id,
                alias="smol",
                context_length=512,
                adapters={"support": "support-lora"},
            )
            assert response.status_code == 201, response.text
            wait_state(cp, agent_id, DEMO_SHA256, "ready")

            def adapter_served() -> bool:
                return completion(running.http_base, "smol:support").status_code == 200

            wait_until(adapter_served, "the agent serves smol:support", timeout=120)
            with_adapter = completion(running.http_base, "smol:support").json()
            base = completion(running.http_base, "smol").json()
    assert with_adapter["choices"][0]["text"] == expected
    assert base["choices"][0]["text"] != expected
