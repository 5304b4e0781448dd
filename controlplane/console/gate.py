"""`ConsoleGate`: who is logged in (session cookie), CSRF on every form, and role checks."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Mapping
from typing import Any

from litestar import Request
from litestar.datastructures import Cookie

from controlplane.api.auth_guard import Access, allowed
from controlplane.audit import AuditLog
from controlplane.console.errors import (
    FRAGMENT_HEADER,
    BadForm,
    Forbidden,
    LoginRequired,
    StaleForm,
)
from controlplane.console.sessions import ConsoleLogin, ConsoleSessions
from controlplane.settings import ConsoleSettings

SESSION_COOKIE = "outpost_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
FORM_TYPE = "application/x-www-form-urlencoded"
MAX_FIELDS = 20


class ConsoleGate:
    def __init__(
        self, sessions: ConsoleSessions, audit: AuditLog, settings: ConsoleSettings
    ) -> None:
        self.sessions = sessions
        self._audit = audit
        self._settings = settings

    def cookie(
        self, name: str, value: str, *, path: str = "/", max_age: int | None = None
    ) -> Cookie:
        """HttpOnly, SameSite=Strict and (unless configured off) Secure."""
        return Cookie(
            key=name,
            value=value,
            path=path,
            max_age=max_age,
            httponly=True,
            samesite="strict",
            secure=self._settings.secure_cookies,
        )

    def session_cookie(self, session_id: str) -> Cookie:
        lifetime = int(self._settings.session_lifetime.total_seconds())
        return self.cookie(SESSION_COOKIE, session_id, max_age=lifetime)

    def expired_cookie(self, name: str, path: str = "/") -> Cookie:
        return self.cookie(name, "", path=path, max_age=0)

    async def login(self, request: Request[Any, Any, Any]) -> ConsoleLogin:
        """The logged-in user, or LoginRequired."""
        session_id = request.cookies.get(SESSION_COOKIE, "")
        touch = FRAGMENT_HEADER not in request.headers  # a background refresh is no use
        login = (
            await asyncio.to_thread(lambda: self.sessions.resume(session_id, touch=touch))
            if session_id
            else None
        )
        if login is None:
            raise LoginRequired("Your session has ended: please log in.")
        return login

    async def form(self, request: Request[Any, Any, Any], login: ConsoleLogin) -> dict[str, str]:
        """The posted form, after checking its CSRF token against the session's."""
        fields = await read_form(request)
        check_token(fields.get(CSRF_FIELD, ""), login.csrf_token)
        return fields

    def check_header_token(self, request: Request[Any, Any, Any], login: ConsoleLogin) -> None:
        """For a request whose body is not a form (a file upload from console.js): the CSRF
        token travels in the X-CSRF-Token header."""
        check_token(request.headers.get(CSRF_HEADER, ""), login.csrf_token)

    async def require(
        self, login: ConsoleLogin, level: Access, action: str, target: str = ""
    ) -> None:
        """Forbidden (audited, nothing changed) unless the user's role allows `level`."""
        principal = login.principal
        if allowed(principal.role, level):
            return
        await asyncio.to_thread(
            self._audit.record_now,
            actor=principal.name,
            action=action,
            target=target,
            outcome="denied",
            detail={"role": principal.role.value, "needs": level.value, "via": "console"},
        )
        who = "administrators" if level is Access.ADMIN else "operators and administrators"
        raise Forbidden(f"Only {who} may do this; you are logged in as a {principal.role.value}.")


def check_token(given: str, expected: str) -> None:
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise StaleForm(
            "The form's security token is missing or out of date (for example after logging "
            "in again). Nothing was changed: reload the page and try again."
        )


async def read_form(request: Request[Any, Any, Any]) -> dict[str, str]:
    """A URL-encoded form with each field at most once, else BadForm."""
    if request.content_type[0] != FORM_TYPE:
        raise BadForm("The request is not a form.")
    data = await request.form()
    items = list(data.multi_items())
    if len(items) > MAX_FIELDS:
        raise BadForm("The form has too many fields.")
    fields: dict[str, str] = {}
    for name, value in items:
        if not isinstance(value, str):
            raise BadForm("The form may not hold files.")
        if name in fields:
            raise BadForm(f"The field {name[:40]!r} is given twice.")
        fields[name] = value
    return fields


def field(
    fields: Mapping[str, str],
    name: str,
    label: str,
    *,
    max_chars: int,
    required: bool = True,
    multiline: bool = False,
) -> str:
    """One text field: present (when required), at most `max_chars`, no control characters."""
    value = fields.get(name)
    if value is None or (required and not value.strip()):
        if required:
            raise BadForm(f"{label} is required.")
        return ""
    if len(value) > max_chars:
        raise BadForm(f"{label} is longer than {max_chars} characters.")
    text = value.replace("\r\n", "\n") if multiline else value
    allowed_controls = "\n\t" if multiline else ""
    if any(not c.isprintable() and c not in allowed_controls for c in text):
        raise BadForm(f"{label} holds control characters.")
    return text
