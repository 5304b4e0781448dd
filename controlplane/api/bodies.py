"""Strict readers for REST request bodies: every mistake is an InvalidArgument naming the field.

Shapes and types are checked here; what a valid site, label or model is comes from the
services (`controlplane.desired_state`), so the API and the service layer cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from common.control import ModelAssignment
from common.errors import InvalidArgument
from common.json_body import parse_json_object
from controlplane.desired_state_checks import (
    CONTEXT_LENGTH_RANGE,
    MAX_LABELS,
    MAX_MODELS,
    MAX_PATH_CHARS,
    QUEUE_DEPTH_RANGE,
    check_identifier,
    check_labels,
)
from controlplane.tokens import MAX_TTL, MIN_TTL

MAX_SITE = 63
# The wire format carries gpu_layers as int32; no model has anywhere near this many layers.
GPU_LAYERS_RANGE = (-1, 100_000)
_MODEL_INTS: dict[str, tuple[int, int]] = {
    "context_length": CONTEXT_LENGTH_RANGE,
    "gpu_layers": GPU_LAYERS_RANGE,
    "queue_depth": QUEUE_DEPTH_RANGE,
}


def reject_unknown(document: dict[str, Any], allowed: set[str], where: str = "") -> None:
    unknown = sorted(set(document) - allowed)
    if unknown:
        names = ", ".join(repr(f"{where}{name}"[:80]) for name in unknown[:5])
        raise InvalidArgument(f"unknown field {names}; allowed: {', '.join(sorted(allowed))}")


def _string(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"'{field}' must be a string")
    if len(value) > limit:
        raise InvalidArgument(f"'{field}' is longer than {limit} characters")
    return value


def _integer(value: object, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"'{field}' must be an integer")
    if not low <= value <= high:
        raise InvalidArgument(f"'{field}' must be between {low} and {high}, got {value}")
    return value


def labels(value: object, field: str = "labels") -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"'{field}' must be an object with string values")
    if len(value) > MAX_LABELS:
        raise InvalidArgument(f"'{field}' has more than {MAX_LABELS} entries")
    for key, item in value.items():
        if not isinstance(item, str):
            raise InvalidArgument(f"'{field}': the value of label {key[:63]!r} must be a string")
    try:
        return check_labels(value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"'{field}': {exc}") from None


def site(value: object, field: str = "site") -> str:
    if value is None or value == "":
        return ""
    _string(value, field, MAX_SITE)
    return check_identifier(value, f"'{field}'")


def labels_body(body: bytes) -> dict[str, str]:
    """`PUT /agents/{id}/labels`: {"labels": {...}}, the complete new label set."""
    document = parse_json_object(body)
    reject_unknown(document, {"labels"})
    if "labels" not in document:
        raise InvalidArgument("'labels' is required")
    return labels(document["labels"])


def _model(value: object, index: int) -> ModelAssignment:
    where = f"models[{index}]"
    if not isinstance(value, dict):
        raise InvalidArgument(f"'{where}' must be an object")
    reject_unknown(value, {"alias", "path", *_MODEL_INTS}, f"{where}.")
    for required in ("alias", "path"):
        if required not in value:
            raise InvalidArgument(f"'{where}.{required}' is required")
    alias = check_identifier(_string(value["alias"], f"{where}.alias", 63), f"'{where}.alias'")
    path = _string(value["path"], f"{where}.path", MAX_PATH_CHARS)
    if not path:
        raise InvalidArgument(f"'{where}.path' must not be empty")
    if not path.isprintable():
        raise InvalidArgument(f"'{where}.path' must not contain control characters")
    if not path.startswith("/"):
        raise InvalidArgument(f"'{where}.path' must be an absolute path on the agent")
    numbers: dict[str, Any] = {
        name: _integer(value[name], f"{where}.{name}", low, high)
        for name, (low, high) in _MODEL_INTS.items()
        if value.get(name) is not None
    }
    return ModelAssignment(alias=alias, path=path, **numbers)


def models_body(body: bytes) -> tuple[ModelAssignment, ...]:
    """`PUT /agents/{id}/desired-state/models`: {"models": [...]}, the complete new list."""
    document = parse_json_object(body)
    reject_unknown(document, {"models"})
    if "models" not in document:
        raise InvalidArgument("'models' is required")
    items = document["models"]
    if not isinstance(items, list):
        raise InvalidArgument("'models' must be an array")
    if len(items) > MAX_MODELS:
        raise InvalidArgument(f"'models' has more than {MAX_MODELS} entries")
    models = tuple(_model(item, index) for index, item in enumerate(items))
    aliases = [m.alias for m in models]
    duplicates = sorted({a for a in aliases if aliases.count(a) > 1})
    if duplicates:
        raise InvalidArgument(f"'models' uses alias(es) twice: {', '.join(duplicates)}")
    return models


@dataclass(frozen=True)
class TokenRequest:
    site: str
    labels: dict[str, str]
    ttl: timedelta


def token_body(body: bytes, default_ttl: timedelta) -> TokenRequest:
    """`POST /tokens`: {"site"?, "labels"?, "ttl_seconds"?}; an empty body takes the defaults."""
    document = parse_json_object(body) if body.strip() else {}
    reject_unknown(document, {"site", "labels", "ttl_seconds"})
    ttl = default_ttl
    if document.get("ttl_seconds") is not None:
        low, high = int(MIN_TTL.total_seconds()), int(MAX_TTL.total_seconds())
        ttl = timedelta(seconds=_integer(document["ttl_seconds"], "ttl_seconds", low, high))
    raw_labels = document.get("labels")
    return TokenRequest(
        site=site(document.get("site")),
        labels={} if raw_labels is None else labels(raw_labels),
        ttl=ttl,
    )
