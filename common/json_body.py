"""Request bodies that must be one JSON object, with a clear error for anything else."""

from __future__ import annotations

import json
from typing import Any

from common.errors import InvalidArgument


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidArgument("request body is empty: a JSON object is required")
    try:
        document = json.loads(body)
    except RecursionError:
        raise InvalidArgument("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise InvalidArgument("request body must be a JSON object")
    return document
