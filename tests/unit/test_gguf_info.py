"""GGUF metadata read from real files: the demo model, small written ones, broken ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest

from common.gguf_info import GgufError, GgufInfo, head_dims, kv_cache_bytes, read_gguf_info
from tests.lora_adapters import make_lora_adapter, wrong_architecture_adapter

DEMO_MODEL_BYTES = 98_362_432


def write_gguf(
    path: Path,
    *,
    key_length: int | None = None,
    file_type: int | None = None,
    context_length: int = 256,
) -> Path:
    """A small valid GGUF; different context lengths make different files."""
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(context_length)
    writer.add_block_count(2)
    writer.add_embedding_length(64)
    writer.add_head_count(4)
    if key_length is not None:
        writer.add_key_length(key_length)
        writer.add_value_length(key_length // 2)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_tensor("a.weight", np.zeros(32, dtype=np.float32))
    writer.add_tensor("b.weight", np.zeros((4, 8), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_adapter(
    path: Path,
    *,
    architecture: str = "llama",
    general_type: str | None = "adapter",
    adapter_type: str | None = "lora",
    alpha: float | None = 16.0,
    seed: int = 0,
) -> Path:
    """A small GGUF LoRA adapter (one A and B pair; `seed` makes different files); a key given
    as None is left out."""
    writer = gguf.GGUFWriter(path, architecture)
    if general_type is not None:
        writer.add_string(gguf.Keys.General.TYPE, general_type)
    if adapter_type is not None:
        writer.add_string(gguf.Keys.Adapter.TYPE, adapter_type)
    if alpha is not None:
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    rng = np.random.default_rng(seed)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", rng.random((2, 64), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", rng.random((64, 2), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def copy_prefix(source: Path, target: Path, length: int) -> Path:
    with source.open("rb") as reader, target.open("wb") as writer:
        writer.write(reader.read(length))
    return target


def test_the_demo_model_is_described_from_its_header(demo_model: Path) -> None:
    info = read_gguf_info(demo_model)
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.size_bytes == DEMO_MODEL_BYTES == demo_model.stat().st_size
    assert info.context_length == 8192
    assert "<|im_start|>" in info.chat_template
    assert info.license == "apache-2.0"
    # SmolLM2-135M: about 135 million parameters in 30 blocks of 9 heads (3 for K and V).
    assert 130_000_000 < info.parameters < 140_000_000
    assert (info.block_count, info.embedding_length) == (30, 576)
    assert (info.head_count, info.head_count_kv) == (9, 3)
    assert (info.key_length, info.value_length) == (0, 0)  # not in this header


def test_the_demo_models_parameter_count_is_the_sum_of_its_tensors(demo_model: Path) -> None:
    reader = gguf.GGUFReader(demo_model, "r")
    assert read_gguf_info(demo_model).parameters == sum(int(t.n_elements) for t in reader.tensors)


def test_kv_cache_of_the_demo_model(demo_model: Path) -> None:
    info = read_gguf_info(demo_model)
    assert head_dims(info) == (64, 64)  # 576 / 9
    # 2 (K and V) * 30 blocks * 8192 tokens * 3 KV heads * 64 * 2 bytes (f16) = 180 MiB
    assert kv_cache_bytes(info, 8192) == 2 * 30 * 8192 * 3 * 64 * 2 == 180 * 1024 * 1024
    assert kv_cache_bytes(info, 1024) == kv_cache_bytes(info, 8192) // 8
    assert kv_cache_bytes(info, 0) == 0
    with pytest.raises(ValueError, match="negative"):
        kv_cache_bytes(info, -1)


def test_explicit_key_and_value_lengths_size_the_cache(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "kv.gguf", key_length=32))
    assert (info.key_length, info.value_length) == (32, 16)
    assert head_dims(info) == (32, 16)
    # No head_count_kv in the header: every head has its own K and V.
    assert kv_cache_bytes(info, 100) == 2 * 100 * 4 * (32 + 16) * 2


def test_a_header_without_a_shape_gives_no_cache_estimate(tmp_path: Path) -> None:
    path = tmp_path / "bare.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tensor("w", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    info = read_gguf_info(path)
    assert (info.context_length, info.block_count, info.head_count) == (0, 0, 0)
    assert (info.chat_template, info.license) == ("", "")
    assert kv_cache_bytes(info, 4096) == 0


def test_quantization_falls_back_to_the_dominant_tensor_type(tmp_path: Path) -> None:
    info = read_gguf_info(write_gguf(tmp_path / "mixed.gguf"))
    assert info.quantization == "F32"  # 32 f32 values (128 bytes) outweigh 32 f16 (64)
    assert info.parameters == 64


def test_the_file_type_names_the_quantization(tmp_path: Path) -> None:
    typed = write_gguf(tmp_path / "f16.gguf", file_type=int(gguf.LlamaFileType.MOSTLY_F16))
    assert read_gguf_info(typed).quantization == "F16"
    unknown = write_gguf(tmp_path / "odd.gguf", file_type=999)  # not a known file type
    assert read_gguf_info(unknown).quantization == "F32"


def test_metadata_round_trips(demo_model: Path) -> None:
    info = read_gguf_info(demo_model)
    document = info.metadata()
    assert document["architecture"] == "llama"
    assert GgufInfo.from_metadata(document) == info
    partial = GgufInfo.from_metadata({"architecture": "qwen2", "block_count": "not a number"})
    assert (partial.architecture, partial.block_count, partial.license) == ("qwen2", 0, "")


def test_the_demo_model_is_a_model(demo_model: Path) -> None:
    info = read_gguf_info(demo_model)
    assert (info.file_type, info.is_adapter, info.adapter_type, info.lora_alpha) == (
        "model",
        False,
        "",
        0.0,
    )


def test_a_lora_adapter_for_the_demo_model(demo_model: Path, tmp_path: Path) -> None:
    path = make_lora_adapter(demo_model, tmp_path / "lora.gguf", seed=3, alpha=8.0)
    info = read_gguf_info(path)
    assert (info.file_type, info.is_adapter, info.adapter_type) == ("adapter", True, "lora")
    assert (info.architecture, info.lora_alpha) == ("llama", 8.0)
    assert (info.size_bytes, info.quantization) == (path.stat().st_size, "F16")
    # rank 4 A and B for attn_q (576 x 576) and attn_v (576 x 192) in each of the 30 blocks
    assert info.parameters == 30 * 4 * ((576 + 576) + (576 + 192))
    # No context nor shape of its own: nothing to estimate a KV cache from.
    assert (info.context_length, info.block_count, info.head_count) == (0, 0, 0)
    assert kv_cache_bytes(info, 4096) == 0
    assert (info.chat_template, info.license) == ("", "")
    assert GgufInfo.from_metadata(info.metadata()) == info
    other = read_gguf_info(wrong_architecture_adapter(demo_model, tmp_path / "gpt2.gguf"))
    assert (other.architecture, other.file_type) == ("gpt2", "adapter")


def test_adapter_fields_missing_or_odd(tmp_path: Path) -> None:
    bare = read_gguf_info(write_adapter(tmp_path / "bare.gguf", adapter_type=None, alpha=None))
    assert (bare.file_type, bare.adapter_type, bare.lora_alpha) == ("adapter", "", 0.0)
    odd = read_gguf_info(write_adapter(tmp_path / "nan.gguf", alpha=float("nan")))
    assert odd.lora_alpha == 0.0  # a stored document holds no NaN
    other = read_gguf_info(write_adapter(tmp_path / "imatrix.gguf", general_type="imatrix"))
    assert (other.file_type, other.is_adapter, other.adapter_type) == ("imatrix", False, "")
    # adapter.* keys of a file that says it is a model are not read
    model = read_gguf_info(write_adapter(tmp_path / "model.gguf", general_type="model"))
    assert (model.file_type, model.adapter_type, model.lora_alpha) == ("model", "", 0.0)
    untyped = read_gguf_info(write_adapter(tmp_path / "untyped.gguf", general_type=None))
    assert untyped.file_type == "model"  # a file without general.type is a model


def test_metadata_stored_before_adapters_reads_as_a_model() -> None:
    old = GgufInfo.from_metadata({"architecture": "llama", "context_length": 8192})
    assert (old.file_type, old.adapter_type, old.lora_alpha) == ("model", "", 0.0)
    adapter = GgufInfo.from_metadata(
        {"architecture": "llama", "file_type": "adapter", "adapter_type": "lora", "lora_alpha": 8}
    )
    assert (adapter.is_adapter, adapter.lora_alpha) == (True, 8.0)
    for alpha in ("8", True, None, [8.0]):
        assert GgufInfo.from_metadata({"file_type": "adapter", "lora_alpha": alpha}).lora_alpha == 0
    assert GgufInfo.from_metadata({"file_type": ""}).file_type == "model"


@pytest.mark.parametrize("content", [b"", b"GG", b"PK\x03\x04 a zip file", b"version: 1\n"])
def test_a_file_that_is_not_gguf(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    with pytest.raises(GgufError, match="is not a GGUF file") as error:
        read_gguf_info(path)
    assert str(path) in str(error.value)


def test_missing_files_and_directories(tmp_path: Path) -> None:
    with pytest.raises(GgufError, match="does not exist"):
        read_gguf_info(tmp_path / "absent.gguf")
    with pytest.raises(GgufError, match="is not a regular file"):
        read_gguf_info(tmp_path)


@pytest.mark.parametrize("length", [8, 4096, 1_800_000, 50_000_000, DEMO_MODEL_BYTES - 1])
def test_a_truncated_demo_model(demo_model: Path, tmp_path: Path, length: int) -> None:
    """Cut in the header, in the tensor table, early and late in the tensor data."""
    path = copy_prefix(demo_model, tmp_path / "cut.gguf", length)
    with pytest.raises(GgufError, match="truncated") as error:
        read_gguf_info(path)
    assert str(path) in str(error.value)


def test_a_damaged_header(demo_model: Path, tmp_path: Path) -> None:
    path = tmp_path / "damaged.gguf"
    shutil.copyfile(demo_model, path)
    with path.open("r+b") as handle:  # version 3 becomes 0x7f7f7f7f
        handle.seek(4)
        handle.write(b"\x7f\x7f\x7f\x7f")
    with pytest.raises(GgufError, match="damaged") as error:
        read_gguf_info(path)
    assert "version" in str(error.value)
