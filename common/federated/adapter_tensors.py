"""The contract for LoRA adapter weights in transit: key names, shapes, checks and .npz files."""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

# Hugging Face llama module names a LoRA may target, in the model's own order.
LORA_TARGETS: Final = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_A: Final = "lora_A"
LORA_B: Final = "lora_B"

Tensor = npt.NDArray[np.float32]
Adapter = dict[str, Tensor]

_KEY = re.compile(r"layers\.(0|[1-9][0-9]*)\.([a-z_]+)\.(lora_A|lora_B)")


class AdapterError(ValueError):
    """An adapter's tensors or file do not follow the contract."""


def lora_key(layer: int, target: str, matrix: str) -> str:
    """The key of one LoRA matrix: ``layers.{layer}.{target}.lora_A`` or ``...lora_B``."""
    if layer < 0:
        raise AdapterError(f"layer index must be >= 0, got {layer}")
    if target not in LORA_TARGETS:
        raise AdapterError(f"unknown LoRA target {target!r}; expected one of {LORA_TARGETS}")
    if matrix not in (LORA_A, LORA_B):
        raise AdapterError(f"unknown LoRA matrix {matrix!r}; expected {LORA_A!r} or {LORA_B!r}")
    return f"layers.{layer}.{target}.{matrix}"


def parse_lora_key(key: str) -> tuple[int, str, str]:
    """(layer, target, matrix) of a key; AdapterError when it is not a contract key."""
    match = _KEY.fullmatch(key)
    if match is None or match.group(2) not in LORA_TARGETS:
        raise AdapterError(f"{key!r} is not an adapter key (layers.N.<target>.lora_A|lora_B)")
    return int(match.group(1)), match.group(2), match.group(3)


def adapter_shapes(
    num_layers: int,
    rank: int,
    targets: Iterable[str],
    features: Mapping[str, tuple[int, int]],
) -> dict[str, tuple[int, int]]:
    """Expected shapes for a rank-``rank`` adapter; ``features[target] = (in, out)``."""
    if rank < 1:
        raise AdapterError(f"rank must be >= 1, got {rank}")
    shapes: dict[str, tuple[int, int]] = {}
    for layer in range(num_layers):
        for target in targets:
            in_features, out_features = features[target]
            shapes[lora_key(layer, target, LORA_A)] = (rank, in_features)
            shapes[lora_key(layer, target, LORA_B)] = (out_features, rank)
    return shapes


def check_adapter(
    tensors: Mapping[str, npt.NDArray[np.generic]], expected_shapes: Mapping[str, tuple[int, int]]
) -> None:
    """Raises AdapterError unless ``tensors`` has exactly the expected keys and shapes, every
    tensor is floating point and every value is finite."""
    missing = sorted(set(expected_shapes) - set(tensors))
    if missing:
        raise AdapterError(f"adapter lacks {len(missing)} tensor(s), first {missing[0]!r}")
    extra = sorted(set(tensors) - set(expected_shapes))
    if extra:
        raise AdapterError(f"adapter has {len(extra)} unexpected tensor(s), first {extra[0]!r}")
    for key in sorted(expected_shapes):
        value = tensors[key]
        if not isinstance(value, np.ndarray):
            raise AdapterError(f"{key!r} is a {type(value).__name__}, not a numpy array")
        if not np.issubdtype(value.dtype, np.floating):
            raise AdapterError(f"{key!r} has dtype {value.dtype}, expected floating point")
        expected = tuple(expected_shapes[key])
        if value.shape != expected:
            raise AdapterError(f"{key!r} has shape {value.shape}, expected {expected}")
        if not np.isfinite(value).all():
            raise AdapterError(f"{key!r} contains NaN or infinite values")


def as_float32(tensors: Mapping[str, npt.NDArray[np.generic]]) -> Adapter:
    """A copy of the tensors as contiguous float32 arrays."""
    return {key: np.ascontiguousarray(value, dtype=np.float32) for key, value in tensors.items()}


def save_adapter(path: Path, tensors: Mapping[str, npt.NDArray[np.generic]]) -> None:
    """Writes the tensors (as float32) to an uncompressed .npz file at ``path``."""
    for key in tensors:
        parse_lora_key(key)
    with Path(path).open("wb") as file:
        np.savez(file, allow_pickle=False, **as_float32(tensors))


def load_adapter(path: Path, max_bytes: int) -> Adapter:
    """Reads an .npz adapter written by save_adapter; AdapterError when it is larger than
    ``max_bytes``, malformed, pickled, or holds non-contract keys or non-float tensors.
    Shapes are not checked here: call check_adapter with the model's shapes."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise AdapterError(f"adapter file {path} is {size} bytes, over the {max_bytes} limit")
        data = path.read_bytes()
    except OSError as exc:
        raise AdapterError(f"cannot read adapter file {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise AdapterError(f"adapter file {path} grew past the {max_bytes} byte limit")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > max_bytes:
            raise AdapterError(
                f"adapter file {path} unpacks to {unpacked} bytes, over the {max_bytes} limit"
            )
        tensors: Adapter = {}
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for key in npz.files:
                parse_lora_key(key)
                value = npz[key]
                if not np.issubdtype(value.dtype, np.floating):
                    raise AdapterError(f"{key!r} has dtype {value.dtype}, expected floating point")
                tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    except AdapterError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise AdapterError(f"adapter file {path} is not a valid adapter .npz: {exc}") from exc
    return tensors


def initial_adapter(shapes: Mapping[str, tuple[int, int]], seed: int) -> Adapter:
    """A fresh adapter as peft starts one: each A uniform in +-1/sqrt(in_features) (Kaiming
    uniform with a=sqrt(5)), each B zero, so the adapter starts as a no-op. Deterministic."""
    rng = np.random.default_rng(seed)
    tensors: Adapter = {}
    for key in sorted(shapes):
        _, _, matrix = parse_lora_key(key)
        rows, cols = shapes[key]
        if matrix == LORA_A:
            bound = 1.0 / np.sqrt(cols)
            tensors[key] = rng.uniform(-bound, bound, size=(rows, cols)).astype(np.float32)
        else:
            tensors[key] = np.zeros((rows, cols), dtype=np.float32)
    return tensors
