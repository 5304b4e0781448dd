"""Which agents take part in a federated job, and why the others are skipped."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from common.errors import InvalidArgument, NotFound
from controlplane.db.models import Agent
from controlplane.desired_state import DesiredStates
from controlplane.federated.job_spec import MAX_PARTICIPANTS, FederatedJobSpec
from controlplane.federated.job_views import JobModel, Participant, SkippedAgent, clip

CAPABILITY = "federated-training"
NO_CAPABILITY = "no-federated-training:"  # followed by the agent's reason
MAX_SKIP_REASON_CHARS = 300


@dataclass(frozen=True)
class Plan:
    participants: tuple[Participant, ...]  # in the order the spec named or, else, by agent id
    skipped: tuple[SkippedAgent, ...]
    min_participants: int


def skip_reason(agent: Agent, model: JobModel, desired_sha256s: Sequence[str]) -> str | None:
    """Why `agent` cannot take part in training `model`; None when it can."""
    if agent.revoked_at is not None:
        return "the agent is revoked"
    capabilities = list(agent.capabilities or [])
    if CAPABILITY not in capabilities:
        reported = next((c for c in capabilities if c.startswith(NO_CAPABILITY)), None)
        if reported is None:
            return f"did not report the {CAPABILITY} capability"
        why = reported[len(NO_CAPABILITY) :].strip() or "no reason given"
        return clip(f"cannot train: {why}", MAX_SKIP_REASON_CHARS)
    if model.sha256 not in desired_sha256s:
        return (
            f"its desired state does not include the base model {model.name}@{model.version} "
            f"(sha256:{model.sha256[:12]}…)"
        )
    return None


def candidates(session: Session, spec: FederatedJobSpec) -> list[Agent]:
    """The agents the spec names: by id (NotFound for an unknown one), every live agent of
    the site, or every live agent whose labels match the selector; at most MAX_PARTICIPANTS."""
    if spec.agents:
        found = {a.id: a for a in session.exec(select(Agent).where(col(Agent.id).in_(spec.agents)))}
        missing = [a for a in spec.agents if a not in found]
        if missing:
            raise NotFound(f"no agent {', '.join(missing[:5])}")
        return [found[a] for a in spec.agents]
    live = select(Agent).where(col(Agent.revoked_at).is_(None)).order_by(col(Agent.id))
    if spec.site:
        agents = list(session.exec(live.where(Agent.site == spec.site)).all())
        where = f"site {spec.site}"
    else:
        agents = [
            a
            for a in session.exec(live).all()
            if all((a.labels or {}).get(k) == v for k, v in spec.labels.items())
        ]
        where = "labels " + ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))
    if not agents:
        raise InvalidArgument(f"no enrolled agent matches {where}")
    if len(agents) > MAX_PARTICIPANTS:
        raise InvalidArgument(
            f"{len(agents)} agents match {where}; a job takes at most {MAX_PARTICIPANTS}: "
            "name the agents or narrow the selector"
        )
    return agents


def plan(session: Session, spec: FederatedJobSpec, model: JobModel, desired: DesiredStates) -> Plan:
    """Participants and skipped agents; InvalidArgument (naming every skipped agent and its
    reason) when fewer than the job's minimum remain."""
    participants: list[Participant] = []
    skipped: list[SkippedAgent] = []
    for agent in candidates(session, spec):
        state = desired.current(agent.id, session=session)
        reason = skip_reason(agent, model, [m.sha256 for m in state.models if m.sha256])
        if reason is None:
            participants.append(
                Participant(agent.id, agent.name, agent.site, spec.dataset_for(agent.site))
            )
        else:
            skipped.append(SkippedAgent(agent.id, agent.name, agent.site, reason))
    needed = spec.min_participants or max(len(participants), 1)
    if len(participants) < needed:
        why = "; ".join(f"{s.name} ({s.agent_id}): {s.reason}" for s in skipped[:16])
        raise InvalidArgument(
            f"the job needs at least {needed} participant(s) but only {len(participants)} "
            f"can take part" + (f"; skipped: {why}" if why else "")
        )
    return Plan(tuple(participants), tuple(skipped), needed)
