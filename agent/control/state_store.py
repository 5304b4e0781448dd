"""The last desired state the agent received, kept on disk so a restart can reconcile offline."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

from common.artifacts import check_sha256
from common.control import DesiredState, ModelAssignment
from common.errors import InvalidArgument
from common.files import atomic_write, ensure_private_directory

STATE_FILE = "desired-state.json"
FORMAT_VERSION = 1


class DesiredStateError(Exception):
    """The stored desired state is damaged; the message names the file."""


class DesiredStateStore:
    """`state_dir/desired-state.json`, replaced atomically on every save."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / STATE_FILE

    def save(self, state: DesiredState) -> None:
        document = {
            "version": FORMAT_VERSION,
            "generation": state.generation,
            "models": [asdict(model) for model in state.models],
            "labels": dict(state.labels),
        }
        ensure_private_directory(self.state_dir)
        atomic_write(self.path, json.dumps(document, indent=2).encode() + b"\n", 0o600)

    def load(self) -> DesiredState | None:
        """The saved state; None when there is none; DesiredStateError when it is damaged."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as error:
            raise DesiredStateError(f"{self.path} is not valid JSON: {error}") from error
        try:
            return _parse(document)
        except _Invalid as error:
            raise DesiredStateError(f"{self.path}: {error}") from None


class _Invalid(Exception):
    pass


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Invalid(f"{where} must be a JSON object")
    return value


def _integer(document: dict[str, Any], key: str, where: str, default: int | None = None) -> int:
    value = document.get(key, default)
    if type(value) is not int:  # bool is an int subclass: excluded on purpose
        raise _Invalid(f"{where}.{key} must be an integer, not {value!r}")
    return value


def _string(document: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = document.get(key, default)
    if not isinstance(value, str):
        raise _Invalid(f"{where}.{key} must be a string, not {value!r}")
    return value


def _sha256(model: dict[str, Any], where: str) -> str:
    value = _string(model, "sha256", where, "")
    if value:
        try:
            check_sha256(value)
        except InvalidArgument:
            raise _Invalid(f"{where}.sha256 must be 64 lowercase hex digits") from None
    if not value and not model.get("path"):
        raise _Invalid(f"{where} needs a path or a sha256")
    return value


def _parse(value: Any) -> DesiredState:
    document = _object(value, "the document")
    version = document.get("version")
    if version != FORMAT_VERSION:
        raise _Invalid(f"unsupported format version {version!r} (expected {FORMAT_VERSION})")
    generation = _integer(document, "generation", "state")
    if generation < 0:
        raise _Invalid(f"state.generation must not be negative, not {generation}")
    models_value = document.get("models", [])
    if not isinstance(models_value, list):
        raise _Invalid("state.models must be a list")
    defaults = ModelAssignment(alias="", path="")
    models = []
    for index, item in enumerate(models_value):
        where = f"models[{index}]"
        model = _object(item, where)
        models.append(
            ModelAssignment(
                alias=_string(model, "alias", where),
                path=_string(model, "path", where, ""),
                context_length=_integer(model, "context_length", where, defaults.context_length),
                gpu_layers=_integer(model, "gpu_layers", where, defaults.gpu_layers),
                queue_depth=_integer(model, "queue_depth", where, defaults.queue_depth),
                sha256=_sha256(model, where),
                size_bytes=_integer(model, "size_bytes", where, 0),
                model_name=_string(model, "model_name", where, ""),
                model_version=_string(model, "model_version", where, ""),
                threads=_integer(model, "threads", where, 0),
            )
        )
    labels = _object(document.get("labels", {}), "state.labels")
    for key, label in labels.items():
        if not isinstance(label, str):
            raise _Invalid(f"state.labels[{key!r}] must be a string, not {label!r}")
    return DesiredState(
        generation=generation, models=tuple(models), labels=MappingProxyType(dict(labels))
    )
