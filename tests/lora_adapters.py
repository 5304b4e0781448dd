"""Synthetic GGUF LoRA adapters for a llama-architecture base GGUF (the demo model).

The adapters are random but deterministic (numpy's seeded generator): they exist to prove that
an engine loads, applies and switches adapters, not to teach the model anything. Layout, as
llama.cpp's ``llama_adapter_lora_init`` expects it:

- metadata ``general.type = "adapter"``, ``general.architecture`` = the base's,
  ``adapter.type = "lora"``, ``adapter.lora.alpha``;
- for each adapted base weight ``blk.N.<target>.weight`` (GGUF dims ``[in, out]``), the pair
  ``blk.N.<target>.weight.lora_a`` with numpy shape ``(rank, in)`` and
  ``blk.N.<target>.weight.lora_b`` with numpy shape ``(out, rank)`` (peft's shapes; GGUF stores
  dimensions reversed, so these read as ``[in, rank]`` and ``[rank, out]`` in ggml's ``ne``
  order, which is what llama.cpp checks), in F32.

llama.cpp adds ``scale * alpha / rank * B @ (A @ x)`` to the base projection, ``scale`` being the
per-context scale given to ``llama_set_adapters_lora``. Here B is scaled so that, at scale 1,
``alpha / rank * ||B @ A||_F == strength * ||W||_F`` for every adapted weight ``W``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGUFReader, Keys
from gguf.quants import dequantize

from common.federated.gguf_lora import write_lora_gguf

DEFAULT_TARGETS: tuple[str, ...] = ("attn_q", "attn_v")
# Relative Frobenius size of each weight's change. At 0.3 on the demo model, greedy output
# departs from the base within the first few tokens and the logits stay finite.
DEFAULT_STRENGTH = 0.3


@dataclass(frozen=True)
class _BaseWeight:
    name: str
    n_in: int
    n_out: int
    norm: float  # Frobenius norm of the dequantized weight


# Key: (resolved path, mtime_ns, size), so that a rewritten base is read again.
_FileKey = tuple[Path, int, int]


@functools.lru_cache(maxsize=4)
def _reader(key: _FileKey) -> GGUFReader:
    # GGUFReader takes seconds on the demo model (its vocabulary): read each file once.
    return GGUFReader(key[0], "r")


@functools.lru_cache(maxsize=1024)
def _base_weight(key: _FileKey, name: str) -> _BaseWeight:
    tensor = next(t for t in _reader(key).tensors if t.name == name)
    n_in, n_out = (int(d) for d in tensor.shape)  # ggml order: ne[0] = in, ne[1] = out
    data = np.asarray(dequantize(tensor.data, tensor.tensor_type), dtype=np.float64)
    return _BaseWeight(name, n_in, n_out, float(np.linalg.norm(data)))


def _base_weights(base: Path, targets: tuple[str, ...]) -> tuple[str, list[_BaseWeight]]:
    stat = base.stat()
    key = (base.resolve(), stat.st_mtime_ns, stat.st_size)
    reader = _reader(key)
    architecture = str(reader.fields[Keys.General.ARCHITECTURE].contents())
    wanted = tuple(f".{target}.weight" for target in targets)
    names = [
        t.name
        for t in reader.tensors
        if t.name.startswith("blk.") and t.name.endswith(wanted) and len(t.shape) == 2
    ]
    if not names:
        raise ValueError(f"{base} has no tensors for targets {targets}")
    return architecture, [_base_weight(key, name) for name in names]


def _write_adapter(
    target: Path,
    architecture: str,
    alpha: float,
    tensors: list[tuple[str, np.ndarray]],
) -> Path:
    # The exporter's writer: it checks nothing, so damaged adapters go through it too.
    return write_lora_gguf(target, architecture=architecture, alpha=alpha, tensors=tensors)


def lora_tensors(
    base: Path,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    strength: float = DEFAULT_STRENGTH,
) -> tuple[str, list[tuple[str, np.ndarray]]]:
    """The base's architecture and the adapter's ``(name, array)`` pairs, A before B."""
    if rank < 1:
        raise ValueError("rank must be at least 1")
    architecture, weights = _base_weights(base, targets)
    rng = np.random.default_rng(seed)
    out: list[tuple[str, np.ndarray]] = []
    for weight in weights:
        a = rng.standard_normal((rank, weight.n_in))
        b = rng.standard_normal((weight.n_out, rank))
        # ||B @ A||_F without forming B @ A: sqrt(trace(B^T B A A^T)).
        delta = (alpha / rank) * np.sqrt(np.trace((b.T @ b) @ (a @ a.T)))
        b *= strength * weight.norm / delta
        # f16, as llama.cpp's convert_lora_to_gguf.py writes by default: ggml multiplies f32
        # adapter tensors with another kernel for one token than for several, so an f32 adapter's
        # text would depend on how many sequences share a decode.
        out.append((f"{weight.name}.lora_a", a.astype(np.float16)))
        out.append((f"{weight.name}.lora_b", b.astype(np.float16)))
    return architecture, out


def make_lora_adapter(
    base: Path,
    target: Path,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    seed: int = 0,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
    strength: float = DEFAULT_STRENGTH,
) -> Path:
    """Write a random GGUF LoRA adapter for ``base`` to ``target``; the same seed, the same file."""
    architecture, tensors = lora_tensors(
        base, rank=rank, alpha=alpha, seed=seed, targets=targets, strength=strength
    )
    return _write_adapter(target, architecture, alpha, tensors)


# Damaged adapters: each must be refused by llama_adapter_lora_init (it returns NULL).


def not_gguf_adapter(target: Path) -> Path:
    """A file that is not GGUF at all."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"this is not a GGUF adapter\n" * 64)
    return target


def wrong_shape_adapter(base: Path, target: Path, *, seed: int = 0) -> Path:
    """A well-formed adapter whose A and B are transposed (ggml ``ne`` no longer matches)."""
    architecture, tensors = lora_tensors(base, seed=seed, targets=("attn_q",))
    return _write_adapter(
        target, architecture, 8.0, [(name, np.ascontiguousarray(a.T)) for name, a in tensors]
    )


def wrong_architecture_adapter(
    base: Path, target: Path, *, architecture: str = "gpt2", seed: int = 0
) -> Path:
    """A correctly shaped adapter that claims another architecture than the base's."""
    _, tensors = lora_tensors(base, seed=seed, targets=("attn_q",))
    return _write_adapter(target, architecture, 8.0, tensors)
