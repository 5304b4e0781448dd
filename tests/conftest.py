"""Shared fixtures: the verified demo model and one real agent serving it for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.demo_model import default_cache_dir, ensure_demo_model
from agent.engine.protocol import ModelBackend
from agent.model_pool import BackendFactory
from agent.settings import ModelSettings
from tests.agent_harness import GenerationLog, RecordingBackend, RunningAgent, agent_settings

MODEL_ALIAS = "smol"
CONTEXT_LENGTH = 1024
# Greedy decoding keeps counting until max_tokens: a long generation on demand.
COUNTING_PROMPT = "1, 2, 3, 4, 5,"


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(default_cache_dir(os.environ))


def llama_factory(log: GenerationLog | None = None) -> BackendFactory:
    from agent.engine.llama_backend import LlamaCppBackend

    def factory(model: ModelSettings) -> ModelBackend:
        backend: ModelBackend = LlamaCppBackend(
            model.path,
            context_length=model.context_length,
            gpu_layers=0,
            threads=2,
            batch_size=model.batch_size,
        )
        return RecordingBackend(backend, log) if log is not None else backend

    return factory


@pytest.fixture(scope="session")
def generation_log() -> GenerationLog:
    return GenerationLog()


@pytest.fixture(scope="session")
def agent(demo_model: Path, generation_log: GenerationLog) -> Iterator[RunningAgent]:
    model = ModelSettings(
        path=demo_model, alias=MODEL_ALIAS, context_length=CONTEXT_LENGTH, queue_depth=16
    )
    with RunningAgent(agent_settings([model]), llama_factory(generation_log)) as running:
        running.wait_until_serving()
        yield running
