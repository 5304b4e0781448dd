"""Registry models (with LoRA adapters) assigned to an agent, a site or a label selector; folded
into desired states."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from common.control import AdapterAssignment, ModelAssignment
from common.errors import Conflict, InsufficientResources, InvalidArgument, NotFound
from common.telemetry import Sample
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import Agent, ModelAssignmentRecord, RegisteredModel, utcnow
from controlplane.desired_state import DesiredStates
from controlplane.desired_state_checks import (
    CONTEXT_LENGTH_RANGE,
    MAX_ADAPTERS,
    QUEUE_DEPTH_RANGE,
    check_agent_id,
    check_identifier,
    check_labels,
)
from controlplane.fit_check import capacity, problems, requirement
from controlplane.model_registry import ModelRegistry, RegisteredModelView

TARGET_KINDS = ("agent", "site", "selector")
PRECEDENCE = {"agent": 0, "selector": 1, "site": 2}  # the most specific assignment wins
MAX_THREADS = 1024


@dataclass(frozen=True)
class ServingParameters:
    alias: str | None = None  # None: the model's name
    context_length: int = 4096
    gpu_layers: int = 0
    threads: int = 0
    queue_depth: int = 16
    # LoRA adapters served with the model: the name requests use ("alias:name") -> a registry
    # reference to an adapter for the model's architecture; at most MAX_ADAPTERS
    adapters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AssignedAdapter:
    name: str  # requests name it "alias:name"
    adapter: RegisteredModelView


@dataclass(frozen=True)
class AssignmentView:
    id: int
    model: RegisteredModelView
    target_kind: str
    target: str
    alias: str
    context_length: int
    gpu_layers: int
    threads: int
    queue_depth: int
    created_at: datetime
    created_by: str
    agents: tuple[str, ...] = ()  # the live agents it applies to now
    fit_unchecked: tuple[str, ...] = field(default=())  # agents that reported no capacity yet
    adapters: tuple[AssignedAdapter, ...] = ()  # by name


@dataclass(frozen=True)
class _Reached:
    """What the fit check needs of one agent, read before any write lock is taken."""

    id: str
    name: str
    hardware: dict[str, Any]
    holds: bool  # it reports the model's verified blob on its disk (loading, ready, serving)


def canonical_selector(selector: Mapping[str, str]) -> str:
    checked = check_labels(selector)
    if not checked:
        raise InvalidArgument("a selector needs at least one key=value label")
    return ",".join(f"{k}={v}" for k, v in sorted(checked.items()))


def parse_selector(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) for pair in text.split(",")) if text else {}


def _matches(record: ModelAssignmentRecord, agent: Agent) -> bool:
    if record.target_kind == "agent":
        return record.target == agent.id
    if record.target_kind == "site":
        return bool(agent.site) and record.target == agent.site
    labels = agent.labels or {}
    return all(labels.get(k) == v for k, v in parse_selector(record.target).items())


class ModelAssignments:
    """Assignments are rows; each live agent's desired models are its path models plus the
    registry models of every assignment that matches it (one per alias, most specific wins)."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        desired: DesiredStates,
        audit: AuditLog,
        latest_sample: Callable[[str], Sample | None],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._registry = registry
        self._desired = desired
        self._audit = audit
        self._latest_sample = latest_sample
        self._clock = clock
        desired.set_registry_resolver(self.models_for_agents)

    # -- changes ---------------------------------------------------------------------------

    def assign(
        self,
        ref: str,
        *,
        target_kind: str,
        target: str | Mapping[str, str],
        parameters: ServingParameters,
        actor: str,
    ) -> AssignmentView:
        """Creates or replaces (same target and alias) an assignment after a fit check on every
        agent it reaches; raises InsufficientResources naming each agent that cannot hold it.
        `ref` must be a model and each of `parameters.adapters` an adapter for its architecture
        (InvalidArgument; NotFound for a reference the registry lacks)."""
        check_actor(actor)
        model = self._registry.get(ref)
        if model.is_adapter:
            raise InvalidArgument(
                f"{model.ref} is a LoRA adapter, not a model: assign the model it is for and "
                "name the adapter among its adapters"
            )
        kind, target_text = self._check_target(target_kind, target)
        alias = check_identifier(parameters.alias or model.name[:63], "a model alias")
        _check_parameters(parameters)
        adapters = self._adapters(model, parameters.adapters)
        with self._db.session() as session:
            reached = [
                _Reached(a.id, a.name, dict(a.hardware or {}), _holds(a, model.sha256))
                for a in self._live_agents(session)
                if _matches_target(kind, target_text, a)
            ]
        if kind == "agent" and not reached:
            raise NotFound(f"no live agent {target_text}")
        # reads telemetry: no lock held
        unchecked = self._fit_check(model, parameters, reached, adapters)
        with self._db.session() as session:
            self._lock_adapters(session, adapters)
            agents = [
                a for a in self._live_agents(session) if _matches_target(kind, target_text, a)
            ]
            record = session.exec(
                select(ModelAssignmentRecord).where(
                    ModelAssignmentRecord.target_kind == kind,
                    ModelAssignmentRecord.target == target_text,
                    ModelAssignmentRecord.alias == alias,
                )
            ).one_or_none()
            if record is None:
                record = ModelAssignmentRecord(
                    model_id=model.id,
                    target_kind=kind,
                    target=target_text,
                    alias=alias,
                    context_length=0,
                    gpu_layers=0,
                    threads=0,
                    queue_depth=0,
                    created_at=self._clock(),
                    created_by=actor,
                )
            before = record.model_id if record.id is not None else None
            record.model_id = model.id
            record.context_length = parameters.context_length
            record.gpu_layers = parameters.gpu_layers
            record.threads = parameters.threads
            record.queue_depth = parameters.queue_depth
            record.adapters = {a.name: a.adapter.id for a in adapters}
            record.created_at, record.created_by = self._clock(), actor
            session.add(record)
            try:
                session.flush()
            except IntegrityError as exc:
                raise Conflict(f"an assignment of alias {alias} to {target_text} exists") from exc
            self._audit.record(
                session,
                actor=actor,
                action="model.assign",
                target=f"{kind}:{target_text}",
                detail={
                    "model": model.ref,
                    "sha256": model.sha256,
                    "alias": alias,
                    "adapters": {
                        a.name: {"model": a.adapter.ref, "sha256": a.adapter.sha256}
                        for a in adapters
                    },
                    "replaced_model_id": before,
                },
            )
            self._refresh(session, agents, actor)
            view = self._view(session, record, agents, unchecked)
        return view

    def unassign(self, assignment_id: int, *, actor: str) -> None:
        check_actor(actor)
        with self._db.session() as session:
            record = session.get(ModelAssignmentRecord, assignment_id)
            if record is None:
                raise NotFound(f"no model assignment {assignment_id}")
            agents = [a for a in self._live_agents(session) if _matches(record, a)]
            session.delete(record)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="model.unassign",
                target=f"{record.target_kind}:{record.target}",
                detail={"assignment": assignment_id, "alias": record.alias},
            )
            self._refresh(session, agents, actor)

    # -- reading ---------------------------------------------------------------------------

    def list(self) -> builtins.list[AssignmentView]:
        with self._db.session() as session:
            agents = self._live_agents(session)
            records = session.exec(
                select(ModelAssignmentRecord).order_by(col(ModelAssignmentRecord.id))
            ).all()
            return [
                self._view(session, r, [a for a in agents if _matches(r, a)], ()) for r in records
            ]

    def get(self, assignment_id: int) -> AssignmentView:
        with self._db.session() as session:
            record = session.get(ModelAssignmentRecord, assignment_id)
            if record is None:
                raise NotFound(f"no model assignment {assignment_id}")
            agents = [a for a in self._live_agents(session) if _matches(record, a)]
            return self._view(session, record, agents, ())

    def models_for(self, session: Session, agent: Agent) -> builtins.list[ModelAssignment]:
        """The registry models an agent should serve, one per alias."""
        records = builtins.list(session.exec(select(ModelAssignmentRecord)).all())
        return _choose(records, self._models_of(session, records), agent)

    def models_for_agents(
        self, session: Session, agent_ids: Sequence[str]
    ) -> dict[str, builtins.list[ModelAssignment]]:
        """The resolver DesiredStates calls (label changes, site-wide changes): the registry
        models of each live agent named, read with a few queries whatever their number."""
        records = builtins.list(session.exec(select(ModelAssignmentRecord)).all())
        if not records or not agent_ids:
            return {}
        models = self._models_of(session, records)
        agents = session.exec(
            select(Agent).where(col(Agent.id).in_(agent_ids), col(Agent.revoked_at).is_(None))
        ).all()
        return {agent.id: _choose(records, models, agent) for agent in agents}

    @staticmethod
    def _models_of(
        session: Session, records: Sequence[ModelAssignmentRecord]
    ) -> dict[int, RegisteredModel]:
        """The models and adapters of `records`, in one query."""
        ids = {r.model_id for r in records} | {i for r in records for i in _adapter_ids(r)}
        if not ids:
            return {}
        found = session.exec(select(RegisteredModel).where(col(RegisteredModel.id).in_(ids)))
        return {m.id: m for m in found.all() if m.id is not None}

    # -- internals -------------------------------------------------------------------------

    def _refresh(self, session: Session, agents: Sequence[Agent], actor: str) -> None:
        for agent in agents:
            self._desired.refresh_registry_models(session, agent.id, actor=actor)

    def _adapters(self, model: RegisteredModelView, given: object) -> tuple[AssignedAdapter, ...]:
        """Each named adapter looked up and checked against `model`, by name."""
        if not isinstance(given, Mapping):
            raise InvalidArgument("adapters must map adapter names to registry references")
        if len(given) > MAX_ADAPTERS:
            raise InvalidArgument(
                f"at most {MAX_ADAPTERS} adapters per model are allowed, got {len(given)}"
            )
        for name in given:
            check_identifier(name, "an adapter name")
        found = []
        for name, ref in sorted(given.items()):
            if not isinstance(ref, str) or not ref:
                raise InvalidArgument(
                    f"adapter {name}: give its registry reference (name, name@version or "
                    "sha256:<hex>)"
                )
            try:
                adapter = self._registry.get(ref)
            except NotFound:
                raise NotFound(f"adapter {name}: no registered adapter {ref}") from None
            except InvalidArgument as exc:
                raise InvalidArgument(f"adapter {name}: {exc}") from None
            if not adapter.is_adapter:
                raise InvalidArgument(
                    f"adapter {name}: {adapter.ref} is a model, not a LoRA adapter"
                )
            if adapter.architecture != model.architecture:
                raise InvalidArgument(
                    f"adapter {name}: {adapter.ref} is for {adapter.architecture} models but "
                    f"{model.ref} is a {model.architecture} model"
                )
            found.append(AssignedAdapter(name, adapter))
        return tuple(found)

    @staticmethod
    def _lock_adapters(session: Session, adapters: Sequence[AssignedAdapter]) -> None:
        """Share-locks the adapters' rows (PostgreSQL) until the assignment commits: a
        concurrent deletion either waits and then sees the assignment, or was first and the
        assignment is refused here. No foreign key covers the adapters column."""
        if not adapters:
            return
        ids = sorted({a.adapter.id for a in adapters})
        rows = session.exec(
            select(RegisteredModel.id, RegisteredModel.sha256)
            .where(col(RegisteredModel.id).in_(ids))
            .order_by(col(RegisteredModel.id))
            .with_for_update(read=True)
        ).all()
        held = set(rows)
        gone = [a for a in adapters if (a.adapter.id, a.adapter.sha256) not in held]
        if gone:
            names = ", ".join(f"{a.name} ({a.adapter.ref})" for a in gone)
            raise Conflict(f"adapter(s) {names} were deleted meanwhile; nothing was assigned")

    def _fit_check(
        self,
        model: RegisteredModelView,
        parameters: ServingParameters,
        agents: Sequence[_Reached],
        adapters: Sequence[AssignedAdapter] = (),
    ) -> tuple[str, ...]:
        need = requirement(
            model.gguf(),
            model.size_bytes,
            context_length=parameters.context_length,
            gpu_layers=parameters.gpu_layers,
            adapter_bytes=sum(a.adapter.size_bytes for a in adapters),
        )
        refusals, unchecked = [], []
        for agent in agents:
            have = capacity(agent.hardware, self._latest_sample(agent.id))
            if have.memory_bytes is None:
                unchecked.append(agent.id)
            found = problems(need, have, already_on_disk=agent.holds)
            if found:
                refusals.append(f"agent {agent.id} ({agent.name}): " + "; ".join(found))
        if refusals:
            raise InsufficientResources(
                f"model {model.ref} with a {parameters.context_length}-token context does not "
                "fit: " + " | ".join(refusals)
            )
        return tuple(unchecked)

    @staticmethod
    def _check_target(kind: str, target: str | Mapping[str, str]) -> tuple[str, str]:
        if kind not in TARGET_KINDS:
            raise InvalidArgument(f"an assignment targets one of {', '.join(TARGET_KINDS)}")
        if kind == "selector":
            if isinstance(target, str):
                pairs = [p.partition("=") for p in target.split(",")]
                if any(not sep for _, sep, _ in pairs):
                    raise InvalidArgument("a selector is key=value[,key=value...]")
                target = {k: v for k, _, v in pairs}
            return kind, canonical_selector(target)
        if not isinstance(target, str):
            raise InvalidArgument(f"an assignment to a {kind} names it as a string")
        if kind == "agent":
            return kind, check_agent_id(target)
        return kind, check_identifier(target, "a site")

    @staticmethod
    def _live_agents(session: Session) -> builtins.list[Agent]:
        return builtins.list(
            session.exec(select(Agent).where(col(Agent.revoked_at).is_(None))).all()
        )

    @staticmethod
    def _view(
        session: Session,
        record: ModelAssignmentRecord,
        agents: Sequence[Agent],
        unchecked: Sequence[str],
    ) -> AssignmentView:
        model = session.get(RegisteredModel, record.model_id)
        assert model is not None
        assert record.id is not None
        adapters = []
        for name, adapter_id in sorted((record.adapters or {}).items()):
            adapter = session.get(RegisteredModel, adapter_id)
            if adapter is not None:
                adapters.append(AssignedAdapter(name, RegisteredModelView.of(adapter)))
        return AssignmentView(
            id=record.id,
            model=RegisteredModelView.of(model),
            target_kind=record.target_kind,
            target=record.target,
            alias=record.alias,
            context_length=record.context_length,
            gpu_layers=record.gpu_layers,
            threads=record.threads,
            queue_depth=record.queue_depth,
            created_at=record.created_at,
            created_by=record.created_by,
            agents=tuple(a.id for a in agents),
            fit_unchecked=tuple(unchecked),
            adapters=tuple(adapters),
        )


