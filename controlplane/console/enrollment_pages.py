"""Enrollment pages: join tokens (created with the install command, shown once), revocations."""

from __future__ import annotations

import asyncio
import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.response import Response

from common.errors import InvalidArgument
from controlplane.api.auth_guard import Access
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer, redirect
from controlplane.console.sessions import ConsoleLogin
from controlplane.services import ControlPlaneServices

log = logging.getLogger("outpost.controlplane.console")

ENROLLMENT_PATH = "/console/enrollment"
MAX_FORM_BYTES = 16 * 1024
MAX_TTL_HOURS = 720  # 30 days, the tokens' own limit
DEFAULT_TTL_HOURS = 24
MAX_AGENT_ID_CHARS = 64


@dataclass(frozen=True)
class EnrollmentHint:
    """What an agent's install command needs: where to enroll and the CA to pin."""

    address: str  # HOST:PORT of the enrollment service
    ca_fingerprint: str
    insecure: bool = False  # plain-text demo: the agent needs --insecure-control


def install_command(hint: EnrollmentHint | None, token: str) -> str:
    address = hint.address if hint is not None else "CONTROL_PLANE_HOST:8701"
    fingerprint = hint.ca_fingerprint if hint is not None else "CA_FINGERPRINT"
    words = [
        "outpost-agent",
        "run",
        "--control-plane",
        address,
        "--join-token",
        token,
        "--ca-fingerprint",
        fingerprint,
        "--state-dir",
        "/var/lib/outpost-agent",
    ]
    if hint is not None and hint.insecure:
        words.append("--insecure-control")
    return shlex.join(words)


def parse_labels(text: str) -> dict[str, str]:
    """`key=value,key=value` (empty: none); the values are checked by the token service."""
    labels: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadForm("Labels are key=value pairs separated by commas.")
        if key in labels:
            raise BadForm(f"The label {key[:63]!r} is given twice.")
        labels[key] = value
    return labels


def _hours(text: str) -> int:
    if not text:
        return DEFAULT_TTL_HOURS
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_TTL_HOURS:
        raise BadForm(f"The lifetime must be a number of hours from 1 to {MAX_TTL_HOURS}.")
    return int(text)


def enrollment_routes(
    services: ControlPlaneServices,
    gate: ConsoleGate,
    renderer: Renderer,
    hint: EnrollmentHint | None,
    on_revoke: Callable[[str], None] | None,
) -> list[Any]:
    tokens, fleet = services.tokens, services.fleet

    async def page(
        login: ConsoleLogin,
        *,
        status: int = 200,
        error: str = "",
        created: tuple[str, str] | None = None,  # (token, install command): shown once
        form: dict[str, str] | None = None,
    ) -> Response[str]:
        unused = await asyncio.to_thread(tokens.list)
        return renderer.page(
            "enrollment.html",
            status=status,
            login=login,
            tokens=unused,
            can_create=login.principal.role.is_admin(),
            error=error,
            created=created,
            form=form or {"site": "", "labels": "", "hours": ""},
        )

    @get(ENROLLMENT_PATH, include_in_schema=False)
    async def show_enrollment(request: Request[Any, Any, Any]) -> Response[Any]:
        return await page(await gate.login(request))

    @post(
        f"{ENROLLMENT_PATH}/tokens", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES
    )
    async def create_token(request: Request[Any, Any, Any]) -> Response[Any]:
        """A single-use join token and the agent's install command, shown in this answer only."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        await gate.require(login, Access.ADMIN, "token.create", "tokens")
        form = {
            "site": field(fields, "site", "The site", max_chars=63, required=False),
            "labels": field(fields, "labels", "The labels", max_chars=4096, required=False),
            "hours": field(fields, "hours", "The lifetime", max_chars=4, required=False),
        }
        labels, ttl = parse_labels(form["labels"]), timedelta(hours=_hours(form["hours"]))
        try:
            token, _ = await asyncio.to_thread(
                lambda: tokens.create(
                    site=form["site"], labels=labels, ttl=ttl, created_by=login.principal.name
                )
            )
        except InvalidArgument as exc:
            return await page(login, status=400, error=str(exc), form=form)
        return await page(login, created=(token, install_command(hint, token)))

    @post(
        f"{ENROLLMENT_PATH}/tokens/revoke",
        include_in_schema=False,
        request_max_body_size=MAX_FORM_BYTES,
    )
    async def revoke_token(request: Request[Any, Any, Any]) -> Response[Any]:
        login = await gate.login(request)
        fields = await gate.form(request, login)
        await gate.require(login, Access.ADMIN, "token.revoke", "tokens")
        text = field(fields, "token_id", "The token", max_chars=19)
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise BadForm("The token must be given by its number.")
        await asyncio.to_thread(lambda: tokens.revoke(int(text), actor=login.principal.name))
        return redirect(ENROLLMENT_PATH)

    @post(
        "/console/agents/{agent_id:str}/revoke",
        include_in_schema=False,
        request_max_body_size=MAX_FORM_BYTES,
    )
    async def revoke_agent(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        """Revokes the agent and its certificates and cuts its control stream (admins)."""
        login = await gate.login(request)
        await gate.form(request, login)
        await gate.require(login, Access.ADMIN, "agent.revoke", f"agent:{agent_id}")
        await asyncio.to_thread(lambda: fleet.revoke(agent_id, actor=login.principal.name))
        if on_revoke is not None:
            try:
                on_revoke(agent_id)
            except Exception:  # the revocation is stored; the mTLS handler refuses it anyway
                log.exception("could not cut the stream of revoked agent %s", agent_id)
        return redirect(f"/console/agents/{agent_id}")

    return [show_enrollment, create_token, revoke_token, revoke_agent]
