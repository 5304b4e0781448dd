"""GGUF model files are checked before llama.cpp sees them; every defect names the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest

from agent.model_file import ModelFile, ModelFileError, inspect_model_file, sha256_of


def write_gguf(path: Path, *, tensors: int = 1) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(128)
    for index in range(tensors):
        writer.add_tensor(f"weight.{index}", np.arange(8, dtype=np.float32) + index)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def test_valid_gguf_is_accepted(tiny_gguf: Path) -> None:
    assert inspect_model_file(tiny_gguf) == ModelFile(
        path=tiny_gguf,
        size_bytes=tiny_gguf.stat().st_size,
        architecture="llama",
        trained_context_length=128,
    )


def test_gguf_with_several_tensors_is_accepted(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "two.gguf", tensors=2)
    assert inspect_model_file(path).architecture == "llama"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.gguf"
    with pytest.raises(ModelFileError, match="does not exist") as error:
        inspect_model_file(path)
    assert str(path) in str(error.value)


def test_directory_is_not_a_model_file(tmp_path: Path) -> None:
    directory = tmp_path / "model.gguf"
    directory.mkdir()
    with pytest.raises(ModelFileError, match="is not a regular file") as error:
        inspect_model_file(directory)
    assert str(directory) in str(error.value)


@pytest.mark.parametrize("content", [b"version: 1\nweights: none\n", b"", b"GG"])
def test_file_that_is_not_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="is not a GGUF file") as error:
        inspect_model_file(path)
    assert str(path) in str(error.value)
    assert repr(content[:4]) in str(error.value)


def test_truncated_file_is_rejected_naming_the_file(tiny_gguf: Path) -> None:
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:-3])
    with pytest.raises(ModelFileError) as error:
        inspect_model_file(tiny_gguf)
    assert str(tiny_gguf) in str(error.value)


@pytest.mark.parametrize("missing_bytes", [3, 8, 32])
def test_truncated_file_is_reported_as_truncated(tiny_gguf: Path, missing_bytes: int) -> None:
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:-missing_bytes])
    with pytest.raises(ModelFileError, match="is truncated") as error:
        inspect_model_file(tiny_gguf)
    assert str(tiny_gguf) in str(error.value)


@pytest.mark.parametrize(
    "tail", [b"", b"\x00", b"\xff" * 64, b"garbage, not a header" * 4], ids=repr
)
def test_magic_followed_by_garbage_is_damaged(tmp_path: Path, tail: bytes) -> None:
    path = tmp_path / "damaged.gguf"
    path.write_bytes(b"GGUF" + tail)
    with pytest.raises(ModelFileError, match="is truncated or its GGUF header is damaged") as error:
        inspect_model_file(path)
    assert str(path) in str(error.value)


def test_header_cut_in_the_middle_is_damaged(tiny_gguf: Path) -> None:
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:20])
    with pytest.raises(ModelFileError, match="is truncated or its GGUF header is damaged") as error:
        inspect_model_file(tiny_gguf)
    assert str(tiny_gguf) in str(error.value)


def test_gguf_without_tensors_is_rejected(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "empty.gguf", tensors=0)
    with pytest.raises(ModelFileError, match="holds no tensors") as error:
        inspect_model_file(path)
    assert str(path) in str(error.value)


def test_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    data = bytes(range(256)) * 1000
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_sha256_of_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    assert sha256_of(path) == hashlib.sha256(b"").hexdigest()


def test_sha256_of_gguf_file(tiny_gguf: Path) -> None:
    assert sha256_of(tiny_gguf) == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
