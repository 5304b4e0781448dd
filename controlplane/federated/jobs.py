"""`FederatedJobs`: federated fine-tuning jobs as records: created (planned) and cancelled by
users; moved through their states, round by round, by the runner that drives Flower."""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.audit import AuditLog, check_actor
from controlplane.db.database import Database
from controlplane.db.models import FederatedJobRecord, FederatedRoundRecord, utcnow
from controlplane.desired_state import DesiredStates
from controlplane.federated.job_planning import plan
from controlplane.federated.job_spec import FederatedJobSpec
from controlplane.federated.job_views import (
    ACTIVE_STATES,
    FederatedJobView,
    JobModel,
    JobState,
    RoundReport,
    RoundView,
    check_round,
    check_transition,
    clip,
    metrics,
)
from controlplane.model_registry import ModelRegistry

MAX_LIST = 500
MAX_FLOWER_RUN_ID = 2**64 - 1


def check_job_id(job_id: object) -> str:
    """A job id is a UUID in lowercase canonical form."""
    try:
        canonical = str(uuid.UUID(job_id)) if isinstance(job_id, str) else None
    except ValueError:
        canonical = None
    if canonical is None or canonical != job_id:
        raise InvalidArgument("a federated job id is a UUID in lowercase canonical form")
    return canonical


def _target(job_id: str) -> str:
    return f"fl_job:{job_id}"


