"""Logging in: `GET/POST /login`, `POST /logout`, and throttling of failed logins."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from litestar import Request, get, post
from litestar.response import Redirect, Response

from controlplane.audit import AuditLog
from controlplane.console.errors import TooManyAttempts
from controlplane.console.gate import (
    CSRF_FIELD,
    SESSION_COOKIE,
    ConsoleGate,
    check_token,
    field,
    read_form,
)
from controlplane.console.rendering import Renderer, redirect
from controlplane.db.models import ID_CHARS
from controlplane.passwords import MAX_PASSWORD_CHARS
from controlplane.users import Users

LOGIN_COOKIE = "outpost_login"  # double-submit token of the login form (no session yet)
LOGIN_PATH = "/login"
LOGIN_FORM_SECONDS = 3600
MAX_LOGIN_BODY_BYTES = 16 * 1024
MAX_TRACKED_KEYS = 100_000  # bounded memory: the oldest keys are forgotten first


class LoginLimiter:
    """After `failures` failed logins within `window_s` for a user name or for an address,
    further attempts for it are refused until the oldest failure leaves the window.

    In memory, per process: a restart forgets the counts (an attacker gains one window)."""

    def __init__(
        self, failures: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._failures = failures
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[str, deque[float]] = {}

    def blocked(self, name: str, address: str) -> bool:
        now = self._clock()
        with self._lock:
            return any(
                len(self._recent(key, now)) >= self._failures for key in _keys(name, address)
            )

    def failed(self, name: str, address: str) -> None:
        now = self._clock()
        with self._lock:
            for key in _keys(name, address):
                self._recent(key, now).append(now)
                self._seen[key] = self._seen.pop(key)  # most recent last
            while len(self._seen) > MAX_TRACKED_KEYS:
                del self._seen[next(iter(self._seen))]

    def succeeded(self, name: str) -> None:
        """A right password clears the name's count (not the address's)."""
        with self._lock:
            self._seen.pop(f"user:{name}", None)

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self._window_s:
            times.popleft()
        return times


def _keys(name: str, address: str) -> tuple[str, str]:
    return f"user:{name}", f"address:{address}"


def login_routes(
    users: Users, gate: ConsoleGate, limiter: LoginLimiter, audit: AuditLog, renderer: Renderer
) -> list[Any]:
    def login_page(status: int = 200, error: str = "", name: str = "") -> Response[str]:
        token = secrets.token_urlsafe(32)
        cookie = gate.cookie(LOGIN_COOKIE, token, path=LOGIN_PATH, max_age=LOGIN_FORM_SECONDS)
        return renderer.page(
            "login.html",
            status=status,
            cookies=[cookie],
            login=None,
            csrf_token=token,
            error=error,
            name=name,
        )

    @get(LOGIN_PATH, include_in_schema=False)
    async def show_login(request: Request[Any, Any, Any]) -> Response[Any]:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        if session_id:
            existing = await asyncio.to_thread(gate.sessions.resume, session_id)
            if existing is not None:
                return redirect("/")
        return login_page()

    @post(LOGIN_PATH, include_in_schema=False, request_max_body_size=MAX_LOGIN_BODY_BYTES)
    async def log_in(request: Request[Any, Any, Any]) -> Response[Any]:
        fields = await read_form(request)
        check_token(fields.get(CSRF_FIELD, ""), request.cookies.get(LOGIN_COOKIE, ""))
        name = field(fields, "name", "The user name", max_chars=ID_CHARS)
        password = field(fields, "password", "The password", max_chars=MAX_PASSWORD_CHARS)
        address = request.client.host if request.client is not None else "unknown"
        if limiter.blocked(name, address):
            raise TooManyAttempts(
                "Too many failed logins for this user or from this address: wait a few "
                "minutes, then try again."
            )
        found = await asyncio.to_thread(users.authenticate, name, password)
        if found is None:
            limiter.failed(name, address)
            await asyncio.to_thread(
                audit.record_now,
                actor=name,
                action="console.login",
                target=f"user:{name}",
                outcome="denied",
                detail={"address": address},
            )
            return login_page(401, "Wrong user name or password.", name)
        user_id, principal = found
        limiter.succeeded(name)
        session_id = await asyncio.to_thread(gate.sessions.start, user_id)
        await asyncio.to_thread(
            audit.record_now,
            actor=principal.name,
            action="console.login",
            target=f"user:{principal.name}",
            detail={"address": address},
        )
        return redirect(
            "/",
            cookies=[
                gate.session_cookie(session_id),
                gate.expired_cookie(LOGIN_COOKIE, path=LOGIN_PATH),
            ],
        )

    @post("/logout", include_in_schema=False, request_max_body_size=MAX_LOGIN_BODY_BYTES)
    async def log_out(request: Request[Any, Any, Any]) -> Redirect:
        login = await gate.login(request)
        await gate.form(request, login)
        await asyncio.to_thread(gate.sessions.end, login.session_id)
        return redirect(LOGIN_PATH, cookies=[gate.expired_cookie(SESSION_COOKIE)])

    return [show_login, log_in, log_out]