def _choose(
    records: Sequence[ModelAssignmentRecord], models: Mapping[int, RegisteredModel], agent: Agent
) -> list[ModelAssignment]:
    """Per alias, the most specific assignment matching `agent` (the newest among equals)."""
    matching = sorted(
        (r for r in records if _matches(r, agent)),
        key=lambda r: (PRECEDENCE[r.target_kind], -(r.id or 0)),
    )
    chosen: dict[str, ModelAssignment] = {}
    for record in matching:
        model = models.get(record.model_id)
        if record.alias in chosen or model is None:
            continue
        chosen[record.alias] = ModelAssignment(
            alias=record.alias,
            context_length=record.context_length,
            gpu_layers=record.gpu_layers,
            queue_depth=record.queue_depth,
            threads=record.threads,
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            model_name=model.name,
            model_version=model.version,
            adapters=_adapter_assignments(record, models),
        )
    return [chosen[a] for a in sorted(chosen)]


def _adapter_ids(record: ModelAssignmentRecord) -> list[int]:
    return [i for i in (record.adapters or {}).values() if isinstance(i, int)]


def _adapter_assignments(
    record: ModelAssignmentRecord, models: Mapping[int, RegisteredModel]
) -> tuple[AdapterAssignment, ...]:
    """The record's adapters by name, from their registry rows (one gone is left out: deleting
    an assigned adapter is refused, so that is a row deleted behind the registry's back)."""
    adapters = []
    for name, adapter_id in sorted((record.adapters or {}).items()):
        adapter = models.get(adapter_id)
        if adapter is not None:
            adapters.append(
                AdapterAssignment(
                    name=name,
                    sha256=adapter.sha256,
                    size_bytes=adapter.size_bytes,
                    registry_name=adapter.name,
                    registry_version=adapter.version,
                )
            )
    return tuple(adapters)


