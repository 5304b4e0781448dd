"""Shared fixtures: the verified demo model, one real agent serving it, control-plane databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import SQLModel

from agent.demo_model import SMOLLM2, default_cache_dir, ensure_demo_model
from agent.engine.protocol import ModelBackend, ResolvedSampling
from agent.model_pool import BackendFactory
from agent.settings import ModelSettings
from controlplane.db.database import Database
from tests.agent_harness import GenerationLog, RecordingBackend, RunningAgent, agent_settings
from tests.postgres import PostgresServer, start_postgres

MODEL_ALIAS = "smol"
DEMO_SHA256 = SMOLLM2.sha256
CONTEXT_LENGTH = 1024
# Greedy decoding keeps counting until max_tokens: a long generation on demand.
COUNTING_PROMPT = "1, 2, 3, 4, 5,"
# Greedy decoding, as a backend takes it: tests replace() what they vary.
GREEDY = ResolvedSampling(
    max_tokens=32,
    temperature=0.0,
    top_p=1.0,
    top_k=40,
    min_p=0.05,
    repeat_penalty=1.0,
    seed=0,
    stop=(),
)
# The slowest test modules (measured with --durations=0), collected first: pytest-xdist hands
# modules to workers in collection order, so these start at once instead of running alone at
# the end of the suite.
SLOWEST_MODULES = (
    "tests/integration/test_federated_job.py",
    "tests/integration/test_federated_restart.py",
    "tests/packaging/test_debian_package.py",
    "tests/integration/test_model_distribution.py",
    "tests/integration/test_fleet_processes.py",
    "tests/integration/test_lora_training.py",
    "tests/integration/test_federated_job_failures.py",
    "tests/unit/test_models_api.py",
    "tests/unit/test_model_registry.py",
    "tests/integration/test_gguf_lora_verify.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slowest modules first; everything else keeps its order (the sort is stable)."""
    rank = {module: i for i, module in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model(default_cache_dir(os.environ))


@pytest.fixture(scope="session")
def f32_demo_model(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An F32 dequantized copy of the demo model (540 MB, made once per run): llama.cpp's
    logits on it agree with torch's, so GGUF LoRA exports are checked against it."""
    from common.federated.gguf_dequantize import dequantized_copy

    return dequantized_copy(demo_model, tmp_path_factory.mktemp("f32") / "smol-f32.gguf")


@pytest.fixture(scope="session")
def torch_cache(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model converted for torch once per run (the ~20 s a site spends once per base);
    tests seed agents' caches from it (seed_torch_cache) instead of converting at every site."""
    from agent.training.gguf_model import load_gguf_model

    cache = tmp_path_factory.mktemp("torch-cache") / DEMO_SHA256
    load_gguf_model(demo_model, threads=2, cache_dir=cache)
    return cache


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, migrated once per run: tests start from a copy."""
    path = tmp_path_factory.mktemp("template") / "outpost.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.migrate()
    finally:
        db.dispose()
    return path


def seed_torch_cache(torch_cache: Path, agent_state_dir: Path) -> None:
    """The agent's federated work directory holds the converted base already (hard links)."""
    target = agent_state_dir / "federated" / "torch-models" / torch_cache.name
    target.mkdir(parents=True)
    for item in torch_cache.iterdir():
        os.link(item, target / item.name)


def llama_factory(log: GenerationLog | None = None) -> BackendFactory:
    from agent.engine.llama_backend import LlamaCppBackend

    def factory(model: ModelSettings) -> ModelBackend:
        backend: ModelBackend = LlamaCppBackend(
            model.path,
            context_length=model.context_length,
            gpu_layers=0,
            threads=2,
            batch_size=model.batch_size,
            parallel=model.parallel,
            adapters=dict(model.adapters),
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


# -- control plane: real SQLite files and a real, throwaway PostgreSQL server ---------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Started on first use; a failure to start fails the tests that need it, with the reason."""
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, migrated once; `database` empties it for each test."""
    db = Database(postgres_url)
    try:
        db.migrate()
    finally:
        db.dispose()
    return postgres_url


def empty_all_tables(url: str) -> None:
    tables = ", ".join(f'"{name}"' for name in SQLModel.metadata.tables)
    db = Database(url)
    try:
        with db.engine.begin() as connection:
            connection.exec_driver_sql("SET LOCAL lock_timeout = '10s'")  # fail, never hang
            connection.exec_driver_sql(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")
    finally:
        db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated control-plane database with no rows: a new SQLite file, or PostgreSQL.

    PostgreSQL is migrated once per session and emptied (TRUNCATE) before each test, which
    is ten times quicker than a database per test.
    """
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
        db.migrate()
    else:
        url = request.getfixturevalue("migrated_postgres_url")
        empty_all_tables(url)
        db = Database(url)
    try:
        yield db
    finally:
        db.dispose()
