"""API key authentication (Bearer or X-API-Key) and role checks; denials are audited."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, cast

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from controlplane.api.errors import PermissionDenied, Unauthenticated
from controlplane.auth import Principal, Role
from controlplane.services import ControlPlaneServices

MAX_KEY_LENGTH = 512
_PRINCIPAL = "outpost_principal"


class Access(StrEnum):
    """What a route needs: any role reads; operators and admins change; some need admin."""

    READ = "read"
    CHANGE = "change"
    ADMIN = "admin"


def access(level: Access, action: str, target: str = "") -> dict[str, Any]:
    """A route handler's `opt`: the access it needs and how a denial is audited.

    `target` is a template filled in from the path parameters, e.g. "agent:{agent_id}".
    """
    return {"access": level, "action": action, "target": target}


def allowed(role: Role, level: Access) -> bool:
    if level is Access.READ:
        return True
    if level is Access.CHANGE:
        return role.can_change()
    return role.is_admin()


def api_key_from(headers: Headers) -> str:
    """The presented key; raises Unauthenticated when there is none or it is malformed."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise Unauthenticated("unsupported Authorization scheme: use 'Bearer <API key>'")
    else:
        key = headers.get("x-api-key", "")
    key = key.strip()
    if not key:
        raise Unauthenticated(
            "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    if len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise Unauthenticated("invalid API key")
    return key


def _target(template: str, path_params: Mapping[str, Any]) -> str:
    try:
        return template.format_map(dict(path_params))
    except (KeyError, ValueError, IndexError):
        return template


def auth_guard(services: ControlPlaneServices) -> Guard:
    """A Litestar guard: authenticates the caller and checks the route's `opt["access"]`.

    A closure rather than an object: Litestar deep-copies routers, guards included.
    """
    api_keys, audit = services.api_keys, services.audit

    async def guard(
        connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
    ) -> None:
        key = api_key_from(connection.headers)
        principal = await asyncio.to_thread(api_keys.authenticate, key)
        if principal is None:
            raise Unauthenticated("unknown or revoked API key")
        # A route that forgot to say what it needs is admin-only: fail closed.
        level = Access(handler.opt.get("access", Access.ADMIN))
        if not allowed(principal.role, level):
            action = str(handler.opt.get("action") or handler.handler_name)
            target = _target(str(handler.opt.get("target", "")), connection.path_params)
            await asyncio.to_thread(
                audit.record_now,
                actor=principal.name,
                action=action,
                target=target,
                outcome="denied",
                detail={"role": principal.role.value, "needs": level.value},
            )
            raise PermissionDenied(
                f"role '{principal.role.value}' is not allowed to {action}"
                + (" (admin only)" if level is Access.ADMIN else " (operator or admin only)")
            )
        connection.scope.setdefault("state", {})[_PRINCIPAL] = principal

    return guard


def current_principal(request: Request[Any, Any, Any]) -> Principal:
    """Dependency for route handlers: the principal the guard authenticated."""
    principal = request.scope.get("state", {}).get(_PRINCIPAL)
    if principal is None:  # a route outside the guard asked for it: a programming error
        raise RuntimeError("no authenticated principal on this request")
    return cast(Principal, principal)