def _matches_target(kind: str, target: str, agent: Agent) -> bool:
    probe = ModelAssignmentRecord(
        model_id=0,
        target_kind=kind,
        target=target,
        alias="x",
        context_length=0,
        gpu_layers=0,
        threads=0,
        queue_depth=0,
        created_at=utcnow(),
        created_by="",
    )
    return _matches(probe, agent)


def _holds(agent: Agent, sha256: str) -> bool:
    return any(
        (item.get("sha256") == sha256 and item.get("state") in ("loading", "ready"))
        or item.get("serving_sha256") == sha256
        for item in agent.status_items or []
    )


def _check_parameters(parameters: ServingParameters) -> None:
    low, high = CONTEXT_LENGTH_RANGE
    if not low <= parameters.context_length <= high:
        raise InvalidArgument(f"context_length must be between {low} and {high}")
    if parameters.gpu_layers < -1:
        raise InvalidArgument("gpu_layers must be -1 (all) or more")
    if not 0 <= parameters.threads <= MAX_THREADS:
        raise InvalidArgument(f"threads must be between 0 and {MAX_THREADS}")
    low, high = QUEUE_DEPTH_RANGE
    if not low <= parameters.queue_depth <= high:
        raise InvalidArgument(f"queue_depth must be between {low} and {high}")
