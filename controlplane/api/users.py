"""Routes under /api/v1/users (admin only): console users, their roles and passwords."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get, post, put
from litestar.di import NamedDependency
from litestar.params import Parameter

from common.errors import InvalidArgument
from common.json_body import parse_json_object
from controlplane.api.auth_guard import Access, access
from controlplane.api.bodies import reject_unknown
from controlplane.api.views import iso
from controlplane.auth import Principal
from controlplane.db.models import ID_CHARS
from controlplane.passwords import generate_password
from controlplane.services import ControlPlaneServices
from controlplane.users import UserAccount

USER = "user:{name}"
MAX_USER_BODY_BYTES = 8 * 1024


def user_view(user: UserAccount) -> dict[str, Any]:
    """A user as the API shows it: whether a password is set, never the password or its hash."""
    return {
        "name": user.name,
        "role": user.role.value,
        "created_at": iso(user.created_at),
        "has_password": user.has_password,
        "disabled_at": iso(user.disabled_at),
    }


def _password(document: dict[str, Any]) -> tuple[str, bool]:
    """The password given, or a generated one (True: answer it, once)."""
    password = document.get("password")
    if password is None:
        return generate_password(), True
    if not isinstance(password, str):
        raise InvalidArgument("'password' must be a string")
    return password, False


def user_routes(services: ControlPlaneServices) -> list[Any]:
    users = services.users
    name_param = Parameter(max_length=ID_CHARS, description="the user's name")

    @post(
        "/users",
        opt=access(Access.ADMIN, "user.create", "users"),
        status_code=201,
        request_max_body_size=MAX_USER_BODY_BYTES,
    )
    async def create_user(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Creates a console user: body {"name", "role", "password"?}. Without a password one
        is generated and answered in `password`, this once."""
        document = parse_json_object(await request.body())
        reject_unknown(document, {"name", "role", "password"})
        for field in ("name", "role"):
            if field not in document:
                raise InvalidArgument(f"'{field}' is required")
        password, generated = _password(document)

        def create() -> UserAccount:
            return users.create(document["name"], document["role"], password, actor=principal.name)

        view = user_view(await asyncio.to_thread(create))
        return {**view, "password": password} if generated else view

    @get("/users", opt=access(Access.ADMIN, "user.list", "users"))
    async def list_users() -> dict[str, Any]:
        """Every user, by name; API-key-only users have no password."""
        return {"users": [user_view(u) for u in await asyncio.to_thread(users.list)]}

    @put(
        "/users/{name:str}/password",
        opt=access(Access.ADMIN, "user.set_password", USER),
        request_max_body_size=MAX_USER_BODY_BYTES,
    )
    async def set_password(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        name: str = name_param,
    ) -> dict[str, Any]:
        """Sets the password: body {"password"?}; without one a generated password is
        answered, this once. The user's console sessions end."""
        body = await request.body()
        document = parse_json_object(body) if body.strip() else {}
        reject_unknown(document, {"password"})
        password, generated = _password(document)
        account = await asyncio.to_thread(
            lambda: users.set_password(name, password, actor=principal.name)
        )
        view = user_view(account)
        return {**view, "password": password} if generated else view

    @post(
        "/users/{name:str}/disable",
        opt=access(Access.ADMIN, "user.disable", USER),
        status_code=200,
    )
    async def disable_user(
        principal: NamedDependency[Principal], name: str = name_param
    ) -> dict[str, Any]:
        """Disables the user: no console login, no API key of theirs works; sessions end."""
        account = await asyncio.to_thread(lambda: users.disable(name, actor=principal.name))
        return user_view(account)

    return [create_user, list_users, set_password, disable_user]
