"""GGUF LoRA adapters on llama.cpp's low-level API (llama-cpp-python 0.3.36), on the demo model.

Pins the recipe the engine's per-request adapters are built on: adapters load once per model
(``llama_adapter_lora_init``), one context switches between them with
``llama_set_adapters_lora`` (``n_adapters = 0`` removes them) without reloading anything,
switching leaves the KV cache alone (cells keep the adapter they were computed with), and broken
adapter files are refused with a NULL pointer rather than a crash.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import numpy as np
import pytest
from llama_cpp._logger import set_verbose

from tests.lora_adapters import (
    make_lora_adapter,
    not_gguf_adapter,
    wrong_architecture_adapter,
    wrong_shape_adapter,
)

pytestmark = pytest.mark.model

PROMPT = "The capital of France is"
N_TOKENS = 8
N_CTX = 256
BATCH = 64
# One thread: on a busy 2-core machine, two spinning ggml threads are several times slower.
THREADS = 1
# An adapter handle: llama_adapter_lora_init's result, a ctypes POINTER(c_void_p). On failure it is
# a NULL pointer object (falsy), not None.
Adapter = Any


class Engine:
    """The demo model loaded once, with contexts, tokenising and greedy decoding on top."""

    def __init__(self, path: Path) -> None:
        set_verbose(False)  # llama.cpp's INFO logs (adapter metadata dumps) stay quiet
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model is not None
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
        self.contexts: list[Any] = []

    def close(self) -> None:
        llama_cpp.llama_batch_free(self.batch)
        for ctx in self.contexts:
            llama_cpp.llama_free(ctx)
        # Adapters still loaded are freed with the model; freeing one afterwards would be a
        # double free.
        llama_cpp.llama_model_free(self.model)

    def context(self, n_seq_max: int = 1) -> Any:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = N_CTX * n_seq_max
        params.n_batch = BATCH
        params.n_ubatch = BATCH
        params.n_seq_max = n_seq_max
        params.n_threads = THREADS
        params.n_threads_batch = THREADS
        ctx = llama_cpp.llama_init_from_model(self.model, params)
        assert ctx is not None
        self.contexts.append(ctx)
        return ctx

    def load_adapter(self, path: Path) -> Adapter:
        return llama_cpp.llama_adapter_lora_init(self.model, str(path).encode())

    def tokenize(self, text: str) -> list[int]:
        data = text.encode()
        tokens = (llama_cpp.llama_token * 128)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, 128, True, False)
        assert 0 < n <= 128
        return list(tokens[:n])

    def decode(self, ctx: Any, tokens: Sequence[int], start: int, seq: int = 0) -> np.ndarray:
        """Feed ``tokens`` at positions ``start...`` of ``seq``; the last token's logits."""
        assert 0 < len(tokens) <= BATCH
        batch = self.batch
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = 0
        batch.logits[len(tokens) - 1] = 1
        assert llama_cpp.llama_decode(ctx, batch) == 0
        logits = llama_cpp.llama_get_logits_ith(ctx, len(tokens) - 1)
        out = np.ctypeslib.as_array(logits, shape=(self.n_vocab,)).copy()
        assert np.isfinite(out).all()
        return out

    def greedy(self, ctx: Any, prompt: str = PROMPT, n: int = N_TOKENS) -> list[int]:
        """Greedy continuation of ``prompt`` from an empty KV cache, with the context's adapters."""
        clear(ctx)
        tokens = self.tokenize(prompt)
        logits = self.decode(ctx, tokens, 0)
        out: list[int] = []
        for position in range(len(tokens), len(tokens) + n):
            out.append(int(np.argmax(logits)))
            logits = self.decode(ctx, out[-1:], position)
        return out


def address(adapter: Adapter) -> int:
    """The adapter's C pointer value, e.g. as a dictionary key."""
    value = ctypes.cast(adapter, ctypes.c_void_p).value
    assert value is not None
    return int(value)


def clear(ctx: Any) -> None:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)


def set_adapters(ctx: Any, adapters: Sequence[Adapter], scale: float = 1.0) -> None:
    """Make exactly ``adapters`` active on ``ctx`` (none for an empty list)."""
    if not adapters:
        assert llama_cpp.llama_set_adapters_lora(ctx, None, 0, None) == 0
        return
    handles = (llama_cpp.llama_adapter_lora_p_ctypes * len(adapters))(*adapters)
    scales = (ctypes.c_float * len(adapters))(*([scale] * len(adapters)))
    assert llama_cpp.llama_set_adapters_lora(ctx, handles, len(adapters), scales) == 0


@pytest.fixture(scope="module")
def engine(demo_model: Path) -> Iterator[Engine]:
    loaded = Engine(demo_model)
    try:
        yield loaded
    finally:
        loaded.close()


