"""Checks a GGUF model file before llama.cpp sees it: present, GGUF, complete; and hashes it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

GGUF_MAGIC = b"GGUF"
_HASH_CHUNK = 4 * 1024 * 1024


class ModelFileError(Exception):
    """The model file cannot be served; the message names the file and the reason."""


@dataclass(frozen=True)
class ModelFile:
    path: Path
    size_bytes: int
    architecture: str
    trained_context_length: int


def inspect_model_file(path: Path) -> ModelFile:
    """Reads the GGUF header and tensor table; raises ModelFileError on any defect."""
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelFileError(f"model file {path} is not a regular file")
    try:
        with path.open("rb") as handle:
            magic = handle.read(4)
        size = path.stat().st_size
    except OSError as exc:
        raise ModelFileError(f"model file {path} cannot be read: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise ModelFileError(f"model file {path} is not a GGUF file (it starts with {magic!r})")
    from gguf import GGUFReader  # numpy-heavy; only needed here

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:  # the reader raises many types on damaged files
        # gguf maps each tensor's data while it reads the tensor table, so a file cut short
        # inside its tensor data fails here too, with numpy's words for it.
        raise ModelFileError(f"model file {path} is truncated or damaged: {exc}") from exc
    needed = max((t.data_offset + t.n_bytes for t in reader.tensors), default=0)
    if not reader.tensors:
        raise ModelFileError(f"model file {path} holds no tensors")
    if needed > size:
        raise ModelFileError(
            f"model file {path} is truncated: it has {size} bytes, its tensors need {needed}"
        )
    architecture = _string_field(reader, "general.architecture") or "unknown"
    context = _int_field(reader, f"{architecture}.context_length") or 0
    return ModelFile(path, size, architecture, context)


def _string_field(reader: object, key: str) -> str | None:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        return None
    value = field.contents()
    return value if isinstance(value, str) else None


def _int_field(reader: object, key: str) -> int | None:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        return None
    value = field.contents()
    return int(value) if isinstance(value, int) else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
