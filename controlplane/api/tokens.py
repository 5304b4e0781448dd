"""Routes under /api/v1/tokens: create (the only time a token is shown), list, revoke."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from controlplane.api import bodies
from controlplane.api.auth_guard import Access, access
from controlplane.api.views import token_view
from controlplane.auth import Principal
from controlplane.services import ControlPlaneServices

TOKEN = "token:{token_id}"


def token_routes(services: ControlPlaneServices, default_ttl: timedelta) -> list[Any]:
    tokens = services.tokens

    @post(
        "/tokens",
        opt=access(Access.ADMIN, "token.create", "tokens"),
        status_code=201,
    )
    async def create_token(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Creates a single-use join token: body {"site"?, "labels"?, "ttl_seconds"?}.

        The answer holds the token itself; it is not stored and cannot be shown again.
        """
        wanted = bodies.token_body(await request.body(), default_ttl)

        def create() -> dict[str, Any]:
            token, row = tokens.create(
                site=wanted.site, labels=wanted.labels, ttl=wanted.ttl, created_by=principal.name
            )
            return {"token": token, **token_view(row)}

        return await asyncio.to_thread(create)

    @get("/tokens", opt=access(Access.READ, "token.list"))
    async def list_tokens(
        include_used: bool = Parameter(
            default=False, description="also list tokens that were used already"
        ),
    ) -> dict[str, Any]:
        """Join tokens that are not revoked (never the tokens themselves)."""

        def load() -> list[dict[str, Any]]:
            return [token_view(t) for t in tokens.list(include_used=include_used)]

        return {"tokens": await asyncio.to_thread(load)}

    @delete(
        "/tokens/{token_id:int}",
        opt=access(Access.ADMIN, "token.revoke", TOKEN),
        status_code=204,
    )
    async def revoke_token(
        principal: NamedDependency[Principal], token_id: int = Parameter(ge=1, le=2**63 - 1)
    ) -> None:
        """Deletes an unused join token: it can no longer enroll an agent."""
        await asyncio.to_thread(tokens.revoke, token_id, actor=principal.name)

    return [create_token, list_tokens, revoke_token]
