"""Federated LoRA adapters as GGUF LoRA files for llama.cpp, shaped by the base model's header."""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.federated.adapter_tensors import (
    LORA_A,
    LORA_B,
    LORA_TARGETS,
    Adapter,
    AdapterError,
    check_adapter,
    lora_key,
    parse_lora_key,
)
from common.files import atomic_output

# Hugging Face llama module name -> llama.cpp tensor name (blk.N.<name>.weight).
LLAMA_CPP_NAMES: Mapping[str, str] = {
    "q_proj": "attn_q",
    "k_proj": "attn_k",
    "v_proj": "attn_v",
    "o_proj": "attn_output",
    "gate_proj": "ffn_gate",
    "up_proj": "ffn_up",
    "down_proj": "ffn_down",
}
ARCHITECTURE = "llama"
METADATA_PREFIX = "outpost."
# Adapter tensors are stored as f16, like llama.cpp's convert_lora_to_gguf.py does by default.
# Evidence (demo model, rank 4, 5 targets, 7 tokens, n_threads 2; measured 2026-11):
# - accuracy against torch + peft on the F32 copy: max |dlogit| 0.0155 with f16, 0.0160 with
#   f32 (the copy alone: 0.019), so f16 costs nothing measurable;
# - ggml multiplies f32 adapter tensors with another kernel for one token than for several (see
#   tests/lora_adapters.py): on the Q4_1 base, whose logits without an adapter are identical
#   whether 7 tokens are decoded at once or one by one, that difference is 1.11 with an f32
#   adapter and 0.64 with f16. Serving batches requests, so the smaller drift wins;
# - half the bytes to ship to every site.
STORAGE_DTYPE: type[np.floating] = np.float16

_METADATA_KEY = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*")
# GGUF value types -> struct format of a scalar; 8 is a string, 9 an array.
_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 32  # a larger count is a damaged header, not a model


@dataclass(frozen=True)
class _Header:
    """A GGUF file's scalar and string metadata (arrays skipped) and its tensor dims."""

    metadata: dict[str, object]
    tensors: dict[str, tuple[int, ...]]  # ggml order: ne[0] (in) first


class _Cursor:
    def __init__(self, buffer: mmap.mmap) -> None:
        self.buffer = buffer
        self.offset = 0

    def unpack(self, fmt: str) -> object:
        (value,) = struct.unpack_from("<" + fmt, self.buffer, self.offset)
        self.offset += struct.calcsize("<" + fmt)
        return value

    def uint(self, fmt: str) -> int:
        value = self.unpack(fmt)
        assert isinstance(value, int)
        return value

    def count(self) -> int:
        value = self.uint("Q")
        if value > _MAX_COUNT:
            raise ValueError(f"implausible count {value}")
        return value

    def string(self) -> str:
        size = self.count()
        raw = self.buffer[self.offset : self.offset + size]
        if len(raw) != size:
            raise ValueError("string runs past the end of the file")
        self.offset += size
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> object:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.uint("I")
            n_items = self.count()
            if item_type in _SCALARS:  # fixed size: skip over
                self.offset += n_items * struct.calcsize("<" + _SCALARS[item_type])
            else:
                for _ in range(n_items):
                    self.value(item_type)
            return None
        if vtype not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {vtype}")
        return self.unpack(_SCALARS[vtype])


def _read_header(path: Path) -> _Header:
    """The header and tensor table only, without gguf's reader (seconds on a vocabulary)."""
    try:
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if m[:4] != b"GGUF":
                raise ValueError("not a GGUF file")
            cursor = _Cursor(m)
            cursor.offset = 4
            version = cursor.unpack("I")
            if version not in (2, 3):
                raise ValueError(f"unsupported GGUF version {version}")
            n_tensors, n_kv = cursor.count(), cursor.count()
            metadata: dict[str, object] = {}
            for _ in range(n_kv):
                key = cursor.string()
                metadata[key] = cursor.value(cursor.uint("I"))
            tensors: dict[str, tuple[int, ...]] = {}
            for _ in range(n_tensors):
                name = cursor.string()
                n_dims = cursor.uint("I")
                dims = tuple(cursor.uint("Q") for _ in range(n_dims))
                cursor.unpack("I")  # type
                cursor.unpack("Q")  # offset
                tensors[name] = dims
            return _Header(metadata, tensors)
    except (OSError, ValueError, struct.error) as exc:
        raise ValueError(f"cannot read the GGUF header of {path}: {exc}") from exc


def _llama_header(base_gguf: Path) -> _Header:
    header = _read_header(base_gguf)
    architecture = header.metadata.get("general.architecture")
    if architecture != ARCHITECTURE:
        raise ValueError(
            f"{base_gguf} is a {architecture!r} model; only {ARCHITECTURE!r} bases are supported"
        )
    return header


def _int_field(header: _Header, key: str, path: Path) -> int:
    value = header.metadata.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{path} lacks a positive integer {key}")
    return value


