"""The last desired state on disk: round trip, atomic replacement, hostile or damaged files."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from agent.control.state_store import DesiredStateError, DesiredStateStore
from common.control import DesiredState, ModelAssignment

STATE = DesiredState(
    generation=7,
    models=(
        ModelAssignment(alias="smol", path="/models/smol.gguf"),
        ModelAssignment(
            alias="registry",
            sha256="ab" * 32,
            size_bytes=98_362_432,
            model_name="smollm2",
            model_version="3",
            threads=2,
        ),
        ModelAssignment(
            alias="big", path="/models/big.gguf", context_length=8192, gpu_layers=-1, queue_depth=4
        ),
    ),
    labels=MappingProxyType({"site": "berlin", "tier": "edge"}),
)


def valid_document() -> dict[str, Any]:
    return {
        "version": 1,
        "generation": 3,
        "models": [
            {
                "alias": "smol",
                "path": "/m.gguf",
                "context_length": 1024,
                "gpu_layers": 0,
                "queue_depth": 2,
            }
        ],
        "labels": {"site": "x"},
    }


def test_nothing_saved_yet(tmp_path: Path) -> None:
    assert DesiredStateStore(tmp_path).load() is None
    assert DesiredStateStore(tmp_path / "missing").load() is None


def test_round_trip(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    DesiredStateStore(state_dir).save(STATE)
    loaded = DesiredStateStore(state_dir).load()
    assert loaded == STATE
    assert loaded is not None
    assert isinstance(loaded.labels, MappingProxyType)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "desired-state.json").stat().st_mode) == 0o600
    assert json.loads((state_dir / "desired-state.json").read_text())["generation"] == 7


def test_a_save_replaces_the_previous_state(tmp_path: Path) -> None:
    store = DesiredStateStore(tmp_path)
    store.save(STATE)
    newer = DesiredState(generation=8)
    store.save(newer)
    assert store.load() == newer
    assert [p.name for p in tmp_path.iterdir()] == ["desired-state.json"]  # no temp files


def test_optional_fields_take_the_defaults(tmp_path: Path) -> None:
    document = {"version": 1, "generation": 2, "models": [{"alias": "a", "path": "/a.gguf"}]}
    (tmp_path / "desired-state.json").write_text(json.dumps(document))
    assert DesiredStateStore(tmp_path).load() == DesiredState(
        generation=2, models=(ModelAssignment(alias="a", path="/a.gguf"),)
    )


def test_the_valid_document_used_below_loads(tmp_path: Path) -> None:
    (tmp_path / "desired-state.json").write_text(json.dumps(valid_document()))
    loaded = DesiredStateStore(tmp_path).load()
    assert loaded is not None
    assert loaded.models[0].queue_depth == 2
    assert dict(loaded.labels) == {"site": "x"}


@pytest.mark.parametrize("content", [b"{", b"", b"\xff\xfe\x00", b"[" * 100_000])
def test_damaged_json_is_an_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "desired-state.json").write_bytes(content)
    with pytest.raises(DesiredStateError, match=r"desired-state\.json is not valid JSON"):
        DesiredStateStore(tmp_path).load()


def _set(path: str, value: Any) -> dict[str, Any]:
    document = valid_document()
    target: Any = document
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last: Any = int(keys[-1]) if keys[-1].isdigit() else keys[-1]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return document


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("version", 2, "unsupported format version 2"),
        ("version", _DELETE, "unsupported format version None"),
        ("generation", "3", "generation must be an integer"),
        ("generation", True, "generation must be an integer"),
        ("generation", 3.0, "generation must be an integer"),
        ("generation", -1, "must not be negative"),
        ("generation", _DELETE, "generation must be an integer"),
        ("models", {"a": 1}, "models must be a list"),
        ("models.0", "smol", r"models\[0\] must be a JSON object"),
        ("models.0.alias", 5, r"models\[0\]\.alias must be a string"),
        ("models.0.path", None, r"models\[0\]\.path must be a string"),
        ("models.0.path", _DELETE, r"models\[0\] needs a path or a sha256"),
        ("models.0.sha256", "ab" * 31, r"models\[0\]\.sha256 must be 64 lowercase hex digits"),
        ("models.0.sha256", "AB" * 32, r"models\[0\]\.sha256 must be 64 lowercase hex digits"),
        ("models.0.size_bytes", "9", r"models\[0\]\.size_bytes must be an integer"),
        ("models.0.context_length", "1024", r"models\[0\]\.context_length must be an integer"),
        ("models.0.gpu_layers", False, r"models\[0\]\.gpu_layers must be an integer"),
        ("models.0.queue_depth", [2], r"models\[0\]\.queue_depth must be an integer"),
        ("labels", ["site"], "labels must be a JSON object"),
        ("labels.site", 1, r"labels\['site'\] must be a string"),
    ],
)
def test_wrong_types_are_refused(tmp_path: Path, path: str, value: Any, message: str) -> None:
    (tmp_path / "desired-state.json").write_text(json.dumps(_set(path, value)))
    with pytest.raises(DesiredStateError, match=rf"desired-state\.json: .*{message}"):
        DesiredStateStore(tmp_path).load()


@pytest.mark.parametrize("document", [[], "state", 3, None])
def test_a_document_that_is_not_an_object_is_refused(tmp_path: Path, document: Any) -> None:
    (tmp_path / "desired-state.json").write_text(json.dumps(document))
    with pytest.raises(DesiredStateError, match="must be a JSON object"):
        DesiredStateStore(tmp_path).load()
