"""JSON shapes of the REST API: agents, desired states, join tokens, audit events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from common.control import DesiredState, ModelAssignment
from controlplane.db.models import Agent, AuditEvent, JoinToken


def iso(moment: datetime | None) -> str | None:
    """ISO-8601 in UTC with a `Z`, e.g. 2025-01-31T12:00:00Z; naive values are taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def agent_view(agent: Agent) -> dict[str, Any]:
    return {
        "id": agent.id,
        "name": agent.name,
        "site": agent.site,
        "labels": dict(agent.labels or {}),
        "state": agent.state,
        "version": agent.version,
        "hardware": dict(agent.hardware or {}),
        "capabilities": list(agent.capabilities or []),
        "observed_generation": agent.observed_generation,
        "desired_generation": agent.desired_generation,
        "status": [
            {
                "kind": item.get("kind", ""),
                "name": item.get("name", ""),
                "state": item.get("state", ""),
                "error": item.get("error", ""),
            }
            for item in agent.status_items or []
        ],
        "enrolled_at": iso(agent.enrolled_at),
        "last_seen_at": iso(agent.last_seen_at),
        "revoked_at": iso(agent.revoked_at),
    }


def model_view(model: ModelAssignment) -> dict[str, Any]:
    """A model file set on the agent (`path`) or a registry model (`digest`, name, version,
    its LoRA adapters)."""
    view: dict[str, Any] = {
        "alias": model.alias,
        "path": model.path,
        "context_length": model.context_length,
        "gpu_layers": model.gpu_layers,
        "queue_depth": model.queue_depth,
    }
    if model.sha256:
        view |= {
            "digest": f"sha256:{model.sha256}",
            "size_bytes": model.size_bytes,
            "model": f"{model.model_name}@{model.model_version}",
            "threads": model.threads,
            "adapters": [
                {
                    "name": a.name,
                    "digest": f"sha256:{a.sha256}",
                    "size_bytes": a.size_bytes,
                    "adapter": f"{a.registry_name}@{a.registry_version}",
                }
                for a in model.adapters
            ],
        }
    return view


def desired_state_view(agent_id: str, state: DesiredState) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "generation": state.generation,
        "models": [model_view(m) for m in state.models],
        "labels": dict(state.labels),
    }


def token_view(token: JoinToken) -> dict[str, Any]:
    """A join token's record; the token itself is never stored, so never shown here."""
    return {
        "id": token.id,
        "site": token.site,
        "labels": dict(token.labels or {}),
        "created_by": token.created_by,
        "created_at": iso(token.created_at),
        "expires_at": iso(token.expires_at),
        "used_at": iso(token.used_at),
        "used_by_agent_id": token.used_by_agent_id,
    }


def audit_view(event: AuditEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "at": iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "detail": event.detail,
    }
