"""Damaged copies of the demo model: valid GGUF headers whose tensors fail in llama.cpp."""

from __future__ import annotations

import shutil
from pathlib import Path

from gguf import GGUFReader


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    reader = GGUFReader(path, "r")
    tensor = next(t for t in reader.tensors if t.name == name)
    return int(tensor.data_offset), int(tensor.n_bytes)


def nan_weights_copy(source: Path, target: Path) -> Path:
    """The final norm's weights set to NaN: loads, but every logit is NaN."""
    shutil.copyfile(source, target)
    offset, size = _tensor_span(target, "output_norm.weight")
    with target.open("r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * size)
    return target


def missing_tensor_copy(source: Path, target: Path) -> Path:
    """One tensor renamed in the header: a well-formed GGUF that llama.cpp refuses to load."""
    data = bytearray(source.read_bytes())
    old, new = b"blk.0.attn_q.weight", b"blk.0.attn_X.weight"
    index = data.index(old)
    data[index : index + len(old)] = new
    target.write_bytes(bytes(data))
    return target
