"""Checks a GGUF model file before llama.cpp sees it: present, GGUF, complete; and hashes it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from common.gguf_info import GgufError, read_gguf_info

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
    try:
        info = read_gguf_info(path)
    except GgufError as exc:  # its message starts with the path
        raise ModelFileError(f"model file {exc}") from exc
    return ModelFile(path, info.size_bytes, info.architecture, info.context_length)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
