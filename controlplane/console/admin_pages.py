"""Admin pages: console users (create, new password, disable) and the audit log."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from litestar import Request, get, post
from litestar.response import Response

from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.api.auth_guard import Access
from controlplane.auth import Role
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer
from controlplane.console.sessions import ConsoleLogin
from controlplane.db.models import ID_CHARS
from controlplane.passwords import generate_password
from controlplane.services import ControlPlaneServices

USERS_PATH = "/console/users"
AUDIT_PATH = "/console/audit"
AUDIT_EVENTS = 200
MAX_FORM_BYTES = 16 * 1024
_STATUS = {InvalidArgument: 400, NotFound: 404, Conflict: 409}
AUDITED = {"create": "user.create", "password": "user.set_password", "disable": "user.disable"}


def admin_routes(
    services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer
) -> list[Any]:
    users = services.users

    async def users_page(
        login: ConsoleLogin,
        *,
        status: int = 200,
        error: str = "",
        notice: str = "",
        password: str = "",
        form: dict[str, str] | None = None,
    ) -> Response[str]:
        accounts = await asyncio.to_thread(users.list)
        return renderer.page(
            "users.html",
            status=status,
            login=login,
            accounts=accounts,
            roles=[r.value for r in Role],
            error=error,
            notice=notice,
            password=password,  # a generated password, shown in this one answer only
            form=form or {"name": "", "role": Role.VIEWER.value},
        )

    async def admin(request: Request[Any, Any, Any], action: str) -> ConsoleLogin:
        login = await gate.login(request)
        await gate.require(login, Access.ADMIN, action, "users")
        return login

    @get(USERS_PATH, include_in_schema=False)
    async def show_users(request: Request[Any, Any, Any]) -> Response[Any]:
        return await users_page(await admin(request, "user.list"))

    @post(USERS_PATH, include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def change_user(request: Request[Any, Any, Any]) -> Response[Any]:
        """`action` create (name, role), password (name) or disable (name); admins only.
        A new password is generated and shown in this answer, once."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        action = fields.get("action", "")
        await gate.require(login, Access.ADMIN, AUDITED.get(action, "user.change"), "users")
        if action not in AUDITED:
            raise BadForm("The action must be create, password or disable.")
        name = field(fields, "name", "The user name", max_chars=ID_CHARS)
        actor = login.principal.name
        password = generate_password() if action != "disable" else ""
        form = {"name": name, "role": fields.get("role", "")[:16]}
        try:
            if action == "create":
                role = field(fields, "role", "The role", max_chars=16)
                await asyncio.to_thread(lambda: users.create(name, role, password, actor=actor))
                notice = f"User {name} created. Their password, shown only this once:"
            elif action == "password":
                await asyncio.to_thread(lambda: users.set_password(name, password, actor=actor))
                notice = f"New password for {name}, shown only this once:"
            else:
                await asyncio.to_thread(lambda: users.disable(name, actor=actor))
                notice = f"User {name} is disabled."
        except (InvalidArgument, NotFound, Conflict) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await users_page(login, status=status, error=str(exc), form=form)
        return await users_page(login, notice=notice, password=password)

    @get(AUDIT_PATH, include_in_schema=False)
    async def show_audit(request: Request[Any, Any, Any]) -> Response[Any]:
        """The newest audit events (admins, as in the REST API)."""
        login = await gate.login(request)
        await gate.require(login, Access.ADMIN, "audit.list", "audit")
        events = await asyncio.to_thread(services.audit.list, AUDIT_EVENTS)
        rows = [
            (e.at, e.actor, e.action, e.target, e.outcome, json.dumps(e.detail, sort_keys=True))
            for e in events
        ]
        return renderer.page("audit.html", login=login, rows=rows, limit=AUDIT_EVENTS)

    return [show_users, change_user, show_audit]
