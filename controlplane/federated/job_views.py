"""What the job service answers (frozen views with `to_json()`) and what the runner reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from common.errors import Conflict, InvalidArgument
from controlplane.api.views import iso
from controlplane.db.models import (
    FL_REASON_CHARS,
    FederatedJobRecord,
    FederatedJobState,
    FederatedRoundRecord,
)
from controlplane.federated.job_spec import MAX_PARTICIPANTS, FederatedJobSpec, job_spec_from

JobState = FederatedJobState
ACTIVE_STATES = (JobState.PENDING, JobState.RUNNING, JobState.EVALUATING)
TERMINAL_STATES = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)
# Where each state may go; a terminal state goes nowhere. RUNNING -> RUNNING: the next round.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.RUNNING, JobState.EVALUATING, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.EVALUATING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}
PHASES = ("train", "evaluate")
MAX_DROP_REASON_CHARS = 500
MAX_METRICS = 32  # entries of an aggregate or final metrics mapping
MAX_METRIC_NAME_CHARS = 64
MAX_BYTES = 2**63 - 1
MAX_SECONDS = 1e9
SITE_METRICS = ("train_loss", "heldout_loss", "examples")


def check_transition(job_id: str, current: str, wanted: JobState, doing: str) -> None:
    """Conflict (409) when a job in state `current` cannot go to `wanted`."""
    if wanted not in TRANSITIONS[JobState(current)]:
        raise Conflict(f"federated job {job_id} is {current}: it cannot be {doing}")


def clip(text: str, limit: int = FL_REASON_CHARS) -> str:
    """Stored text: no NUL (PostgreSQL refuses it), at most `limit` characters."""
    text = text.replace("\x00", "\N{REPLACEMENT CHARACTER}")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class JobModel:
    """The base model, as resolved from the registry when the job was created."""

    id: int
    name: str
    version: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "version": self.version,
            "ref": f"{self.name}@{self.version}",
            "digest": f"sha256:{self.sha256}",
        }


@dataclass(frozen=True)
class Participant:
    agent_id: str
    name: str
    site: str
    dataset: str  # the dataset's name at this agent

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "site": self.site,
            "dataset": self.dataset,
        }


@dataclass(frozen=True)
class SkippedAgent:
    agent_id: str
    name: str
    site: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "name": self.name,
            "site": self.site,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FederatedJobView:
    id: str
    state: str  # a JobState value
    spec: FederatedJobSpec  # deploy.adapter_name filled in
    model: JobModel
    current_round: int  # 0 until the first round starts
    reason: str  # why it failed or was cancelled; "" otherwise
    adapter_model_id: int | None
    flower_run_id: str | None
    participants: tuple[Participant, ...]
    skipped: tuple[SkippedAgent, ...]
    min_participants: int  # the spec's, or every participant planned
    metrics: Mapping[str, Any]
    created_by: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def rounds(self) -> int:
        return self.spec.rounds

    @property
    def terminal(self) -> bool:
        return JobState(self.state) in TERMINAL_STATES

    @classmethod
    def of(cls, record: FederatedJobRecord) -> FederatedJobView:
        spec = job_spec_from(record.spec)
        participants = tuple(Participant(**p) for p in record.participants)
        return cls(
            id=record.id,
            state=record.state,
            spec=spec,
            model=JobModel(**record.model),
            current_round=record.current_round,
            reason=record.reason,
            adapter_model_id=record.adapter_model_id,
            flower_run_id=record.flower_run_id,
            participants=participants,
            skipped=tuple(SkippedAgent(**s) for s in record.skipped),
            min_participants=spec.min_participants or len(participants),
            metrics=dict(record.metrics or {}),
            created_by=record.created_by,
            created_at=record.created_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            updated_at=record.updated_at,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state,
            "round": self.current_round,
            "rounds": self.rounds,
            "reason": self.reason,
            "model": self.model.to_json(),
            "participants": [p.to_json() for p in self.participants],
            "skipped": [s.to_json() for s in self.skipped],
            "min_participants": self.min_participants,
            "adapter_model_id": self.adapter_model_id,
            "flower_run_id": self.flower_run_id,
            "metrics": dict(self.metrics),
            "spec": self.spec.to_json(),
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True)
class RoundReport:
    """What the runner saw of one phase of one round; `record_round` stores it (an upsert)."""

    round: int  # 1..rounds; the evaluation of the final adapter may use rounds or 0 (the base)
    started_at: datetime
    phase: str = "train"  # or "evaluate"
    finished_at: datetime | None = None  # None: still going
    participants: tuple[str, ...] = ()  # agent ids that took part
    dropped: Mapping[str, str] = field(default_factory=dict)  # agent id -> why
    # agent id -> {"train_loss": float | None, "heldout_loss": float | None, "examples": int}
    sites: Mapping[str, Mapping[str, float | int | None]] = field(default_factory=dict)
    bytes_down: int = 0  # control plane -> sites, this round
    bytes_up: int = 0  # sites -> control plane
    wall_s: float = 0.0
    train_s: float = 0.0  # the longest local training
    aggregate: Mapping[str, float | int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundView:
    job_id: str
    round: int
    phase: str
    started_at: datetime
    finished_at: datetime | None
    participants: tuple[str, ...]
    dropped: Mapping[str, str]
    sites: Mapping[str, Mapping[str, Any]]
    bytes_down: int
    bytes_up: int
    wall_s: float
    train_s: float
    aggregate: Mapping[str, Any]

    @classmethod
    def of(cls, record: FederatedRoundRecord) -> RoundView:
        return cls(
            job_id=record.job_id,
            round=record.round,
            phase=record.phase,
            started_at=record.started_at,
            finished_at=record.finished_at,
            participants=tuple(record.participants),
            dropped=dict(record.dropped),
            sites={k: dict(v) for k, v in record.sites.items()},
            bytes_down=record.bytes_down,
            bytes_up=record.bytes_up,
            wall_s=record.wall_s,
            train_s=record.train_s,
            aggregate=dict(record.aggregate),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "phase": self.phase,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "participants": list(self.participants),
            "dropped": dict(self.dropped),
            "sites": {k: dict(v) for k, v in self.sites.items()},
            "bytes_down": self.bytes_down,
            "bytes_up": self.bytes_up,
            "wall_s": self.wall_s,
            "train_s": self.train_s,
            "aggregate": dict(self.aggregate),
        }


def check_round(report: RoundReport, job: FederatedJobView) -> dict[str, Any]:
    """The report's columns, checked against the job and bounded: unknown agents and phases,
    rounds out of range, negative counts are InvalidArgument; a metric that is not a finite
    number is stored as null; text is clipped."""
    if report.phase not in PHASES:
        raise InvalidArgument(f"a round's phase is one of {', '.join(PHASES)}")
    if (
        isinstance(report.round, bool)
        or not isinstance(report.round, int)
        or not 0 <= report.round <= job.rounds
    ):
        raise InvalidArgument(f"round {report.round} is not between 0 and {job.rounds}")
    if report.started_at.tzinfo is None or (
        report.finished_at is not None and report.finished_at.tzinfo is None
    ):
        raise InvalidArgument("a round's times must be timezone-aware")
    planned = {p.agent_id for p in job.participants}

    def agent(agent_id: object) -> str:
        if not isinstance(agent_id, str) or agent_id not in planned:
            raise InvalidArgument(f"{clip(repr(agent_id), 80)} is not a participant of the job")
        return agent_id

    if max(len(report.participants), len(report.dropped), len(report.sites)) > MAX_PARTICIPANTS:
        raise InvalidArgument(f"a round has at most {MAX_PARTICIPANTS} participants")
    if not all(isinstance(values, Mapping) for values in report.sites.values()):
        raise InvalidArgument("each site's metrics map train_loss, heldout_loss, examples")
    return {
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "participants": sorted({agent(a) for a in report.participants}),
        "dropped": {
            agent(a): clip(str(why), MAX_DROP_REASON_CHARS) for a, why in report.dropped.items()
        },
        "sites": {
            agent(a): {
                "train_loss": _metric(values.get("train_loss")),
                "heldout_loss": _metric(values.get("heldout_loss")),
                # evaluation rounds: the base model's held-out loss beside the adapter's
                "base_heldout_loss": _metric(values.get("base_heldout_loss")),
                "examples": _count(values.get("examples", 0), "examples"),
            }
            for a, values in report.sites.items()
        },
        "bytes_down": _count(report.bytes_down, "bytes_down"),
        "bytes_up": _count(report.bytes_up, "bytes_up"),
        "wall_s": _seconds(report.wall_s, "wall_s"),
        "train_s": _seconds(report.train_s, "train_s"),
        "aggregate": metrics(report.aggregate),
    }


def metrics(values: Mapping[str, Any]) -> dict[str, float | int | None]:
    """A bounded mapping of metric name -> number (null when not a finite number)."""
    if len(values) > MAX_METRICS:
        raise InvalidArgument(f"at most {MAX_METRICS} metrics are kept")
    return {clip(str(k), MAX_METRIC_NAME_CHARS): _metric(v) for k, v in values.items()}


def _metric(value: object) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):
        return value if abs(value) <= MAX_BYTES else None
    return value if math.isfinite(value) else None  # JSON (PostgreSQL) holds no NaN


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES:
        raise InvalidArgument(f"{name} must be a whole number from 0, got {clip(repr(value), 40)}")
    return value


def _seconds(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds")
    if not (math.isfinite(value) and 0 <= value <= MAX_SECONDS):
        raise InvalidArgument(f"{name} must be between 0 and {MAX_SECONDS:g} seconds")
    return float(value)
