"""The run plan's JSON round trip, the job directory's JSON files, and the round settings a
Flower message carries (`RoundSettings`), including the values a hostile message may hold."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ConfigRecord

from common.federated.flower_messages import RoundSettings, SettingsError
from controlplane.federated.run_plan import (
    MAX_JSON_BYTES,
    DifferentialPrivacy,
    RunPlan,
    read_json,
    round_file,
    write_json,
)


def plan(**overrides: Any) -> RunPlan:
    values: dict[str, Any] = {
        "job_id": "5d0c9e4e-1f7b-4d84-9a55-1c2b3d4e5f60",
        "output_dir": "/var/lib/outpost/federated/jobs/5d0c9e4e",
        "base_gguf": "/var/lib/outpost/models/base.gguf",
        "agents": ("a-1", "a-2"),
        "rounds": 5,
    }
    return RunPlan(**(values | overrides))


@pytest.mark.parametrize(
    "dp", [None, DifferentialPrivacy(noise_multiplier=0.8, clipping_norm=1.5)], ids=["no-dp", "dp"]
)
def test_a_plan_reads_back_equal(dp: DifferentialPrivacy | None) -> None:
    original = plan(
        first_round=3,
        initial_adapter="/jobs/x/round-0002.npz",
        min_participants=2,
        participant_wait_s=12.5,
        aggregation="frozen-a",
        rank=4,
        alpha=8,
        targets=("q_proj", "k_proj", "down_proj"),
        learning_rate=2e-4,
        local_steps=7,
        batch_size=2,
        max_seq_len=64,
        seed=9,
        round_timeout_s=90.0,
        differential_privacy=dp,
        extra={"note": "resumed", "n": [1, 2]},
    )
    text = original.to_json()
    again = RunPlan.from_json(text)
    assert again == original
    assert isinstance(again.agents, tuple)
    assert isinstance(again.targets, tuple)
    assert again.directory == Path(original.output_dir)
    stored = json.loads(text)
    if dp is None:
        assert stored["differential_privacy"] is None
        assert again.differential_privacy is None
    else:
        assert stored["differential_privacy"] == {"noise_multiplier": 0.8, "clipping_norm": 1.5}
        assert again.differential_privacy == dp


def test_the_defaults_read_back_too() -> None:
    assert RunPlan.from_json(plan().to_json()) == plan()


def test_a_plan_with_an_unknown_field_is_refused() -> None:
    document = json.loads(plan().to_json()) | {"surprise": 1}
    with pytest.raises(TypeError):
        RunPlan.from_json(json.dumps(document))


def test_round_files_are_named_by_round() -> None:
    assert round_file(Path("/j"), 1, "json") == Path("/j/round-0001.json")
    assert round_file(Path("/j"), 123, "npz") == Path("/j/round-0123.npz")


def test_write_json_replaces_the_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "result.json"
    write_json(target, {"state": "running", "b": 1})
    assert read_json(target) == {"state": "running", "b": 1}
    write_json(target, {"state": "succeeded"})
    assert read_json(target) == {"state": "succeeded"}
    assert [p.name for p in target.parent.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"state": "running"})
    with pytest.raises(TypeError):
        write_json(target, {"state": object()})
    assert read_json(target) == {"state": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_read_json_of_a_missing_file_is_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None


def test_read_json_refuses_an_oversized_file(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    target.write_bytes(b'"' + b"x" * MAX_JSON_BYTES + b'"')
    with pytest.raises(ValueError, match="larger than"):
        read_json(target)
    target.write_bytes(b'"' + b"x" * (MAX_JSON_BYTES - 2) + b'"')  # exactly at the limit
    assert len(read_json(target)) == MAX_JSON_BYTES - 2


@pytest.mark.parametrize("damaged", [b"", b'{"a": ', b"\xff\xfe{}", b"{'a': 1}"])
def test_read_json_refuses_a_damaged_file(tmp_path: Path, damaged: bytes) -> None:
    target = tmp_path / "damaged.json"
    target.write_bytes(damaged)
    with pytest.raises((json.JSONDecodeError, UnicodeDecodeError)):
        read_json(target)


# -- RoundSettings -------------------------------------------------------------------------

GOOD = RoundSettings(
    job_id="5d0c9e4e-1f7b-4d84-9a55-1c2b3d4e5f60",
    server_round=3,
    rank=8,
    alpha=16,
    targets=("q_proj", "v_proj"),
    learning_rate=1e-3,
    local_steps=20,
    batch_size=4,
    max_seq_len=128,
    seed=0,
    freeze_a=True,
)


def config(**changes: Any) -> ConfigRecord:
    values = dict(GOOD.to_config().items())
    for key, value in changes.items():
        name = key.replace("_", "-")
        if value is None:
            del values[name]
        else:
            values[name] = value
    return ConfigRecord(values)


def test_settings_read_back_from_their_config_record() -> None:
    record = GOOD.to_config()
    assert record["server-round"] == 3
    assert record["targets"] == ["q_proj", "v_proj"]
    assert record["freeze-a"] is True
    assert set(record) == {f.name.replace("_", "-") for f in dataclasses.fields(RoundSettings)}
    assert RoundSettings.from_config(record) == GOOD
    other = dataclasses.replace(GOOD, freeze_a=False, targets=("down_proj",), server_round=0)
    assert RoundSettings.from_config(other.to_config()) == other


def test_no_config_record_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="no round settings"):
        RoundSettings.from_config(None)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(RoundSettings)])
def test_every_missing_field_is_a_settings_error(field: str) -> None:
    with pytest.raises(SettingsError, match="bad round settings"):
        RoundSettings.from_config(config(**{field: None}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("server_round", -1),
        ("server_round", 10_001),
        ("rank", 0),
        ("rank", 65),
        ("alpha", 0),
        ("alpha", 1025),
        ("local_steps", 0),
        ("local_steps", 10_001),
        ("batch_size", 0),
        ("batch_size", 65),
        ("max_seq_len", 1),
        ("max_seq_len", 4097),
    ],
)
def test_every_out_of_range_bound_is_a_settings_error(field: str, value: int) -> None:
    with pytest.raises(SettingsError, match=f"{field} {value} is outside"):
        RoundSettings.from_config(config(**{field: value}))
    with pytest.raises(SettingsError, match=f"{field} {value} is outside"):
        dataclasses.replace(GOOD, **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "low", "high"),
    [
        ("server_round", 0, 10_000),
        ("rank", 1, 64),
        ("alpha", 1, 1024),
        ("local_steps", 1, 10_000),
        ("batch_size", 1, 64),
        ("max_seq_len", 2, 4096),
    ],
)
def test_the_bounds_themselves_are_allowed(field: str, low: int, high: int) -> None:
    for value in (low, high):
        assert getattr(RoundSettings.from_config(config(**{field: value})), field) == value


@pytest.mark.parametrize(
    "rate", [0.0, -1e-3, 1.5, math.nan, math.inf, -math.inf], ids=lambda r: repr(r)
)
def test_a_learning_rate_outside_zero_to_one_is_a_settings_error(rate: float) -> None:
    with pytest.raises(SettingsError, match="learning_rate"):
        RoundSettings.from_config(config(learning_rate=rate))
    assert RoundSettings.from_config(config(learning_rate=1.0)).learning_rate == 1.0


@pytest.mark.parametrize(
    "targets",
    [[], ["lm_head"], ["q_proj", "embed_tokens"], ["Q_PROJ"], ["q_proj "]],
    ids=repr,
)
def test_unknown_or_no_targets_are_a_settings_error(targets: list[str]) -> None:
    with pytest.raises(SettingsError, match="targets must be among"):
        RoundSettings.from_config(config(targets=targets))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rank", "eight"),
        ("server_round", "3; rm -rf /"),
        ("alpha", "1e3x"),
        ("local_steps", b"\x00\x01"),
        ("learning_rate", "fast"),
        ("seed", "0x10"),
        ("max_seq_len", "nan"),
    ],
)
def test_hostile_values_are_a_settings_error(field: str, value: Any) -> None:
    with pytest.raises(SettingsError):
        RoundSettings.from_config(config(**{field: value}))


def test_a_nan_learning_rate_sent_as_text_is_a_settings_error() -> None:
    with pytest.raises(SettingsError, match="learning_rate"):
        RoundSettings.from_config(config(learning_rate="nan"))


def test_a_single_string_target_is_not_split_into_letters() -> None:
    with pytest.raises(SettingsError, match="targets must be among"):
        RoundSettings.from_config(config(targets="q_proj"))
