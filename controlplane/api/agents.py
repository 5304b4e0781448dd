"""Routes under /api/v1/agents: list, show, label, revoke, desired state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from litestar import Request, get, post, put
from litestar.di import NamedDependency
from litestar.params import Parameter

from common.control import ModelAssignment
from common.errors import NotFound
from controlplane.api import bodies
from controlplane.api.auth_guard import Access, access
from controlplane.api.views import agent_view, desired_state_view
from controlplane.auth import Principal
from controlplane.db.models import Agent
from controlplane.fleet import AgentRevoked
from controlplane.services import ControlPlaneServices

log = logging.getLogger("outpost.controlplane.api")

AGENT = "agent:{agent_id}"
MAX_ID = 64


def agent_routes(
    services: ControlPlaneServices, on_revoke: Callable[[str], None] | None = None
) -> list[Any]:
    fleet, desired = services.fleet, services.desired
    agent_id_param = Parameter(max_length=MAX_ID, description="the agent's id (a UUID)")

    @get("/agents", opt=access(Access.READ, "agent.list"))
    async def list_agents(
        site: str | None = Parameter(
            default=None, max_length=bodies.MAX_SITE, description="only agents of this site"
        ),
    ) -> dict[str, Any]:
        """All enrolled agents, revoked ones included."""

        def load() -> list[dict[str, Any]]:
            return [agent_view(a) for a in fleet.list(site=site)]

        return {"agents": await asyncio.to_thread(load)}

    @get("/agents/{agent_id:str}", opt=access(Access.READ, "agent.get", AGENT))
    async def get_agent(agent_id: str = agent_id_param) -> dict[str, Any]:
        return await asyncio.to_thread(lambda: agent_view(fleet.get(agent_id)))

    @put(
        "/agents/{agent_id:str}/labels",
        opt=access(Access.CHANGE, "agent.set_labels", AGENT),
        status_code=200,
    )
    async def set_labels(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        agent_id: str = agent_id_param,
    ) -> dict[str, Any]:
        """Replaces the agent's labels: body {"labels": {"key": "value"}}."""
        labels = bodies.labels_body(await request.body())

        def change() -> dict[str, Any]:
            return agent_view(fleet.set_labels(agent_id, labels, actor=principal.name))

        return await asyncio.to_thread(change)

    @post(
        "/agents/{agent_id:str}/revoke",
        opt=access(Access.ADMIN, "agent.revoke", AGENT),
        status_code=200,
    )
    async def revoke_agent(
        principal: NamedDependency[Principal], agent_id: str = agent_id_param
    ) -> dict[str, Any]:
        """Revokes the agent and its certificates and cuts its control stream."""
        view = await asyncio.to_thread(
            lambda: agent_view(fleet.revoke(agent_id, actor=principal.name))
        )
        if on_revoke is not None:
            try:
                on_revoke(agent_id)
            except Exception:  # the revocation is stored; the mTLS handler refuses it anyway
                log.exception("could not cut the stream of revoked agent %s", agent_id)
        return view

    @get(
        "/agents/{agent_id:str}/desired-state",
        opt=access(Access.READ, "desired_state.get", AGENT),
    )
    async def get_desired_state(agent_id: str = agent_id_param) -> dict[str, Any]:
        def load() -> dict[str, Any]:
            fleet.get(agent_id)  # NotFound for an unknown agent
            return desired_state_view(agent_id, desired.current(agent_id))

        return await asyncio.to_thread(load)

    @put(
        "/agents/{agent_id:str}/desired-state/models",
        opt=access(Access.CHANGE, "desired_state.set_models", AGENT),
        status_code=200,
    )
    async def set_models(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        agent_id: str = agent_id_param,
    ) -> dict[str, Any]:
        """Replaces the agent's models; answers the new desired state and its generation."""
        models = bodies.models_body(await request.body())
        return await asyncio.to_thread(_set_models, services, agent_id, models, principal)

    return [list_agents, get_agent, set_labels, revoke_agent, get_desired_state, set_models]


def _set_models(
    services: ControlPlaneServices,
    agent_id: str,
    models: tuple[ModelAssignment, ...],
    principal: Principal,
) -> dict[str, Any]:
    with services.db.session() as session:
        agent = session.get(Agent, agent_id)
        if agent is None:
            raise NotFound(f"no agent {agent_id}")
        if agent.revoked_at is not None:
            raise AgentRevoked(f"agent {agent_id} is revoked")
        state = services.desired.set_models(session, agent_id, models, actor=principal.name)
    return desired_state_view(agent_id, state)