def lora_shapes_from_gguf(
    base_gguf: Path, rank: int, targets: Sequence[str]
) -> dict[str, tuple[int, int]]:
    """The adapter's expected shapes (A: rank x in, B: out x rank) for every layer and target."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    unknown = [t for t in targets if t not in LLAMA_CPP_NAMES]
    if unknown or not targets:
        raise ValueError(f"unknown LoRA target(s) {unknown}; expected some of {LORA_TARGETS}")
    header = _llama_header(base_gguf)
    n_layers = _int_field(header, f"{ARCHITECTURE}.block_count", base_gguf)
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(n_layers):
        for target in targets:
            name = f"blk.{layer}.{LLAMA_CPP_NAMES[target]}.weight"
            dims = header.tensors.get(name)
            if dims is None or len(dims) != 2:
                raise ValueError(f"{base_gguf} has no 2-D tensor {name} for target {target}")
            n_in, n_out = dims  # ggml order
            shapes[lora_key(layer, target, LORA_A)] = (rank, n_in)
            shapes[lora_key(layer, target, LORA_B)] = (n_out, rank)
    return shapes


def permute_rope_rows(rows: npt.NDArray[np.floating], n_heads: int) -> npt.NDArray[np.floating]:
    """Reorder rows per head, as llama.cpp's converter does to attn_q/attn_k: within each head,
    the first half and second half of the rotary pairs are interleaved."""
    n_rows = rows.shape[0]
    if n_rows % (2 * n_heads):
        raise ValueError(f"{n_rows} rows do not split into {n_heads} heads of rotary pairs")
    split = rows.reshape(n_heads, 2, n_rows // n_heads // 2, *rows.shape[1:])
    return split.swapaxes(1, 2).reshape(rows.shape)


def write_lora_gguf(
    target: Path,
    *,
    architecture: str,
    alpha: float,
    tensors: Sequence[tuple[str, npt.NDArray[np.generic]]],
    metadata: Mapping[str, str] = {},
) -> Path:
    """Write ``(name, array)`` pairs as a GGUF LoRA adapter file, atomically (temp + rename).

    No checks of names or shapes: callers check (tests write damaged adapters through here)."""
    from gguf import GGUFType, GGUFWriter, Keys

    with atomic_output(target) as temp:
        writer = GGUFWriter(temp, architecture)
        writer.add_type(GGUFType.ADAPTER)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, alpha)
        for key, value in metadata.items():
            writer.add_string(key, value)
        for name, array in tensors:
            writer.add_tensor(name, np.ascontiguousarray(array))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return target


def _adapter_rank_and_targets(tensors: Mapping[str, np.ndarray]) -> tuple[int, list[str]]:
    if not tensors:
        raise AdapterError("the adapter holds no tensors")
    targets: set[str] = set()
    ranks: set[int] = set()
    for key, value in tensors.items():
        _, target, matrix = parse_lora_key(key)
        targets.add(target)
        if not isinstance(value, np.ndarray) or value.ndim != 2:
            raise AdapterError(f"{key!r} is not a 2-D numpy array")
        ranks.add(int(value.shape[0] if matrix == LORA_A else value.shape[1]))
    if len(ranks) != 1:
        raise AdapterError(f"the adapter mixes ranks {sorted(ranks)}; one rank is expected")
    return ranks.pop(), [t for t in LORA_TARGETS if t in targets]


def export_gguf_lora(
    tensors: Mapping[str, np.ndarray],
    *,
    base_gguf: Path,
    alpha: float,
    target: Path,
    metadata: Mapping[str, str] = {},
) -> Path:
    """Write the adapter as a GGUF LoRA file for ``base_gguf`` that llama.cpp loads."""
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha must be a positive number, got {alpha}")
    for key, text in metadata.items():
        if not _METADATA_KEY.fullmatch(key) or not isinstance(text, str):
            raise ValueError(f"metadata {key!r} must be a dotted lower-case key with a str value")
    rank, targets = _adapter_rank_and_targets(tensors)
    check_adapter(tensors, lora_shapes_from_gguf(base_gguf, rank, targets))
    header = _llama_header(base_gguf)
    n_head = _int_field(header, f"{ARCHITECTURE}.attention.head_count", base_gguf)
    n_head_kv = header.metadata.get(f"{ARCHITECTURE}.attention.head_count_kv", n_head)
    heads = {"q_proj": n_head, "k_proj": n_head_kv if isinstance(n_head_kv, int) else n_head}
    adapter: Adapter = {key: np.asarray(value, dtype=np.float32) for key, value in tensors.items()}
    named: list[tuple[str, npt.NDArray[np.generic]]] = []
    for key in sorted(adapter, key=parse_lora_key):
        layer, hf_target, matrix = parse_lora_key(key)
        value = adapter[key]
        if matrix == LORA_B and hf_target in heads:
            value = permute_rope_rows(value, heads[hf_target])
        suffix = "lora_a" if matrix == LORA_A else "lora_b"
        name = f"blk.{layer}.{LLAMA_CPP_NAMES[hf_target]}.weight.{suffix}"
        if np.abs(value).max() > np.finfo(STORAGE_DTYPE).max:
            raise AdapterError(f"{key!r} has values beyond {np.dtype(STORAGE_DTYPE).name} range")
        named.append((name, value.astype(STORAGE_DTYPE)))
    return write_lora_gguf(
        target,
        architecture=ARCHITECTURE,
        alpha=alpha,
        tensors=named,
        metadata={METADATA_PREFIX + key: text for key, text in metadata.items()},
    )