class FederatedJobs:
    """Jobs and their rounds. A user creates a job (its participants are planned then) and may
    cancel it; the runner moves it pending -> running (round k of n) -> evaluating ->
    succeeded, or to failed; terminal states are final (Conflict, 409)."""

    def __init__(
        self,
        db: Database,
        registry: ModelRegistry,
        desired: DesiredStates,
        audit: AuditLog,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self._registry = registry
        self._desired = desired
        self._audit = audit
        self._clock = clock

    # -- users -----------------------------------------------------------------------------

    def create(self, spec: FederatedJobSpec, *, actor: str) -> FederatedJobView:
        """A pending job. The base model must be a registered model (not an adapter); the
        agents the spec names are planned now: InvalidArgument naming each skipped agent and
        its reason when fewer than the minimum can take part, NotFound for an unknown agent id
        or model."""
        check_actor(actor)
        found = self._registry.get(spec.model)
        if found.is_adapter:
            raise InvalidArgument(
                f"{found.ref} is a LoRA adapter: a federated job trains one on a base model"
            )
        model = JobModel(found.id, found.name, found.version, found.sha256)
        job_id = str(uuid.uuid4())
        if spec.adapter_name is None:
            spec = replace(spec, adapter_name=f"fl-{job_id[:8]}")
        now = self._clock()
        with self._db.session() as session:
            planned = plan(session, spec, model, self._desired)
            record = FederatedJobRecord(
                id=job_id,
                model_id=model.id,
                model={
                    "id": model.id,
                    "name": model.name,
                    "version": model.version,
                    "sha256": model.sha256,
                },
                spec=spec.to_json(),
                state=JobState.PENDING.value,
                participants=[p.to_json() for p in planned.participants],
                skipped=[s.to_json() for s in planned.skipped],
                created_by=actor,
                created_at=now,
                updated_at=now,
            )
            session.add(record)
            session.flush()
            self._audit.record(
                session,
                actor=actor,
                action="fl_job.create",
                target=_target(job_id),
                detail={
                    "model": f"{model.name}@{model.version}",
                    "sha256": model.sha256,
                    "participants": [p.agent_id for p in planned.participants],
                    "skipped": {s.agent_id: s.reason for s in planned.skipped},
                    "rounds": spec.rounds,
                },
            )
            return FederatedJobView.of(record)

    def get(self, job_id: str) -> FederatedJobView:
        with self._db.session() as session:
            return FederatedJobView.of(self._record(session, job_id))

    def list(
        self, *, state: str | None = None, limit: int = 100
    ) -> builtins.list[FederatedJobView]:
        """Newest first; only jobs in `state` when given."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit must be between 1 and {MAX_LIST}")
        statement = select(FederatedJobRecord)
        if state is not None:
            if state not in set(JobState):
                raise InvalidArgument(
                    f"a job state is one of {', '.join(s.value for s in JobState)}"
                )
            statement = statement.where(FederatedJobRecord.state == state)
        statement = statement.order_by(
            col(FederatedJobRecord.created_at).desc(), col(FederatedJobRecord.id)
        ).limit(limit)
        with self._db.session() as session:
            return [FederatedJobView.of(r) for r in session.exec(statement).all()]

    def rounds(self, job_id: str) -> builtins.list[RoundView]:
        """By round, training before evaluation. NotFound for an unknown job."""
        with self._db.session() as session:
            self._record(session, job_id)
            records = session.exec(
                select(FederatedRoundRecord)
                .where(FederatedRoundRecord.job_id == job_id)
                .order_by(col(FederatedRoundRecord.round), col(FederatedRoundRecord.phase).desc())
            ).all()
            return [RoundView.of(r) for r in records]

    def cancel(self, job_id: str, *, actor: str) -> FederatedJobView:
        """Cancels an active job (the runner sees `is_cancelled` and stops it); Conflict (409)
        naming the state for a job that already ended."""
        check_actor(actor)
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            check_transition(job_id, record.state, JobState.CANCELLED, "cancelled")
            before = record.state
            self._finish(record, JobState.CANCELLED, f"cancelled by {actor}")
            session.add(record)
            self._audit.record(
                session,
                actor=actor,
                action="fl_job.cancel",
                target=_target(job_id),
                detail={"state": before, "round": record.current_round},
            )
            return FederatedJobView.of(record)

    # -- the runner ------------------------------------------------------------------------

    def active(self) -> builtins.list[FederatedJobView]:
        """Pending, running and evaluating jobs, oldest first: what the runner drives."""
        with self._db.session() as session:
            records = session.exec(
                select(FederatedJobRecord)
                .where(col(FederatedJobRecord.state).in_([s.value for s in ACTIVE_STATES]))
                .order_by(col(FederatedJobRecord.created_at), col(FederatedJobRecord.id))
            ).all()
            return [FederatedJobView.of(r) for r in records]

    def is_cancelled(self, job_id: str) -> bool:
        return self.get(job_id).state == JobState.CANCELLED.value

    def mark_running(
        self, job_id: str, round: int, *, flower_run_id: int | str | None = None
    ) -> FederatedJobView:
        """Round `round` (1..rounds, never going back) has started; the first call also
        records `started_at`. `flower_run_id` (Flower's run id), once given, is kept."""
        run_id = None if flower_run_id is None else _flower_run_id(flower_run_id)
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            check_transition(job_id, record.state, JobState.RUNNING, "running")
            rounds = int(record.spec.get("rounds", 0))
            if isinstance(round, bool) or not isinstance(round, int) or not 1 <= round <= rounds:
                raise InvalidArgument(f"round must be between 1 and {rounds}, got {round!r}")
            if round < record.current_round:
                raise InvalidArgument(
                    f"federated job {job_id} is at round {record.current_round}: it cannot go "
                    f"back to {round}"
                )
            now = self._clock()
            record.state = JobState.RUNNING.value
            record.current_round = round
            record.started_at = record.started_at or now
            record.flower_run_id = run_id or record.flower_run_id
            record.updated_at = now
            session.add(record)
            return FederatedJobView.of(record)

    def mark_evaluating(self, job_id: str) -> FederatedJobView:
        """Training is over: the aggregated adapter is being exported and evaluated."""
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            check_transition(job_id, record.state, JobState.EVALUATING, "evaluating")
            record.state = JobState.EVALUATING.value
            record.updated_at = self._clock()
            session.add(record)
            return FederatedJobView.of(record)

    def record_round(self, job_id: str, report: RoundReport) -> RoundView:
        """Stores (or replaces) the report of (job, round, phase). Conflict once the job ended;
        InvalidArgument for a report that does not fit the job (see `check_round`)."""
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            view = FederatedJobView.of(record)
            if view.terminal:
                raise_ended(job_id, record.state, "given round reports")
            columns = check_round(report, view)
            row = session.get(FederatedRoundRecord, (job_id, report.round, report.phase))
            if row is None:
                row = FederatedRoundRecord(
                    job_id=job_id, round=report.round, phase=report.phase, **columns
                )
            else:
                for name, value in columns.items():
                    setattr(row, name, value)
            record.updated_at = self._clock()
            session.add(record)
            session.add(row)
            session.flush()
            return RoundView.of(row)

    def succeed(
        self, job_id: str, adapter_model_id: int, result: Mapping[str, Any] | None = None
    ) -> FederatedJobView:
        """The adapter passed the gate and is registered as `adapter_model_id`; `result`:
        the final metrics (name -> number), at most 32."""
        if isinstance(adapter_model_id, bool) or not isinstance(adapter_model_id, int):
            raise InvalidArgument("adapter_model_id is a registered model's id")
        if adapter_model_id < 1:
            raise InvalidArgument("adapter_model_id is a registered model's id")
        kept = metrics(result or {})
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            check_transition(job_id, record.state, JobState.SUCCEEDED, "succeeded")
            self._finish(record, JobState.SUCCEEDED, "")
            record.adapter_model_id = adapter_model_id
            record.metrics = kept
            session.add(record)
            self._audit.record(
                session,
                actor="federated-runner",
                action="fl_job.succeed",
                target=_target(job_id),
                detail={"adapter_model_id": adapter_model_id, "metrics": kept},
            )
            return FederatedJobView.of(record)

    def fail(self, job_id: str, reason: str) -> FederatedJobView:
        """The job failed for `reason` (clipped to 1000 characters); Conflict if it ended."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidArgument("a failed job needs a reason")
        with self._db.session() as session:
            record = self._record(session, job_id, lock=True)
            check_transition(job_id, record.state, JobState.FAILED, "failed")
            self._finish(record, JobState.FAILED, reason)
            session.add(record)
            self._audit.record(
                session,
                actor="federated-runner",
                action="fl_job.fail",
                target=_target(job_id),
                outcome="error",
                detail={"reason": record.reason, "round": record.current_round},
            )
            return FederatedJobView.of(record)

    # -- internals -------------------------------------------------------------------------

    def _finish(self, record: FederatedJobRecord, state: JobState, reason: str) -> None:
        now = self._clock()
        record.state = state.value
        record.reason = clip(reason)
        record.finished_at = now
        record.updated_at = now

    @staticmethod
    def _record(session: Session, job_id: str, *, lock: bool = False) -> FederatedJobRecord:
        check_job_id(job_id)
        statement = select(FederatedJobRecord).where(FederatedJobRecord.id == job_id)
        if lock:  # PostgreSQL: the runner and a cancel change one job one after the other
            statement = statement.with_for_update()
        record = session.exec(statement).one_or_none()
        if record is None:
            raise NotFound(f"no federated job {job_id}")
        return record


def raise_ended(job_id: str, state: str, doing: str) -> None:
    raise Conflict(f"federated job {job_id} is {state}: it cannot be {doing}")


def _flower_run_id(value: int | str) -> str:
    text = str(value)
    digits = text.isascii() and text.isdigit() and len(text) <= 20
    if isinstance(value, bool) or not digits or not 0 <= int(text) <= MAX_FLOWER_RUN_ID:
        raise InvalidArgument(f"a Flower run id is a whole number from 0, got {value!r}")
    return str(int(text))
