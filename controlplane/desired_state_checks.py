"""What a desired state may hold: identifiers, labels, model assignments and their adapters."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath

from common.artifacts import check_sha256
from common.control import AdapterAssignment, ModelAssignment
from common.errors import InvalidArgument

IDENTIFIER = re.compile(r"[A-Za-z0-9._-]{1,63}")
MAX_LABELS = 32
MAX_MODELS = 64
MAX_ADAPTERS = 16  # per model
MAX_PATH_CHARS = 4096
CONTEXT_LENGTH_RANGE = (64, 1_048_576)
QUEUE_DEPTH_RANGE = (0, 1024)


def check_identifier(value: object, what: str) -> str:
    """1 to 63 characters of [A-Za-z0-9._-]: sites, label keys and values, model aliases."""
    if not isinstance(value, str) or IDENTIFIER.fullmatch(value) is None:
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise InvalidArgument(f"{what} must be 1 to 63 characters of A-Z a-z 0-9 . _ -: {shown}")
    return value


def check_agent_id(agent_id: object) -> str:
    """An agent id is a UUID in canonical form (lowercase, hyphenated), as agents make them."""
    try:
        canonical = str(uuid.UUID(agent_id)) if isinstance(agent_id, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != agent_id:
        raise InvalidArgument("an agent id must be a UUID in lowercase canonical form")
    return canonical


def check_labels(labels: object) -> dict[str, str]:
    """A copy of `labels` once every key and value is an identifier; at most 32 of them."""
    if not isinstance(labels, Mapping):
        raise InvalidArgument("labels must be a mapping of strings to strings")
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"at most {MAX_LABELS} labels are allowed")
    return {
        check_identifier(k, "a label key"): check_identifier(v, f"the value of label {k}")
        for k, v in labels.items()
    }


def _int_in(value: object, low: int, high: int | None, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidArgument(f"{what} must be {bound}, got {value}")
    return value


def check_assignments(models: Sequence[ModelAssignment]) -> tuple[ModelAssignment, ...]:
    if len(models) > MAX_MODELS:
        raise InvalidArgument(f"at most {MAX_MODELS} models per agent are allowed")
    seen: set[str] = set()
    for model in models:
        if not isinstance(model, ModelAssignment):
            raise InvalidArgument("models must be model assignments")
        alias = check_identifier(model.alias, "a model alias")
        if alias in seen:
            raise InvalidArgument(f"model alias {alias} appears more than once")
        seen.add(alias)
        path = model.path
        if model.sha256:
            check_sha256(model.sha256, f"the sha256 of model {alias}")
            if path:
                raise InvalidArgument(f"model {alias} has both a sha256 and a path")
            _int_in(model.size_bytes, 1, None, f"size_bytes of {alias}")
        elif (
            not isinstance(path, str)
            or not 1 <= len(path) <= MAX_PATH_CHARS
            or not path.isprintable()
            or not PurePosixPath(path).is_absolute()
        ):
            raise InvalidArgument(
                f"the path of model {alias} must be an absolute path of printable characters"
            )
        _int_in(model.threads, 0, 1024, f"threads of {alias}")
        _int_in(model.context_length, *CONTEXT_LENGTH_RANGE, f"context_length of {alias}")
        _int_in(model.gpu_layers, -1, None, f"gpu_layers of {alias}")
        _int_in(model.queue_depth, *QUEUE_DEPTH_RANGE, f"queue_depth of {alias}")
        _check_adapters(model)
    return tuple(models)


def _check_adapters(model: ModelAssignment) -> None:
    if not model.adapters:
        return
    if not model.sha256:
        raise InvalidArgument(f"model {model.alias}: only registry models carry adapters")
    if len(model.adapters) > MAX_ADAPTERS:
        raise InvalidArgument(f"model {model.alias}: at most {MAX_ADAPTERS} adapters")
    names: set[str] = set()
    for adapter in model.adapters:
        if not isinstance(adapter, AdapterAssignment):
            raise InvalidArgument(f"model {model.alias}: adapters must be adapter assignments")
        name = check_identifier(adapter.name, f"an adapter name of model {model.alias}")
        if name in names:
            raise InvalidArgument(f"model {model.alias}: adapter {name} appears more than once")
        names.add(name)
        check_sha256(adapter.sha256, f"the sha256 of adapter {model.alias}:{name}")
        _int_in(adapter.size_bytes, 1, None, f"size_bytes of adapter {model.alias}:{name}")
