"""The GGUF LoRA exporter: shapes from the demo model's header, round 1's adapter, the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType
from gguf.quants import dequantize, quantize

from common.federated.adapter_tensors import initial_adapter
from common.federated.gguf_dequantize import dequantized_copy
from common.federated.gguf_lora import export_gguf_lora, lora_shapes_from_gguf, permute_rope_rows

N_LAYERS = 30  # SmolLM2-135M
TARGETS = ("q_proj", "k_proj", "v_proj", "down_proj")
RANK = 2

Adapter = dict[str, npt.NDArray[np.float32]]


@pytest.fixture(scope="module")
def shapes(demo_model: Path) -> dict[str, tuple[int, int]]:
    return lora_shapes_from_gguf(demo_model, RANK, TARGETS)


@pytest.fixture
def adapter(shapes: dict[str, tuple[int, int]]) -> Adapter:
    tensors = initial_adapter(shapes, seed=1)
    rng = np.random.default_rng(2)
    for key, value in tensors.items():
        if key.endswith("lora_B"):
            tensors[key] = rng.standard_normal(value.shape).astype(np.float32)
    return tensors


def _other_architecture_base(path: Path) -> Path:
    writer = GGUFWriter(path, "gpt2")
    writer.add_uint32("gpt2.block_count", 1)
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((8, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_shapes_come_from_the_header(demo_model: Path) -> None:
    shapes = lora_shapes_from_gguf(demo_model, 4, ["q_proj", "k_proj", "gate_proj", "down_proj"])
    assert len(shapes) == N_LAYERS * 4 * 2
    assert shapes["layers.0.q_proj.lora_A"] == (4, 576)
    assert shapes["layers.0.q_proj.lora_B"] == (576, 4)
    assert shapes["layers.29.k_proj.lora_B"] == (192, 4)  # 3 KV heads of 64
    assert shapes["layers.7.gate_proj.lora_A"] == (4, 576)
    assert shapes["layers.7.gate_proj.lora_B"] == (1536, 4)
    assert shapes["layers.3.down_proj.lora_A"] == (4, 1536)
    assert shapes["layers.3.down_proj.lora_B"] == (576, 4)


def test_unknown_targets_and_ranks_are_refused(demo_model: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown LoRA target.*lm_head"):
        lora_shapes_from_gguf(demo_model, 4, ["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="unknown LoRA target"):
        lora_shapes_from_gguf(demo_model, 4, [])
    with pytest.raises(ValueError, match="rank must be >= 1"):
        lora_shapes_from_gguf(demo_model, 0, ["q_proj"])


def test_non_llama_and_non_gguf_bases_are_refused(tmp_path: Path) -> None:
    base = _other_architecture_base(tmp_path / "gpt2.gguf")
    with pytest.raises(ValueError, match="'gpt2' model; only 'llama'"):
        lora_shapes_from_gguf(base, 4, ["q_proj"])
    text = tmp_path / "model.gguf"
    text.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"cannot read the GGUF header.*not a GGUF file"):
        lora_shapes_from_gguf(text, 4, ["q_proj"])


def test_initial_adapter_is_peft_like_and_seeded(shapes: dict[str, tuple[int, int]]) -> None:
    first = initial_adapter(shapes, seed=7)
    assert first.keys() == shapes.keys()
    for key, value in first.items():
        assert value.shape == shapes[key]
        assert value.dtype == np.float32
        if key.endswith("lora_B"):
            assert not value.any()
        else:
            bound = 1 / np.sqrt(value.shape[1])
            assert np.abs(value).max() <= bound
            assert np.abs(value).max() > 0.9 * bound  # uniform over the whole range
    a = np.concatenate([v.ravel() * np.sqrt(v.shape[1]) for k, v in first.items() if "A" in k])
    assert abs(a.std() - 1 / np.sqrt(3)) < 0.02  # uniform(-1, 1) after scaling
    again = initial_adapter(dict(reversed(shapes.items())), seed=7)
    assert all(np.array_equal(first[k], again[k]) for k in shapes)
    other = initial_adapter(shapes, seed=8)
    assert not np.array_equal(first["layers.0.q_proj.lora_A"], other["layers.0.q_proj.lora_A"])


def test_permutation_interleaves_rotary_halves() -> None:
    rows = np.arange(8, dtype=np.float32).reshape(8, 1)
    assert permute_rope_rows(rows, 1).ravel().tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
    assert permute_rope_rows(rows, 2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    with pytest.raises(ValueError, match="do not split"):
        permute_rope_rows(rows, 3)


def test_exported_file_reads_back(demo_model: Path, adapter: Adapter, tmp_path: Path) -> None:
    target = tmp_path / "out" / "adapter.gguf"
    result = export_gguf_lora(
        adapter,
        base_gguf=demo_model,
        alpha=4.0,
        target=target,
        metadata={"lineage.round": "3", "job": "j-1"},
    )
    assert result == target
    assert [p.name for p in target.parent.iterdir()] == ["adapter.gguf"]  # no temp file left
    reader = GGUFReader(target)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == "llama"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == 4.0
    assert fields["outpost.lineage.round"] == "3"
    assert fields["outpost.job"] == "j-1"
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == len(adapter)
    q_a, q_b = tensors["blk.0.attn_q.weight.lora_a"], tensors["blk.0.attn_q.weight.lora_b"]
    assert q_a.shape.tolist() == [576, RANK]  # ggml order: [in, rank]
    assert q_b.shape.tolist() == [RANK, 576]
    assert tensors["blk.29.attn_k.weight.lora_b"].shape.tolist() == [RANK, 192]
    assert tensors["blk.5.ffn_down.weight.lora_a"].shape.tolist() == [1536, RANK]
    assert q_a.tensor_type.name == "F16"
    stored = {name: np.asarray(t.data) for name, t in tensors.items()}

    def f16(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float16]:
        return array.astype(np.float16)

    a = adapter["layers.0.q_proj.lora_A"]
    np.testing.assert_array_equal(stored["blk.0.attn_q.weight.lora_a"], f16(a))
    v_b = adapter["layers.4.v_proj.lora_B"]
    np.testing.assert_array_equal(stored["blk.4.attn_v.weight.lora_b"], f16(v_b))
    # q and k rows are reordered per head (9 query heads, 3 KV heads), v's are not.
    for hf, name, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
        b = adapter[f"layers.2.{hf}.lora_B"]
        written = stored[f"blk.2.{name}.weight.lora_b"]
        assert not np.array_equal(written, f16(b))
        np.testing.assert_array_equal(written, f16(permute_rope_rows(b, heads)))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("shape", "has shape .*expected"),
        ("nan", "NaN or infinite"),
        ("missing", "lacks 1 tensor"),
        ("key", "is not an adapter key"),
        ("rank", "mixes ranks"),
        ("huge", "beyond float16 range"),
    ],
)
def test_damaged_adapters_are_refused(
    demo_model: Path, adapter: Adapter, tmp_path: Path, damage: str, message: str
) -> None:
    key = "layers.3.k_proj.lora_B"
    if damage == "shape":
        adapter[key] = adapter[key][:-1]
    elif damage == "nan":
        adapter[key][0, 0] = np.nan
    elif damage == "missing":
        del adapter[key]
    elif damage == "key":
        adapter["layers.3.lm_head.lora_B"] = adapter.pop(key)
    elif damage == "rank":
        adapter[key] = np.zeros((192, RANK + 1), dtype=np.float32)
    else:
        adapter[key][0, 0] = 1e6
    target = tmp_path / "adapter.gguf"
    with pytest.raises(ValueError, match=message):
        export_gguf_lora(adapter, base_gguf=demo_model, alpha=4.0, target=target)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused(demo_model: Path, adapter: Adapter, tmp_path: Path) -> None:
    target = tmp_path / "adapter.gguf"
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        export_gguf_lora(adapter, base_gguf=demo_model, alpha=0.0, target=target)
    with pytest.raises(ValueError, match="metadata 'Bad Key'"):
        export_gguf_lora(
            adapter, base_gguf=demo_model, alpha=4.0, target=target, metadata={"Bad Key": "x"}
        )
    with pytest.raises(ValueError, match="holds no tensors"):
        export_gguf_lora({}, base_gguf=demo_model, alpha=4.0, target=target)
    gpt2 = _other_architecture_base(tmp_path / "gpt2.gguf")
    with pytest.raises(ValueError, match="only 'llama'"):
        export_gguf_lora(adapter, base_gguf=gpt2, alpha=4.0, target=target)
    assert not target.exists()


def test_dequantized_copy_keeps_metadata_and_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((64, 96)).astype(np.float32)
    packed = quantize(weight, GGMLQuantizationType.Q4_1)
    writer = GGUFWriter(tmp_path / "q.gguf", "llama")
    writer.add_uint32("llama.block_count", 1)
    writer.add_file_type(LlamaFileType.MOSTLY_Q4_1)
    writer.add_quantization_version(2)
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "a", "b"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0])
    writer.add_string("tokenizer.chat_template", "{{ messages }}")
    writer.add_tensor("blk.0.attn_q.weight", packed, raw_dtype=GGMLQuantizationType.Q4_1)
    writer.add_tensor("blk.0.attn_norm.weight", np.arange(96, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    copy = dequantized_copy(tmp_path / "q.gguf", tmp_path / "f32" / "copy.gguf")
    assert sorted(p.name for p in copy.parent.iterdir()) == ["copy.gguf"]
    fields = {name: f.contents() for name, f in GGUFReader(copy).fields.items()}
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == LlamaFileType.ALL_F32
    assert "general.quantization_version" not in fields
    assert fields["llama.block_count"] == 1
    assert fields["tokenizer.ggml.tokens"] == ["<s>", "a", "b"]
    assert fields["tokenizer.ggml.scores"] == [0.0, -1.0, -2.0]
    assert fields["tokenizer.chat_template"] == "{{ messages }}"
    tensors = {t.name: t for t in GGUFReader(copy).tensors}
    q = tensors["blk.0.attn_q.weight"]
    assert q.tensor_type == GGMLQuantizationType.F32
    assert q.shape.tolist() == [96, 64]  # ggml order, as in the source
    expected = dequantize(packed, GGMLQuantizationType.Q4_1)
    np.testing.assert_array_equal(np.asarray(q.data), expected)
    assert np.abs(expected - weight).max() < 0.5  # a real dequantization, not zeros
    norm = tensors["blk.0.attn_norm.weight"]
    assert norm.tensor_type == GGMLQuantizationType.F32
    np.testing.assert_array_equal(np.asarray(norm.data), np.arange(96, dtype=np.float32))
