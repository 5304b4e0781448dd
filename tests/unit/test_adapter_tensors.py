"""The adapter-in-transit contract: keys, checks, and .npz files that refuse what is not one."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from common.federated.adapter_tensors import (
    LORA_TARGETS,
    AdapterError,
    adapter_shapes,
    check_adapter,
    initial_adapter,
    load_adapter,
    lora_key,
    parse_lora_key,
    save_adapter,
)

SHAPES = adapter_shapes(2, 4, ("q_proj", "down_proj"), {"q_proj": (8, 8), "down_proj": (12, 8)})


def _adapter() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}


def test_keys_round_trip_and_shapes_follow_peft() -> None:
    assert lora_key(3, "gate_proj", "lora_B") == "layers.3.gate_proj.lora_B"
    assert parse_lora_key("layers.12.v_proj.lora_A") == (12, "v_proj", "lora_A")
    assert SHAPES["layers.1.down_proj.lora_A"] == (4, 12)
    assert SHAPES["layers.1.down_proj.lora_B"] == (8, 4)
    assert len(SHAPES) == 2 * 2 * 2
    assert "q_proj" in LORA_TARGETS


@pytest.mark.parametrize(
    "key",
    ["layers.1.qproj.lora_A", "layers.01.q_proj.lora_A", "layers.1.q_proj.lora_C", "q_proj", ""],
)
def test_non_contract_keys_are_refused(key: str) -> None:
    with pytest.raises(AdapterError, match="not an adapter key"):
        parse_lora_key(key)


def test_a_good_adapter_passes() -> None:
    check_adapter(_adapter(), SHAPES)


def test_missing_and_extra_keys_are_named() -> None:
    tensors = _adapter()
    del tensors["layers.1.q_proj.lora_B"]
    with pytest.raises(AdapterError, match=r"lacks 1 .*layers\.1\.q_proj\.lora_B"):
        check_adapter(tensors, SHAPES)
    tensors = _adapter()
    tensors["layers.2.q_proj.lora_A"] = np.zeros((4, 8), np.float32)
    with pytest.raises(AdapterError, match=r"unexpected .*layers\.2\.q_proj\.lora_A"):
        check_adapter(tensors, SHAPES)


def test_wrong_shape_dtype_and_non_finite_values_are_named() -> None:
    tensors = _adapter()
    tensors["layers.0.q_proj.lora_A"] = np.zeros((4, 9), np.float32)
    with pytest.raises(AdapterError, match=r"layers\.0\.q_proj\.lora_A.*shape \(4, 9\)"):
        check_adapter(tensors, SHAPES)
    tensors = _adapter()
    tensors["layers.0.q_proj.lora_B"] = np.zeros((8, 4), np.int32)
    with pytest.raises(AdapterError, match=r"layers\.0\.q_proj\.lora_B.*int32"):
        check_adapter(tensors, SHAPES)
    for bad in (np.nan, np.inf):
        tensors = _adapter()
        tensors["layers.1.down_proj.lora_B"][3, 2] = bad
        with pytest.raises(AdapterError, match=r"layers\.1\.down_proj\.lora_B.*NaN"):
            check_adapter(tensors, SHAPES)


def test_save_and_load_round_trip_exactly(tmp_path: Path) -> None:
    tensors = _adapter()
    path = tmp_path / "adapter.npz"
    save_adapter(path, tensors)
    loaded = load_adapter(path, max_bytes=1_000_000)
    check_adapter(loaded, SHAPES)
    assert all(np.array_equal(loaded[k], tensors[k]) for k in tensors)
    assert all(v.dtype == np.float32 for v in loaded.values())


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "adapter.npz"
    save_adapter(path, _adapter())
    with pytest.raises(AdapterError, match="over the 100 limit"):
        load_adapter(path, max_bytes=100)


def test_pickled_and_malformed_files_are_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(pickle.dumps(_adapter()))
    with pytest.raises(AdapterError, match="not a valid adapter"):
        load_adapter(pickled, max_bytes=1_000_000)
    objects = tmp_path / "objects.npz"
    with objects.open("wb") as file:
        np.savez(
            file,
            allow_pickle=True,
            **{"layers.0.q_proj.lora_A": np.array([{"a": 1}], dtype=object)},
        )
    with pytest.raises(AdapterError, match="not a valid adapter"):
        load_adapter(objects, max_bytes=1_000_000)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(AdapterError, match="not a valid adapter"):
        load_adapter(garbage, max_bytes=1_000_000)
    with pytest.raises(AdapterError, match="cannot read"):
        load_adapter(tmp_path / "absent.npz", max_bytes=1_000_000)


def test_foreign_keys_and_integer_tensors_in_a_file_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(
        foreign, allow_pickle=False, **{"base_model.embed_tokens": np.zeros((2, 2), np.float32)}
    )
    with pytest.raises(AdapterError, match="not an adapter key"):
        load_adapter(foreign, max_bytes=1_000_000)
    ints = tmp_path / "ints.npz"
    np.savez(ints, allow_pickle=False, **{"layers.0.q_proj.lora_A": np.zeros((2, 2), np.int64)})
    with pytest.raises(AdapterError, match="int64"):
        load_adapter(ints, max_bytes=1_000_000)


def test_initial_adapter_is_a_deterministic_no_op() -> None:
    first, second = initial_adapter(SHAPES, seed=7), initial_adapter(SHAPES, seed=7)
    check_adapter(first, SHAPES)
    assert all(np.array_equal(first[k], second[k]) for k in SHAPES)
    assert not np.array_equal(
        first["layers.0.q_proj.lora_A"], initial_adapter(SHAPES, 8)["layers.0.q_proj.lora_A"]
    )
    a = first["layers.0.down_proj.lora_A"]
    assert 0 < np.abs(a).max() <= 1 / np.sqrt(12)
    assert not first["layers.0.down_proj.lora_B"].any()
