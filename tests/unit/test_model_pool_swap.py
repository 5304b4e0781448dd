"""ModelPool swaps: a changed model loads beside the running one, replacing it only if healthy."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import gguf
import numpy
import pytest

from agent.engine.protocol import BackendDescription, ModelBackend, ResolvedSampling
from agent.model_pool import ModelPool
from agent.settings import ModelSettings
from common.control import ItemState
from common.inference import ChatMessage, Finished, FinishReason, GenerationEvent, TextDelta, Usage
from tests.model_variants import nan_weights_copy

T = TypeVar("T")
# Only a safety net so that a broken test fails instead of hanging.
TIMEOUT_S = 10.0
SAMPLING = ResolvedSampling(
    max_tokens=8,
    temperature=0.0,
    top_p=1.0,
    top_k=1,
    min_p=0.0,
    repeat_penalty=1.0,
    seed=1,
    stop=(),
)


def tiny_gguf(path: Path, label: str, floats: int = 256) -> Path:
    """A small, valid GGUF file whose bytes depend on `label` (so its sha256 does)."""
    digest = hashlib.sha256(label.encode()).digest()
    values = numpy.frombuffer(digest * (floats * 4 // len(digest) + 1), dtype=numpy.float32)
    writer = gguf.GGUFWriter(str(path), "fake")
    writer.add_string("general.name", label)
    writer.add_tensor("weights", values[:floats].copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class FakeBackend:
    """Answers every prompt with the name of the file it was loaded from."""

    def __init__(self, models: FakeModels, settings: ModelSettings) -> None:
        self._models = models
        self.path = settings.path
        self._context_length = settings.context_length

    def describe(self) -> BackendDescription:
        return BackendDescription(
            architecture="fake", context_length=self._context_length, vocab_size=32
        )

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return "".join(m.content for m in messages)

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def generate(
        self, prompt_tokens: Sequence[int], sampling: ResolvedSampling, cancelled: threading.Event
    ) -> Iterator[GenerationEvent]:
        yield TextDelta(self.path.name)
        if self._models.hold_generations:
            self._models.generating.set()
            if not self._models.resume_generations.wait(TIMEOUT_S):
                raise TimeoutError("the test never resumed the generation")
        yield Finished(FinishReason.STOP, Usage(len(prompt_tokens), 1))

    def self_test(self) -> None:
        reason = self._models.unhealthy.get(self.path.name)
        if reason is not None:
            raise RuntimeError(reason)

    def close(self) -> None:
        with self._models.lock:
            self._models.closed.append(self.path.name)


class FakeModels:
    """A backend factory without llama.cpp: records loads and closes (by file name); loads of
    names in `unloadable` raise, self-tests of names in `unhealthy` raise, and while
    `load_gate` is set for a name its load waits for the gate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.loaded: list[str] = []
        self.closed: list[str] = []
        self.unloadable: dict[str, str] = {}
        self.unhealthy: dict[str, str] = {}
        self.load_gates: dict[str, threading.Event] = {}
        self.loading = threading.Event()
        self.hold_generations = False
        self.generating = threading.Event()
        self.resume_generations = threading.Event()

    def __call__(self, settings: ModelSettings) -> ModelBackend:
        name = settings.path.name
        with self.lock:
            self.loaded.append(name)
        gate = self.load_gates.get(name)
        if gate is not None:
            self.loading.set()
            if not gate.wait(TIMEOUT_S):
                raise TimeoutError("the test never opened the load gate")
        if name in self.unloadable:
            raise RuntimeError(self.unloadable[name])
        return FakeBackend(self, settings)


def run(work: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(work(), TIMEOUT_S * 3))


def settings(path: Path, alias: str = "smol", queue_depth: int = 4) -> ModelSettings:
    return ModelSettings(path=path, alias=alias, context_length=256, queue_depth=queue_depth)


async def until(predicate: Callable[[], bool]) -> None:
    """Waits for a condition another task or thread makes true, with a deadline."""
    deadline = asyncio.get_running_loop().time() + TIMEOUT_S
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never became true"
        await asyncio.sleep(0.01)


async def answer(pool: ModelPool, alias: str = "smol") -> str:
    """What the alias answers now (the name of the file its backend was loaded from)."""
    stream = pool.runner(alias).start([1, 2, 3], SAMPLING)
    return "".join([e.text async for e in stream if isinstance(e, TextDelta)])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {name: tiny_gguf(tmp_path / f"{name}.gguf", name) for name in ("v1", "v2", "v3")}


def test_a_changed_model_loads_beside_the_old_one_which_answers_until_the_swap(
    files: dict[str, Path],
) -> None:
    models = FakeModels()

    async def main() -> None:
        pool = ModelPool([settings(files["v1"])], models)
        await pool.load_all()
        assert await answer(pool) == "v1.gguf"
        gate = models.load_gates["v2.gguf"] = threading.Event()
        applying = asyncio.create_task(pool.apply([settings(files["v2"])]))
        assert await asyncio.to_thread(models.loading.wait, TIMEOUT_S)
        # v2 is being loaded: v1 still answers and is still open.
        assert await answer(pool) == "v1.gguf"
        assert models.closed == []
        assert pool.served("smol") == settings(files["v1"])
        gate.set()
        statuses = await applying
        assert [(s.name, s.state, s.error) for s in statuses] == [("smol", ItemState.READY, "")]
        assert await answer(pool) == "v2.gguf"
        assert models.closed == ["v1.gguf"]
        assert pool.served("smol") == settings(files["v2"])
        pool.close()

    run(main)
    assert models.loaded == ["v1.gguf", "v2.gguf"]


