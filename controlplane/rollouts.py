"""Rollout status: for each assignment and each agent it reaches, where that agent stands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlmodel import col, select

from common.control import ModelAssignment
from controlplane.db.database import Database
from controlplane.db.models import Agent
from controlplane.desired_state import DesiredStates
from controlplane.model_assignments import AssignmentView, ModelAssignments


@dataclass(frozen=True)
class RolloutRow:
    assignment_id: int
    agent_id: str
    agent_name: str
    agent_state: str  # connected, disconnected, ...
    alias: str
    model: str  # name@version
    sha256: str
    # pending, downloading, verifying, loading, ready, failed; superseded (a more specific
    # assignment gives the agent another version of this alias); blocked (a model file set
    # directly on the agent holds the alias)
    state: str
    bytes_done: int = 0
    bytes_total: int = 0
    rate_bytes_per_s: float = 0.0
    error: str = ""
    serving_sha256: str = ""


def rollout_status(
    db: Database, desired: DesiredStates, assignments: ModelAssignments
) -> list[RolloutRow]:
    views = assignments.list()
    agent_ids = {agent_id for view in views for agent_id in view.agents}
    with db.session() as session:
        agents = {
            a.id: a for a in session.exec(select(Agent).where(col(Agent.id).in_(agent_ids))).all()
        }
        rows = []
        for view in views:
            for agent_id in view.agents:
                agent = agents.get(agent_id)
                if agent is not None:
                    wanted = desired.current(agent_id, session=session).models
                    rows.append(_row(view, agent, {m.alias: m for m in wanted}))
    return rows


def _row(view: AssignmentView, agent: Agent, wanted: dict[str, ModelAssignment]) -> RolloutRow:
    base: dict[str, Any] = {
        "assignment_id": view.id,
        "agent_id": agent.id,
        "agent_name": agent.name,
        "agent_state": agent.state,
        "alias": view.alias,
        "model": f"{view.model.name}@{view.model.version}",
        "sha256": view.model.sha256,
    }
    current = wanted.get(view.alias)
    if current is not None and not current.sha256:
        reason = f"the agent serves the file {current.path} under alias {view.alias}"
        return RolloutRow(**base, state="blocked", error=reason)
    if current is None or current.sha256 != view.model.sha256:
        return RolloutRow(**base, state="superseded")
    item = next(
        (
            i
            for i in agent.status_items or []
            if i.get("kind") == "model"
            and i.get("name") == view.alias
            and i.get("sha256") == view.model.sha256
        ),
        None,
    )
    if item is None:
        return RolloutRow(**base, state="pending", bytes_total=view.model.size_bytes)
    return RolloutRow(
        **base,
        state=str(item.get("state", "pending")),
        bytes_done=int(item.get("bytes_done", 0)),
        bytes_total=int(item.get("bytes_total", 0)) or view.model.size_bytes,
        rate_bytes_per_s=float(item.get("rate_bytes_per_s", 0.0)),
        error=str(item.get("error", "")),
        serving_sha256=str(item.get("serving_sha256", "")),
    )
