"""The keys page: API keys (admins) and inference keys, by prefix; a new key is shown once."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get, post
from litestar.response import Response

from common.errors import InvalidArgument, NotFound
from controlplane.api.auth_guard import Access
from controlplane.auth import Role
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer
from controlplane.console.sessions import ConsoleLogin
from controlplane.db.models import ID_CHARS
from controlplane.services import ControlPlaneServices
from controlplane.users import parse_role

KEYS_PATH = "/console/keys"
MAX_FORM_BYTES = 16 * 1024
_STATUS = {InvalidArgument: 400, NotFound: 404}


def _key_id(fields: dict[str, str]) -> int:
    text = field(fields, "key_id", "The key", max_chars=19)
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise BadForm("The key must be given by its number.")
    return int(text)


def _action(fields: dict[str, str]) -> str:
    action = fields.get("action", "")
    if action not in ("create", "revoke"):
        raise BadForm("The action must be create or revoke.")
    return action


def _audited(kind: str, fields: dict[str, str]) -> str:
    """The audit action a denial is recorded as (never text from the form)."""
    action = fields.get("action", "")
    return f"{kind}.{action}" if action in ("create", "revoke") else f"{kind}.change"


def key_routes(services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer) -> list[Any]:
    api_keys, inference_keys = services.api_keys, services.inference_keys

    async def page(
        login: ConsoleLogin,
        *,
        status: int = 200,
        error: str = "",
        created: tuple[str, str] | None = None,  # (what, the key): shown in this answer only
        warnings: tuple[str, ...] = (),
    ) -> Response[str]:
        is_admin = login.principal.role.is_admin()

        def load() -> tuple[list[Any], list[Any], dict[int, str]]:
            users = {u.id: u.name for u in services.users.list()} if is_admin else {}
            return (api_keys.list() if is_admin else [], inference_keys.list(), users)

        listed_api, listed_inference, user_names = await asyncio.to_thread(load)
        return renderer.page(
            "keys.html",
            status=status,
            login=login,
            is_admin=is_admin,
            api_keys=listed_api,
            inference_keys=listed_inference,
            user_names=user_names,
            roles=[r.value for r in Role],
            error=error,
            created=created,
            warnings=warnings,
        )

    @get(KEYS_PATH, include_in_schema=False)
    async def show_keys(request: Request[Any, Any, Any]) -> Response[Any]:
        return await page(await gate.login(request))

    @post(f"{KEYS_PATH}/api", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def change_api_key(request: Request[Any, Any, Any]) -> Response[Any]:
        """Creates (shown once) or revokes an API key; admins only."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        action = _audited("api_key", fields)
        await gate.require(login, Access.ADMIN, action, "api_keys")
        actor = login.principal.name
        try:
            if _action(fields) == "create":
                user = field(fields, "user", "The user", max_chars=ID_CHARS)
                role = parse_role(field(fields, "role", "The role", max_chars=16))
                key, _ = await asyncio.to_thread(lambda: api_keys.create(user, role, actor=actor))
                return await page(login, created=(f"API key for {user}", key))
            key_id = _key_id(fields)
            await asyncio.to_thread(lambda: api_keys.revoke(key_id, actor=actor))
        except (InvalidArgument, NotFound) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await page(login, status=status, error=str(exc))
        return await page(login)

    @post(f"{KEYS_PATH}/inference", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def change_inference_key(request: Request[Any, Any, Any]) -> Response[Any]:
        """Creates (shown once) or revokes a key of the OpenAI endpoints; admins only."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        action = _audited("inference_key", fields)
        await gate.require(login, Access.ADMIN, action, "inference_keys")
        actor = login.principal.name
        try:
            if _action(fields) == "create":
                name = field(fields, "name", "The name", max_chars=ID_CHARS)
                role = field(fields, "role", "The routing role", max_chars=ID_CHARS)
                team = field(fields, "team", "The team", max_chars=ID_CHARS)
                created = await asyncio.to_thread(
                    lambda: inference_keys.create(name, role, team, actor=actor)
                )
                return await page(
                    login, created=(f"inference key {name}", created.key), warnings=created.warnings
                )
            key_id = _key_id(fields)
            await asyncio.to_thread(lambda: inference_keys.revoke(key_id, actor=actor))
        except (InvalidArgument, NotFound) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await page(login, status=status, error=str(exc))
        return await page(login)

    return [show_keys, change_api_key, change_inference_key]
