"""The fleet overview (`/`), its live fragment, and the agent detail page."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get
from litestar.params import Parameter
from litestar.response import Response

from controlplane.console.fleet_view import agent_detail, fleet_overview
from controlplane.console.gate import ConsoleGate
from controlplane.console.rendering import Renderer
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings

FRAGMENT_PATH = "/console/fleet-fragment"
MAX_AGENT_ID_CHARS = 64


def fleet_routes(
    services: ControlPlaneServices,
    gate: ConsoleGate,
    renderer: Renderer,
    settings: ConsoleSettings,
) -> list[Any]:
    @get("/", include_in_schema=False)
    async def overview(request: Request[Any, Any, Any]) -> Response[Any]:
        """The fleet at a glance; logged-out visitors are sent to /login."""
        login = await gate.login(request)
        sites = await asyncio.to_thread(fleet_overview, services)
        return renderer.page(
            "fleet.html",
            login=login,
            sites=sites,
            fragment_path=FRAGMENT_PATH,
            refresh_seconds=settings.refresh_seconds,
        )

    @get(FRAGMENT_PATH, include_in_schema=False)
    async def overview_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
        """The overview's table alone, polled by console.js."""
        await gate.login(request)
        sites = await asyncio.to_thread(fleet_overview, services)
        return renderer.page("fleet_table.html", sites=sites)

    @get("/console/agents/{agent_id:str}", include_in_schema=False)
    async def agent_page(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        login = await gate.login(request)
        detail = await asyncio.to_thread(agent_detail, services, agent_id)
        return renderer.page(
            "agent.html", login=login, detail=detail, refresh_seconds=settings.refresh_seconds
        )

    @get("/console/agents/{agent_id:str}/live", include_in_schema=False)
    async def agent_fragment(
        request: Request[Any, Any, Any],
        agent_id: str = Parameter(max_length=MAX_AGENT_ID_CHARS),
    ) -> Response[Any]:
        """The agent page's models, rollout and telemetry, polled by console.js."""
        await gate.login(request)
        detail = await asyncio.to_thread(agent_detail, services, agent_id)
        return renderer.page("agent_live.html", detail=detail)

    return [overview, overview_fragment, agent_page, agent_fragment]
