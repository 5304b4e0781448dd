"""Route GET /api/v1/audit: the audit log, newest first, for admins."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import get
from litestar.params import Parameter

from controlplane.api.auth_guard import Access, access
from controlplane.api.views import audit_view
from controlplane.services import ControlPlaneServices

MAX_LIMIT = 1000


def audit_routes(services: ControlPlaneServices) -> list[Any]:
    audit = services.audit

    @get("/audit", opt=access(Access.ADMIN, "audit.list", "audit"))
    async def list_audit(
        limit: int = Parameter(default=100, ge=1, le=MAX_LIMIT, description="events per page"),
        offset: int = Parameter(default=0, ge=0, le=2**31, description="events to skip"),
    ) -> dict[str, Any]:
        def load() -> list[dict[str, Any]]:
            return [audit_view(e) for e in audit.list(limit=limit, offset=offset)]

        return {"events": await asyncio.to_thread(load), "limit": limit, "offset": offset}

    return [list_audit]
