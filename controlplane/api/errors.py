"""Maps errors to JSON responses `{"error": {"code": ..., "message": ...}}` with HTTP statuses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Response
from litestar.types import ExceptionHandlersMap

from common.errors import (
    Conflict as ConflictError,
)
from common.errors import (
    InsufficientResources,
    InvalidArgument,
    NotFound,
    OutpostError,
    ResourceExhausted,
    Unavailable,
)
from controlplane.fleet import AgentAlreadyExists, AgentRevoked

log = logging.getLogger("outpost.controlplane.api")


class ApiError(Exception):
    """An error with its own HTTP status and code; the message is safe to show the caller."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class Unauthenticated(ApiError):
    status = 401
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="outpost"'})


class PermissionDenied(ApiError):
    status = 403
    code = "permission_denied"


class Conflict(ApiError):
    status = 409
    code = "conflict"


_OUTPOST_ERRORS: dict[type[OutpostError], tuple[int, str]] = {
    AgentRevoked: (409, "agent_revoked"),
    AgentAlreadyExists: (409, "conflict"),
    InvalidArgument: (400, "invalid_argument"),
    NotFound: (404, "not_found"),
    ResourceExhausted: (429, "resource_exhausted"),
    Unavailable: (503, "unavailable"),
    ConflictError: (409, "conflict"),
    InsufficientResources: (422, "insufficient_resources"),
}

_HTTP_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "request_too_large",
    415: "unsupported_media_type",
    422: "insufficient_resources",
    429: "resource_exhausted",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response[Any]:
    return Response(
        content={"error": {"code": code, "message": message}},
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def _api_error(_: Request[Any, Any, Any], exc: ApiError) -> Response[Any]:
    return error_response(exc.status, exc.code, exc.message, exc.headers)


def _outpost_error(_: Request[Any, Any, Any], exc: OutpostError) -> Response[Any]:
    for kind, (status, code) in _OUTPOST_ERRORS.items():
        if isinstance(exc, kind):
            return error_response(status, code, str(exc))
    # Any other OutpostError (a conflict raised by a service layer) is the caller's fault.
    return error_response(409, "conflict", str(exc))


def _describe_validation(exc: ValidationException) -> str:
    """Names the parameter Litestar could not read (`limit`, `agent_id`, ...)."""
    problems: list[str] = []
    extra = exc.extra if isinstance(exc.extra, list) else [exc.extra] if exc.extra else []
    for item in extra:
        if isinstance(item, dict):
            key, source = item.get("key"), item.get("source")
            source = getattr(source, "value", source)  # Litestar's ParamType enum
            message = str(item.get("message", "invalid value"))
            where = f"{source} parameter" if source else "parameter"
            problems.append(f"invalid {where} '{key}': {message}" if key else message)
        else:
            problems.append(str(item))
    return "; ".join(problems) or str(exc.detail)


def _validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    return error_response(400, "invalid_argument", _describe_validation(exc))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    status = exc.status_code
    if status == 413:
        return error_response(413, "request_too_large", "request body is too large")
    if status >= 500:
        log.error("HTTP %d: %s", status, exc.detail)
        return error_response(status, "internal", "internal error")
    code = _HTTP_CODES.get(status, "invalid_argument")
    return error_response(status, code, str(exc.detail), exc.headers)


def _internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ApiError: _api_error,
    OutpostError: _outpost_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
