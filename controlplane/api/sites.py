"""Routes under /api/v1/sites: desired state for every agent of a site at once."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, put
from litestar.di import NamedDependency
from litestar.params import Parameter

from controlplane.api import bodies
from controlplane.api.auth_guard import Access, access
from controlplane.auth import Principal
from controlplane.desired_state_checks import check_identifier
from controlplane.services import ControlPlaneServices


def site_routes(services: ControlPlaneServices) -> list[Any]:
    @put(
        "/sites/{site:str}/desired-state/models",
        opt=access(Access.CHANGE, "desired_state.set_models_for_site", "site:{site}"),
        status_code=200,
    )
    async def set_site_models(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        site: str = Parameter(max_length=bodies.MAX_SITE, description="the site's name"),
    ) -> dict[str, Any]:
        """Gives every live agent of the site these models (each keeps its labels); body
        {"models": [...]} as for one agent. Answers how many agents changed."""
        check_identifier(site, "site")
        models = bodies.models_body(await request.body())

        def change() -> dict[str, Any]:
            with services.db.session() as session:
                states = services.desired.set_models_for_site(
                    session, site, models, actor=principal.name
                )
            return {"site": site, "updated": len(states)}

        return await asyncio.to_thread(change)

    return [set_site_models]