def test_the_old_version_finishes_its_running_generation_before_it_is_closed(
    files: dict[str, Path],
) -> None:
    models = FakeModels()

    async def main() -> None:
        pool = ModelPool([settings(files["v1"])], models)
        await pool.load_all()
        models.hold_generations = True
        old_stream = pool.runner("smol").start([1], SAMPLING)
        first = await anext(old_stream)
        assert first == TextDelta("v1.gguf")
        assert await asyncio.to_thread(models.generating.wait, TIMEOUT_S)
        applying = asyncio.create_task(pool.apply([settings(files["v2"])]))

        # The new runner takes requests while the old one finishes its generation.
        await until(lambda: pool.served("smol") == settings(files["v2"]))
        assert not applying.done()
        assert models.closed == []
        models.resume_generations.set()
        rest = [event async for event in old_stream]
        assert isinstance(rest[-1], Finished)
        assert rest[-1].reason == FinishReason.STOP
        await applying
        assert models.closed == ["v1.gguf"]
        models.hold_generations = False
        assert await answer(pool) == "v2.gguf"
        pool.close()

    run(main)


@pytest.mark.parametrize(
    ("failure", "message"),
    [
        ("unhealthy", "failed its health prompt: logits are NaN"),
        ("unloadable", "failed to load: tensor blk.0 is missing"),
    ],
)
def test_a_failing_new_version_leaves_the_old_one_serving(
    files: dict[str, Path], failure: str, message: str
) -> None:
    models = FakeModels()
    reason = message.split(": ", 1)[1]
    getattr(models, failure)["v2.gguf"] = reason

    async def main() -> None:
        pool = ModelPool([settings(files["v1"])], models)
        await pool.load_all()
        (status,) = await pool.apply([settings(files["v2"])])
        assert status.state == ItemState.FAILED
        assert status.name == "smol"
        assert message in status.error
        assert str(files["v2"]) in status.error
        assert pool.served("smol") == settings(files["v1"])
        assert await answer(pool) == "v1.gguf"
        assert [i.ready for i in pool.describe()] == [True]
        # The next good version replaces v1 and clears the failure.
        (status,) = await pool.apply([settings(files["v3"])])
        assert (status.state, status.error) == (ItemState.READY, "")
        assert await answer(pool) == "v3.gguf"
        pool.close()

    run(main)
    # A backend that loaded but failed its health prompt is closed at once; v1 after v3 took over.
    expected_closed = ["v2.gguf", "v1.gguf"] if failure == "unhealthy" else ["v1.gguf"]
    assert models.closed[: len(expected_closed)] == expected_closed


def test_a_file_that_is_not_gguf_is_refused_before_any_load(
    files: dict[str, Path], tmp_path: Path
) -> None:
    models = FakeModels()
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"<html>not a model</html>")

    async def main() -> None:
        pool = ModelPool([settings(files["v1"])], models)
        await pool.load_all()
        (status,) = await pool.apply([settings(bogus)])
        assert status.state == ItemState.FAILED
        assert "is not a GGUF file" in status.error
        assert await answer(pool) == "v1.gguf"
        pool.close()

    run(main)
    assert models.loaded == ["v1.gguf"]


def test_a_first_version_that_fails_serves_nothing_and_reports_why(files: dict[str, Path]) -> None:
    models = FakeModels()
    models.unhealthy["v1.gguf"] = "answers garbage"

    async def main() -> None:
        pool = ModelPool([], models)
        statuses = await pool.apply([settings(files["v1"])])
        assert [(s.name, s.state) for s in statuses] == [("smol", ItemState.FAILED)]
        assert "answers garbage" in statuses[0].error
        assert pool.served("smol") is None
        assert pool.runners() == []

    run(main)


def test_unchanged_settings_are_not_reloaded_and_removed_aliases_are_closed(
    files: dict[str, Path],
) -> None:
    models = FakeModels()

    async def main() -> None:
        pool = ModelPool([settings(files["v1"]), settings(files["v2"], "other")], models)
        await pool.load_all()
        statuses = await pool.apply([settings(files["v1"])])
        assert [(s.name, s.state) for s in statuses] == [("smol", ItemState.READY)]
        assert models.closed == ["v2.gguf"]
        # Only a serving parameter changes: that is a change too (loaded beside, then swapped).
        await pool.apply([settings(files["v1"], queue_depth=9)])
        assert pool.runner("smol").queue_depth == 9
        pool.close()

    run(main)
    assert models.loaded == ["v1.gguf", "v2.gguf", "v1.gguf"]


@pytest.mark.model
def test_the_llama_self_test_passes_on_the_demo_model_and_fails_on_nan_weights(
    demo_model: Path, tmp_path: Path
) -> None:
    from agent.engine.llama_backend import LlamaCppBackend

    def load(path: Path) -> LlamaCppBackend:
        return LlamaCppBackend(path, context_length=256, gpu_layers=0, threads=2, batch_size=64)

    good = load(demo_model)
    try:
        good.self_test()
        good.self_test()  # repeatable: the context is reset around it
    finally:
        good.close()
    broken = load(nan_weights_copy(demo_model, tmp_path / "nan.gguf"))
    try:
        with pytest.raises(RuntimeError, match="not finite"):
            broken.self_test()
    finally:
        broken.close()
