"""`DesiredStates`: each agent's versioned desired state, and listeners told after commits."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

from sqlalchemy import and_, event, insert, update
from sqlmodel import Session, col, select

from common.control import (
    MAX_FEDERATED_TASKS,
    DesiredState,
    FederatedTask,
    ModelAssignment,
    PolicyDocument,
)
from common.errors import InvalidArgument, NotFound
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import Agent, DesiredStateRecord, RoutingPolicyRecord, utcnow
from controlplane.desired_state_checks import check_assignments, check_labels
from controlplane.desired_state_spec import (
    federated_tasks_of,
    live_policy,
    policy_document,
    spec_of,
    state_of,
)
from controlplane.inference_keys import inference_keys_revision, live_inference_keys

log = logging.getLogger(__name__)

_PENDING_KEY = "outpost.desired_state.changed"
_SPEC_KEYS = {
    "models": "models",
    "labels": "labels",
    "policy": "policy_version",
    "federated_tasks": "federated_tasks",
}


# Called once per committed transaction with the new state of every agent it changed.
Listener = Callable[[Mapping[str, DesiredState]], None]
# The registry models each of some agents should serve now, read in the caller's session
# (agents without any may be left out).
RegistryResolver = Callable[[Session, Sequence[str]], Mapping[str, Sequence[ModelAssignment]]]


class DesiredStates:
    """Every change writes a new generation (previous + 1); the highest one is current.

    Listeners get the new state of each changed agent after the transaction commits, in the
    thread that committed, and never for a rolled-back change. A listener must be quick and
    must not open a session of its own in that thread while it is called (hand off instead).
    """

    def __init__(
        self,
        db: Database,
        audit: AuditLog | None = None,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._audit = audit if audit is not None else AuditLog(db, clock=clock)
        self._clock = clock
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._resolver: RegistryResolver | None = None
        self._policies: dict[int, PolicyDocument] = {}  # versions never change once applied

    def set_registry_resolver(self, resolver: RegistryResolver) -> None:
        """Registry models follow an agent's labels: label changes re-resolve them."""
        self._resolver = resolver

    def refresh_registry_models(
        self, session: Session, agent_id: str, *, actor: str
    ) -> DesiredState | None:
        """Writes a new generation when the agent's registry models changed (its path models
        are kept); None when nothing changed. Registry models never displace a path model."""
        if self._resolver is None:
            return None
        current = self._current(session, agent_id)
        models = self._with_registry(session, agent_id, current.models)
        if models == current.models:
            return None
        return self.set_models(session, agent_id, models, actor=actor)

    def _with_registry(
        self, session: Session, agent_id: str, models: Sequence[ModelAssignment]
    ) -> tuple[ModelAssignment, ...]:
        local = [m for m in models if not m.sha256]
        if self._resolver is None:
            return tuple(models)
        taken = {m.alias for m in local}
        found = self._resolver(session, [agent_id]).get(agent_id, ())
        resolved = [m for m in found if m.alias not in taken]
        return tuple(local + resolved)

    def add_listener(self, callback: Listener) -> None:
        with self._lock:
            self._listeners.append(callback)

    def current(self, agent_id: str, *, session: Session | None = None) -> DesiredState:
        """The newest generation; generation 0 with nothing in it when there is none."""
        if session is not None:
            return self._current(session, agent_id)
        with self._db.session() as own:
            return self._current(own, agent_id)

    def set_models(
        self, session: Session, agent_id: str, models: Sequence[ModelAssignment], *, actor: str
    ) -> DesiredState:
        check_actor(actor)
        checked = check_assignments(models)
        return self._change(session, agent_id, actor, "models", models=checked)

    def set_labels(
        self, session: Session, agent_id: str, labels: Mapping[str, str], *, actor: str
    ) -> DesiredState:
        check_actor(actor)
        checked = check_labels(labels)
        return self._change(session, agent_id, actor, "labels", labels=checked)

    def set_federated_tasks(
        self, session: Session, agent_id: str, tasks: Sequence[FederatedTask], *, actor: str
    ) -> DesiredState:
        """The federated fine-tuning jobs the agent takes part in now (a SuperNode each)."""
        check_actor(actor)
        if len(tasks) > MAX_FEDERATED_TASKS:
            raise InvalidArgument(f"an agent takes part in at most {MAX_FEDERATED_TASKS} jobs")
        return self._change(
            session, agent_id, actor, "federated_tasks", federated_tasks=tuple(tasks)
        )

    def refresh_policy(self, session: Session, agent_id: str, *, actor: str) -> DesiredState | None:
        """Writes a new generation when the agent's state lacks the live policy or the live
        inference keys (an agent that enrolled after they changed); None when it has both."""
        check_actor(actor)
        live = live_policy(session)
        record = self._latest(session, agent_id)
        spec = record.spec if record is not None else {}
        has_policy = live is None or spec.get("policy_version", 0) == live.version
        has_keys = spec.get("inference_keys_revision", 0) == inference_keys_revision(session)
        if has_policy and has_keys:
            return None
        return self._change(session, agent_id, actor, "policy")

    def set_inference_keys_for_all(
        self, session: Session, *, actor: str
    ) -> dict[str, DesiredState]:
        """Gives every live agent the live inference keys (as changed in `session`, not yet
        committed): one new generation each, the rest kept. Returns the new states by agent id."""
        check_actor(actor)
        live = col(Agent.revoked_at).is_(None)
        states = self._write_for_agents(session, live, None, live_policy(session), actor)
        self._audit.record(
            session,
            actor=actor,
            action="desired_state.set_inference_keys",
            target="agents:all",
            detail={"agents": len(states), "revision": inference_keys_revision(session)},
        )
        return states

    def set_policy_for_all(
        self, session: Session, policy: PolicyDocument, *, actor: str
    ) -> dict[str, DesiredState]:
        """Gives every live agent the policy just applied (in `session`, not yet committed):
        one new generation each, models and labels kept. Returns the new states by agent id."""
        check_actor(actor)
        live = col(Agent.revoked_at).is_(None)
        states = self._write_for_agents(session, live, None, policy, actor)
        self._audit.record(
            session,
            actor=actor,
            action="desired_state.set_policy",
            target="agents:all",
            detail={"agents": len(states), "policy_version": policy.version},
        )
        return states

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _latest(session: Session, agent_id: str) -> DesiredStateRecord | None:
        return session.exec(
            select(DesiredStateRecord)
            .where(DesiredStateRecord.agent_id == agent_id)
            .order_by(col(DesiredStateRecord.generation).desc())
            .limit(1)
        ).first()

    def _current(self, session: Session, agent_id: str) -> DesiredState:
        record = self._latest(session, agent_id)
        if record is None:
            return DesiredState(generation=0)
        # Keys are never copied per agent: the newest generation carries the live set.
        keys = live_inference_keys(session)
        return state_of(record.generation, record.spec, self._policy(session, record.spec), keys)

    def _policy(self, session: Session, spec: Mapping[str, Any]) -> PolicyDocument | None:
        version = spec.get("policy_version", 0)
        if not isinstance(version, int) or version <= 0:
            return None
        cached = self._policies.get(version)
        if cached is None:
            cached = policy_document(session.get(RoutingPolicyRecord, version))
            if cached is None:  # not committed yet, or rolled back: do not remember
                return None
            with self._lock:
                if len(self._policies) >= 8:  # the live one and a few before it
                    self._policies.clear()
                self._policies[version] = cached
        return cached

    def _change(
        self,
        session: Session,
        agent_id: str,
        actor: str,
        what: str,
        *,
        models: tuple[ModelAssignment, ...] | None = None,
        labels: dict[str, str] | None = None,
        federated_tasks: tuple[FederatedTask, ...] | None = None,
    ) -> DesiredState:
        # Lock the agent's row (PostgreSQL; SQLite's writer lock already serialises), so two
        # concurrent changes cannot both claim the same next generation.
        agent = session.exec(
            select(Agent).where(Agent.id == agent_id).with_for_update()
        ).one_or_none()
        if agent is None:
            raise NotFound(f"no agent {agent_id}")
        previous = self._current(session, agent_id)
        generation = max(previous.generation, agent.desired_generation) + 1
        new_models = models if models is not None else previous.models
        if labels is not None:  # selectors may match differently now
            session.flush()  # the caller's change to the agent's labels, for the resolver
        # New path models keep the agent's assigned registry models (and may free an alias).
        new_models = self._with_registry(session, agent_id, new_models)
        new_labels = labels if labels is not None else dict(previous.labels)
        tasks = federated_tasks if federated_tasks is not None else previous.federated_tasks
        policy = live_policy(session)  # every new generation carries the live policy
        keys = live_inference_keys(session)  # and the live inference keys
        revision = inference_keys_revision(session)
        spec = spec_of(new_models, new_labels, policy, revision, tasks)
        session.add(
            DesiredStateRecord(
                agent_id=agent_id,
                generation=generation,
                spec=spec,
                created_at=self._clock(),
                created_by=actor,
            )
        )
        agent.desired_generation = generation
        session.add(agent)
        self._audit.record(
            session,
            actor=actor,
            action=f"desired_state.set_{what}",
            target=f"agent:{agent_id}",
            detail={"generation": generation, what: spec[_SPEC_KEYS[what]]},
        )
        session.flush()
        state = state_of(generation, spec, policy, keys)
        self._notify_after_commit(session, {agent_id: state})
        return state

    def set_models_for_site(
        self, session: Session, site: str, models: Sequence[ModelAssignment], *, actor: str
    ) -> dict[str, DesiredState]:
        """Gives every live agent of `site` these models (labels kept), in a few statements
        whatever the number of agents; one audit event. Returns the new states by agent id."""
        check_actor(actor)
        checked = check_assignments(models)
        live = and_(col(Agent.site) == site, col(Agent.revoked_at).is_(None))
        states = self._write_for_agents(session, live, checked, live_policy(session), actor)
        self._audit.record(
            session,
            actor=actor,
            action="desired_state.set_models_for_site",
            target=f"site:{site}",
            detail={"agents": len(states), "models": spec_of(checked, {}, None)["models"]},
        )
        return states

    def _write_for_agents(
        self,
        session: Session,
        where: Any,
        models: tuple[ModelAssignment, ...] | None,
        policy: PolicyDocument | None,
        actor: str,
    ) -> dict[str, DesiredState]:
        """A new generation for every agent `where` selects, with `models` (None: each keeps
        its own) and `policy`, in a few statements whatever the number of agents."""
        agents = session.exec(
            select(Agent.id, Agent.desired_generation).where(where).with_for_update()
        ).all()
        latest = session.exec(
            select(DesiredStateRecord.agent_id, DesiredStateRecord.spec)
            .join(
                Agent,
                and_(
                    col(Agent.id) == col(DesiredStateRecord.agent_id),
                    col(Agent.desired_generation) == col(DesiredStateRecord.generation),
                ),
            )
            .where(where)
        ).all()
        latest_specs = {agent_id: spec for agent_id, spec in latest}
        # Registry models assigned to these agents stay (an alias set here takes precedence).
        registry = self._resolver(session, [a for a, _ in agents]) if self._resolver else {}
        keys = live_inference_keys(session)  # read once, shared by every state
        revision = inference_keys_revision(session)
        now = self._clock()
        states: dict[str, DesiredState] = {}
        rows = []
        model_specs = spec_of(models or (), {}, None)["models"]  # built once, shared by every row
        for agent_id, generation in agents:
            previous = latest_specs.get(agent_id, {})
            labels = dict(previous.get("labels", {}))
            tasks = federated_tasks_of(previous)
            if models is None:  # the agent's own models, as its current state has them
                spec = {
                    **spec_of((), labels, policy, revision, tasks),
                    "models": previous.get("models", []),
                }
                state = state_of(generation + 1, spec, policy, keys)
            else:
                taken = {m.alias for m in models}
                extra = tuple(m for m in registry.get(agent_id, ()) if m.alias not in taken)
                extra_specs = spec_of(extra, {}, None)["models"] if extra else []
                spec = {
                    **spec_of((), labels, policy, revision, tasks),
                    "models": model_specs + extra_specs if extra else model_specs,
                }
                state = DesiredState(
                    generation + 1, models + extra, MappingProxyType(labels), policy, keys, tasks
                )
            rows.append(
                {
                    "agent_id": agent_id,
                    "generation": generation + 1,
                    "spec": spec,
                    "created_at": now,
                    "created_by": actor,
                }
            )
            states[agent_id] = state
        if rows:
            session.execute(insert(DesiredStateRecord), rows)
            session.execute(
                update(Agent).where(where).values(desired_generation=Agent.desired_generation + 1)
            )
        session.flush()
        self._notify_after_commit(session, states)
        return states

    def _notify_after_commit(self, session: Session, states: Mapping[str, DesiredState]) -> None:
        key = f"{_PENDING_KEY}:{id(self)}"
        pending: dict[str, DesiredState] | None = session.info.get(key)
        if pending is None:
            pending = session.info[key] = {}
            if not event.contains(session, "after_commit", self._after_commit):
                event.listen(session, "after_commit", self._after_commit)
                event.listen(session, "after_rollback", self._after_rollback)
        pending.update(states)

    def _after_commit(self, session: Session) -> None:
        changed: dict[str, DesiredState] = session.info.pop(f"{_PENDING_KEY}:{id(self)}", {})
        if not changed:
            return
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(changed)
            except Exception:  # the change is committed; one bad listener must not undo it
                log.exception("desired-state listener %r failed", listener)

    def _after_rollback(self, session: Session) -> None:
        session.info.pop(f"{_PENDING_KEY}:{id(self)}", None)