@pytest.fixture(scope="module")
def adapter_files(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lora")
    return (
        make_lora_adapter(demo_model, folder / "a.gguf", seed=1),
        make_lora_adapter(demo_model, folder / "b.gguf", seed=2),
    )


@pytest.fixture(scope="module")
def adapters(engine: Engine, adapter_files: tuple[Path, Path]) -> tuple[Adapter, Adapter]:
    a, b = (engine.load_adapter(path) for path in adapter_files)
    assert a
    assert b
    return a, b


@pytest.fixture(scope="module")
def shared_context(engine: Engine) -> Any:
    return engine.context()


@pytest.fixture(scope="module")
def alone(engine: Engine, adapters: tuple[Adapter, Adapter]) -> dict[str, list[int]]:
    """Each adapter's (and the base's) continuation, each on a fresh context of its own."""
    a, b = adapters
    results = {}
    for name, active in (("base", []), ("a", [a]), ("b", [b])):
        ctx = engine.context()
        set_adapters(ctx, active)
        results[name] = engine.greedy(ctx)
    return results


def test_adapter_files_are_deterministic(
    demo_model: Path, adapter_files: tuple[Path, Path]
) -> None:
    a, b = adapter_files
    again = make_lora_adapter(demo_model, a.with_name("a-again.gguf"), seed=1)
    assert again.read_bytes() == a.read_bytes()
    assert a.read_bytes() != b.read_bytes()


def test_each_adapter_loads_with_its_metadata(
    engine: Engine, adapter_files: tuple[Path, Path], adapters: tuple[Adapter, Adapter]
) -> None:
    for adapter in adapters:
        assert isinstance(adapter, llama_cpp.llama_adapter_lora_p_ctypes)
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_adapter_meta_val_str(adapter, b"adapter.type", buf, len(buf))
        assert (n, buf.value) == (4, b"lora")
        n = llama_cpp.llama_adapter_meta_val_str(adapter, b"general.architecture", buf, len(buf))
        assert (n, buf.value) == (5, b"llama")
    # Loading the same file again gives a second, independent handle.
    extra = engine.load_adapter(adapter_files[0])
    assert extra
    assert address(extra) != address(adapters[0])
    llama_cpp.llama_adapter_lora_free(extra)


def test_the_adapters_change_greedy_output_differently(alone: dict[str, list[int]]) -> None:
    assert len({tuple(tokens) for tokens in alone.values()}) == 3


def test_one_context_switches_adapters_without_reloading(
    engine: Engine,
    shared_context: Any,
    adapters: tuple[Adapter, Adapter],
    alone: dict[str, list[int]],
) -> None:
    a, b = adapters
    ctx = shared_context
    for name, active in (
        ("a", [a]),
        ("b", [b]),
        ("base", []),
        ("b", [b]),
        ("a", [a]),
        ("a", [a]),  # setting the same adapters again is a no-op
        ("base", []),
    ):
        set_adapters(ctx, active)
        assert engine.greedy(ctx) == alone[name], name
    # A zero scale is the same as leaving the adapter out; a partial scale is in between.
    set_adapters(ctx, [a], scale=0.0)
    assert engine.greedy(ctx) == alone["base"]
    set_adapters(ctx, [a, b])
    both = engine.greedy(ctx)
    assert both not in alone.values()


def test_switching_keeps_the_kv_cache_computed_under_the_previous_adapters(
    engine: Engine, shared_context: Any, adapters: tuple[Adapter, Adapter]
) -> None:
    """llama_set_adapters_lora does not touch memory: reusing cells across adapters is wrong."""
    a, _ = adapters
    ctx = shared_context
    prompt = engine.tokenize(PROMPT)
    probe = engine.tokenize(" Paris")[-1]

    set_adapters(ctx, [a])
    clear(ctx)
    fresh = engine.decode(ctx, [*prompt, probe], 0)

    set_adapters(ctx, [])
    clear(ctx)
    engine.decode(ctx, prompt, 0)  # the prompt's cells computed by the base model
    set_adapters(ctx, [a])
    stale = engine.decode(ctx, [probe], len(prompt))
    assert float(np.abs(stale - fresh).max()) > 1.0

    clear(ctx)  # after clearing, the same adapter reproduces its own logits
    assert np.array_equal(engine.decode(ctx, [*prompt, probe], 0), fresh)


def test_interleaved_sequences_each_keep_their_own_adapter(
    engine: Engine, adapters: tuple[Adapter, Adapter], alone: dict[str, list[int]]
) -> None:
    """Three sequences in one context, one decode call per adapter and step, switching each time."""
    a, b = adapters
    plan: list[tuple[str, list[Adapter]]] = [("base", []), ("a", [a]), ("b", [b])]
    ctx = engine.context(n_seq_max=len(plan))
    clear(ctx)
    prompt = engine.tokenize(PROMPT)
    logits: list[np.ndarray] = []
    for seq, (_, active) in enumerate(plan):
        set_adapters(ctx, active)
        logits.append(engine.decode(ctx, prompt, 0, seq=seq))
    outputs: list[list[int]] = [[] for _ in plan]
    for step in range(N_TOKENS):
        for seq, (_, active) in enumerate(plan):
            set_adapters(ctx, active)
            outputs[seq].append(int(np.argmax(logits[seq])))
            logits[seq] = engine.decode(ctx, outputs[seq][-1:], len(prompt) + step, seq=seq)
    assert {name: out for (name, _), out in zip(plan, outputs, strict=True)} == alone


DAMAGED: dict[str, Callable[[Path, Path], Path]] = {
    "not_gguf": lambda base, target: not_gguf_adapter(target),
    "wrong_shape": wrong_shape_adapter,
    "wrong_architecture": wrong_architecture_adapter,
    "missing_file": lambda base, target: target,
}


@pytest.mark.parametrize("kind", sorted(DAMAGED))
def test_a_damaged_adapter_is_refused_without_harm(
    kind: str,
    engine: Engine,
    shared_context: Any,
    demo_model: Path,
    tmp_path: Path,
    alone: dict[str, list[int]],
) -> None:
    path = DAMAGED[kind](demo_model, tmp_path / f"{kind}.gguf")
    adapter = engine.load_adapter(path)
    assert not adapter  # a NULL POINTER(c_void_p): falsy, but not None
    assert adapter is not None
    set_adapters(shared_context, [])
    assert engine.greedy(shared_context) == alone["base"]
