"""The console's errors as HTML pages with the right status (never a stack trace)."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, ValidationException
from litestar.response import Response
from litestar.types import ExceptionHandlersMap

from common.errors import Conflict, InvalidArgument, NotFound, OutpostError, ResourceExhausted
from controlplane.console.rendering import Renderer, redirect

log = logging.getLogger("outpost.controlplane.console")
FRAGMENT_HEADER = "x-outpost-fragment"  # sent by console.js: answer 401, not a redirect


class ConsoleError(Exception):
    """An error whose message is safe to show the user."""

    status = 500
    title = "Something went wrong"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LoginRequired(ConsoleError):
    status = 401
    title = "Please log in"


class BadForm(ConsoleError):
    status = 400
    title = "The form could not be used"


class StaleForm(ConsoleError):
    status = 403
    title = "This form has expired"


class Forbidden(ConsoleError):
    status = 403
    title = "Not allowed"


class TooManyAttempts(ConsoleError):
    status = 429
    title = "Too many failed logins"


_OUTPOST_STATUS: dict[type[OutpostError], tuple[int, str]] = {
    InvalidArgument: (400, "The input was not accepted"),
    NotFound: (404, "Not found"),
    Conflict: (409, "Conflict"),
    ResourceExhausted: (429, "Too many requests"),
}


def exception_handlers(renderer: Renderer) -> ExceptionHandlersMap:
    """Handlers for the console's router: every error becomes a page."""

    def page(
        request: Request[Any, Any, Any], status: int, title: str, message: str
    ) -> Response[Any]:
        return renderer.page("error.html", status=status, title=title, message=message, login=None)

    def console_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        assert isinstance(exc, ConsoleError)
        if isinstance(exc, LoginRequired) and FRAGMENT_HEADER not in request.headers:
            return redirect("/login")
        return page(request, exc.status, exc.title, exc.message)

    def outpost_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        for kind, (status, title) in _OUTPOST_STATUS.items():
            if isinstance(exc, kind):
                return page(request, status, title, str(exc))
        log.warning("console: %s", exc)
        return page(request, 500, "Something went wrong", "The request could not be completed.")

    def http_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        assert isinstance(exc, HTTPException)
        status = exc.status_code
        if status == 413:
            message = "The form is larger than this page accepts."
        elif status == 405:
            message = "This address does not take that kind of request."
        elif status < 500:
            message = "The request was not understood."
        else:
            message = "The request could not be completed."
        return page(request, status, f"Error {status}", message)

    def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.exception("console: unexpected error on %s", request.url.path, exc_info=exc)
        return page(request, 500, "Something went wrong", "The request could not be completed.")

    return {
        ConsoleError: console_error,
        OutpostError: outpost_error,
        HTTPException: http_error,
        ValidationException: http_error,  # the API's own handler would answer JSON
        Exception: internal_error,
    }
