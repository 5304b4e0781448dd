"""Routes under /api/v1/inference-keys: create (the only time a key is shown), list, revoke."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from common.errors import InvalidArgument
from common.json_body import parse_json_object
from controlplane.api.auth_guard import Access, access
from controlplane.api.bodies import reject_unknown
from controlplane.api.views import iso
from controlplane.auth import Principal
from controlplane.desired_state_checks import check_identifier
from controlplane.inference_keys import InferenceKey
from controlplane.services import ControlPlaneServices

KEY = "inference_key:{key_id}"


@dataclass(frozen=True)
class KeyRequest:
    name: str
    role: str
    team: str


def key_body(body: bytes) -> KeyRequest:
    """`POST /inference-keys`: {"name", "role", "team"}, each an identifier."""
    document = parse_json_object(body)
    reject_unknown(document, {"name", "role", "team"})
    values = {}
    for field in ("name", "role", "team"):
        if field not in document:
            raise InvalidArgument(f"'{field}' is required")
        values[field] = check_identifier(document[field], f"'{field}'")
    return KeyRequest(**values)


def key_view(key: InferenceKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "role": key.role,
        "team": key.team,
        "created_at": iso(key.created_at),
        "created_by": key.created_by,
        "revoked_at": iso(key.revoked_at),
    }


def inference_key_routes(services: ControlPlaneServices) -> list[Any]:
    keys = services.inference_keys

    @post(
        "/inference-keys",
        opt=access(Access.ADMIN, "inference_key.create", "inference_keys"),
        status_code=201,
    )
    async def create_inference_key(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Creates a key for callers of the OpenAI endpoints: body {"name", "role", "team"};
        `role` is the routing policy's role. The answer holds the key itself (shown once) and
        `warnings`, e.g. when the live policy has no such role (yet)."""
        wanted = key_body(await request.body())

        def create() -> dict[str, Any]:
            created = keys.create(wanted.name, wanted.role, wanted.team, actor=principal.name)
            return {
                "key": created.key,
                **key_view(created.record),
                "warnings": list(created.warnings),
            }

        return await asyncio.to_thread(create)

    @get("/inference-keys", opt=access(Access.READ, "inference_key.list"))
    async def list_inference_keys(
        include_revoked: bool = Parameter(default=False, description="also list revoked keys"),
    ) -> dict[str, Any]:
        """Inference keys (never the keys themselves), by id."""

        def load() -> list[dict[str, Any]]:
            return [key_view(k) for k in keys.list(include_revoked=include_revoked)]

        return {"inference_keys": await asyncio.to_thread(load)}

    @delete(
        "/inference-keys/{key_id:int}",
        opt=access(Access.ADMIN, "inference_key.revoke", KEY),
        status_code=204,
    )
    async def revoke_inference_key(
        principal: NamedDependency[Principal], key_id: int = Parameter(ge=1, le=2**63 - 1)
    ) -> None:
        """Revokes the key: every agent stops accepting it with its next desired state."""
        await asyncio.to_thread(keys.revoke, key_id, actor=principal.name)

    return [create_inference_key, list_inference_keys, revoke_inference_key]
