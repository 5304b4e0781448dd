"""`FederatedRunner`: carries the control plane's federated jobs through Flower, one at a time.

For a pending job it gives each participant a federated task (its agent starts a SuperNode),
writes the run plan and starts the Flower App on the SuperLink. While the run goes, it records
the rounds the ServerApp writes; at the end it exports the adapter to GGUF, gates it on the
sites' held-out loss, registers it and rolls it out with the base model. A run that died with
the SuperLink (a restart) is resumed from the last finished round."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.control import FederatedTask
from common.errors import Conflict, NotFound
from controlplane.federated.job_views import FederatedJobView, RoundReport
from controlplane.federated.outcome import export_adapter, read_evaluation
from controlplane.federated.run_plan import (
    FINAL_ADAPTER,
    PLAN_FILE,
    RESULT_FILE,
    DifferentialPrivacy,
    RunPlan,
    read_json,
    round_file,
)
from controlplane.federated.superlink import SuperLink, SuperLinkError
from controlplane.model_assignments import ServingParameters, parse_selector
from controlplane.services import ControlPlaneServices

log = logging.getLogger(__name__)

ACTOR = "federated-runner"
MAX_RESUMES = 3  # a job whose run dies more often than this fails


def _now() -> datetime:
    return datetime.now(UTC)


class FederatedRunner:
    """Polls the jobs every `poll_s`; `run(stop)` is its thread's body."""

    def __init__(
        self,
        services: ControlPlaneServices,
        superlink: SuperLink,
        jobs_dir: Path,
        fleet_port: int,
        *,
        poll_s: float = 2.0,
    ) -> None:
        self._services = services
        self._jobs = services.federated_jobs
        self._link = superlink
        self._jobs_dir = jobs_dir
        self._fleet_port = fleet_port
        self._poll_s = poll_s
        self._followed: dict[str, int] = {}  # job id -> Flower run id, while it runs
        self._recorded: set[tuple[str, int]] = set()  # (job id, round) stored this process
        self._resumes: dict[str, int] = {}

    def run(self, stop: threading.Event) -> None:
        self._clear_stale_tasks()
        try:
            self._adopt()
        except Exception:  # logged; such a job is resumed by the next ticks
            log.exception("the federated runner could not take over the running jobs")
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # logged; the next tick tries again
                log.exception("the federated runner failed a step")
            stop.wait(self._poll_s)

    def tick(self) -> None:
        active = self._jobs.active()
        live = {job.id for job in active}
        for job_id in [j for j in self._followed if j not in live]:  # cancelled meanwhile
            self._stop_run(job_id, self._followed.pop(job_id))
            self._set_tasks(job_id, {})
        going = [job for job in active if job.state in ("running", "evaluating")]
        for job in going:
            self._follow(job)
        if not going:
            pending = [job for job in active if job.state == "pending"]
            if pending:
                self._start(pending[0])

    # -- starting -------------------------------------------------------------------------

    def _directory(self, job_id: str) -> Path:
        return self._jobs_dir / job_id

    def _plan(self, job: FederatedJobView, first_round: int = 1) -> RunPlan:
        spec = job.spec
        dp = spec.differential_privacy
        return RunPlan(
            job_id=job.id,
            output_dir=str(self._directory(job.id)),
            base_gguf=str(self._services.models.blob_path(job.model.sha256)),
            agents=tuple(p.agent_id for p in job.participants),
            rounds=spec.rounds,
            first_round=first_round,
            initial_adapter=(
                str(round_file(self._directory(job.id), first_round - 1, "npz"))
                if first_round > 1
                else ""
            ),
            min_participants=job.min_participants,
            participant_wait_s=float(spec.participant_wait_s),
            aggregation=spec.aggregation,
            rank=spec.lora.rank,
            alpha=round(spec.lora.alpha),
            targets=spec.lora.targets,
            learning_rate=spec.learning_rate,
            local_steps=spec.local_steps,
            batch_size=spec.batch_size,
            max_seq_len=spec.max_seq_len,
            differential_privacy=(
                DifferentialPrivacy(dp.noise_multiplier, dp.clipping_norm) if dp else None
            ),
        )

    def _start(self, job: FederatedJobView) -> None:
        directory = self._directory(job.id)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        plan = self._plan(job)
        (directory / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
        self._set_tasks(job.id, {p.agent_id: self._task(job, p.dataset) for p in job.participants})
        self._link.ensure_running()
        run_id = self._link.start_run(directory)
        self._followed[job.id] = run_id
        self._jobs.mark_running(job.id, plan.first_round, flower_run_id=run_id)
        log.info("federated job %s: Flower run %d started", job.id, run_id)

    def _task(self, job: FederatedJobView, dataset: str) -> FederatedTask:
        return FederatedTask(
            job_id=job.id,
            dataset=dataset,
            base_sha256=job.model.sha256,
            fleet_port=self._fleet_port,
            threads=job.spec.threads,
            nice=job.spec.nice,
        )

    def _set_tasks(self, job_id: str, tasks: Mapping[str, FederatedTask]) -> None:
        """The job's task at exactly the agents of `tasks` (agent id -> task), taken back from
        its other participants; other jobs' tasks are kept."""
        job = self._job(job_id)
        agents = {p.agent_id for p in job.participants} if job is not None else set()
        with self._services.db.session() as session:
            for agent_id in sorted(agents | set(tasks)):
                try:
                    current = self._services.desired.current(agent_id, session=session)
                except NotFound:
                    continue
                others = [t for t in current.federated_tasks if t.job_id != job_id]
                wanted = others + ([tasks[agent_id]] if agent_id in tasks else [])
                if wanted != list(current.federated_tasks):
                    self._services.desired.set_federated_tasks(
                        session, agent_id, wanted, actor=ACTOR
                    )
            session.commit()

    def _clear_stale_tasks(self) -> None:
        """Tasks of jobs that ended while the control plane was down are taken back."""
        live = {job.id for job in self._jobs.active()}
        with self._services.db.session() as session:
            for agent in self._services.fleet.list():
                current = self._services.desired.current(agent.id, session=session)
                kept = [t for t in current.federated_tasks if t.job_id in live]
                if len(kept) != len(current.federated_tasks):
                    self._services.desired.set_federated_tasks(session, agent.id, kept, actor=ACTOR)
            session.commit()

    def _job(self, job_id: str) -> FederatedJobView | None:
        try:
            return self._jobs.get(job_id)
        except NotFound:
            return None

    def _adopt(self) -> None:
        """Jobs that were running when the control plane stopped: their ServerApp died with
        the SuperLink it ran under, so each goes on in a new run from its last finished round
        (the job's directory keeps every round's aggregate)."""
        for job in self._jobs.active():
            if job.state == "pending":
                continue
            old = _run_id(job)
            if old is not None:
                self._link.ensure_running()
                self._stop_run(job.id, old)  # the SuperLink's database may still call it running
            directory = self._directory(job.id)
            if (directory / RESULT_FILE).exists():
                continue  # it ended meanwhile: the first tick reads the result
            self._resume(job, self._record_rounds(job, directory))

    # -- following ------------------------------------------------------------------------

    def _follow(self, job: FederatedJobView) -> None:
        directory = self._directory(job.id)
        recorded = self._record_rounds(job, directory)
        result = read_json(directory / RESULT_FILE)
        if result is not None:
            self._followed.pop(job.id, None)
            if result.get("state") == "succeeded":
                self._finish(job, directory)
            else:
                self._fail(job, str(result.get("reason", "the Flower run failed")))
            return
        if recorded >= job.spec.rounds and job.state == "running":
            self._jobs.mark_evaluating(job.id)
        run_id = self._followed.get(job.id) or _run_id(job)
        if run_id is None or not self._run_finished(run_id):
            if run_id is not None:
                self._followed[job.id] = run_id
            return
        if (directory / RESULT_FILE).exists():
            return  # written just before the run finished: the next tick reads it
        # The run ended without a result: the SuperLink (or the control plane) restarted.
        self._resume(job, recorded)

    def _run_finished(self, run_id: int) -> bool:
        self._link.ensure_running()
        try:
            status = str(self._link.run_status(run_id).get("status", ""))
        except SuperLinkError as exc:
            log.warning("Flower run %d: %s", run_id, exc)
            return True
        return status.startswith("finished")

    def _resume(self, job: FederatedJobView, recorded: int) -> None:
        count = self._resumes.get(job.id, 0) + 1
        self._resumes[job.id] = count
        if count > MAX_RESUMES:
            self._fail(job, f"the Flower run ended without a result {count} times")
            return
        directory = self._directory(job.id)
        plan = self._plan(job, first_round=recorded + 1)
        (directory / PLAN_FILE).write_text(plan.to_json(), encoding="utf-8")
        # The relay's port may have changed with a restart: the agents get it anew.
        self._set_tasks(job.id, {p.agent_id: self._task(job, p.dataset) for p in job.participants})
        self._link.ensure_running()
        run_id = self._link.start_run(directory)
        self._followed[job.id] = run_id
        if job.state == "running":  # past the last round, the new run only evaluates
            self._jobs.mark_running(
                job.id, min(recorded + 1, job.spec.rounds), flower_run_id=run_id
            )
        log.info(
            "federated job %s: resumed at round %d (Flower run %d)", job.id, recorded + 1, run_id
        )

    def _record_rounds(self, job: FederatedJobView, directory: Path) -> int:
        """Stores each round the ServerApp wrote (once per process; storing is idempotent);
        the number of the last finished round."""
        last = 0
        for number in range(1, job.spec.rounds + 1):
            report = read_json(round_file(directory, number, "json"))
            if report is None:
                break
            if (job.id, number) not in self._recorded:
                self._jobs.record_round(job.id, _round_report(report))
                self._recorded.add((job.id, number))
            last = number
        if job.state == "running" and last < job.spec.rounds and job.current_round < last + 1:
            self._jobs.mark_running(job.id, last + 1)
        return last

    # -- ending ---------------------------------------------------------------------------

    def _finish(self, job: FederatedJobView, directory: Path) -> None:
        evaluation = read_evaluation(directory)
        if job.state == "running":
            self._jobs.mark_evaluating(job.id)
        self._jobs.record_round(job.id, evaluation.report(job.spec.rounds))
        gate = job.spec.min_heldout_loss_drop_pct
        if not evaluation.sites:
            self._fail(job, f"no site evaluated the adapter ({evaluation.failures()})")
            return
        drop = evaluation.drop_pct()
        if drop < gate:
            self._fail(
                job,
                f"the evaluation gate was not passed: held-out loss dropped {drop:.2f} % "
                f"(at least {gate:g} % asked); the adapter is kept in {directory / FINAL_ADAPTER}",
            )
            return
        name = job.spec.adapter_name or f"fl-{job.id[:8]}"
        path = export_adapter(
            job, directory, self._services.models.blob_path(job.model.sha256), drop
        )
        adapter = self._services.models.import_file(path, name=name, actor=ACTOR)
        deployed = self._deploy(job, name, adapter.ref)
        metrics: dict[str, Any] = {
            "heldout_loss_drop_pct": drop,
            "sites": evaluation.sites,
            "adapter": adapter.ref,
            "deployed_to": deployed,
        }
        self._set_tasks(job.id, {})
        try:
            self._jobs.succeed(job.id, adapter.id, metrics)
        except Conflict:  # cancelled at this very moment: the adapter stays registered
            log.info("federated job %s ended before it could succeed", job.id)

    def _deploy(self, job: FederatedJobView, name: str, ref: str) -> list[str]:
        """Serves the adapter wherever the base model is assigned (with `deploy_alias`: only
        under that alias): each such assignment gets it among its adapters."""
        done = []
        for assignment in self._services.assignments.list():
            if assignment.model.id != job.model.id:
                continue
            if job.spec.deploy_alias and assignment.alias != job.spec.deploy_alias:
                continue
            adapters = {a.name: a.adapter.ref for a in assignment.adapters}
            adapters[name] = ref
            target: str | Mapping[str, str] = assignment.target
            if assignment.target_kind == "selector":
                target = parse_selector(assignment.target)
            self._services.assignments.assign(
                assignment.model.ref,
                target_kind=assignment.target_kind,
                target=target,
                parameters=ServingParameters(
                    alias=assignment.alias,
                    context_length=assignment.context_length,
                    gpu_layers=assignment.gpu_layers,
                    threads=assignment.threads,
                    queue_depth=assignment.queue_depth,
                    adapters=adapters,
                ),
                actor=ACTOR,
            )
            done.append(
                f"{assignment.target_kind}:{assignment.target} as {assignment.alias}:{name}"
            )
        return done

    def _fail(self, job: FederatedJobView, reason: str) -> None:
        self._set_tasks(job.id, {})
        with contextlib.suppress(Conflict):  # cancelled at this very moment
            self._jobs.fail(job.id, reason)
        log.info("federated job %s failed: %s", job.id, reason)

    def _stop_run(self, job_id: str, run_id: int) -> None:
        try:
            self._link.stop_run(run_id)
        except SuperLinkError as exc:  # already finished, or the SuperLink restarted
            log.info("federated job %s: stopping Flower run %d: %s", job_id, run_id, exc)


def _run_id(job: FederatedJobView) -> int | None:
    try:
        return int(job.flower_run_id) if job.flower_run_id else None
    except ValueError:
        return None


def _time(value: object) -> datetime:
    return datetime.fromtimestamp(float(value), UTC) if isinstance(value, int | float) else _now()


def _round_report(report: Mapping[str, Any]) -> RoundReport:
    sites = {
        agent: {
            "train_loss": values.get("train-loss-last"),
            "examples": int(values.get("num-examples", 0)),
        }
        for agent, values in report.get("sites", {}).items()
    }
    return RoundReport(
        round=int(report["round"]),
        phase="train",
        started_at=_time(report.get("started_at")),
        finished_at=_time(report.get("finished_at")),
        participants=tuple(report.get("participants", ())),
        dropped=dict(report.get("dropped", {})),
        sites=sites,
        bytes_down=int(report.get("bytes_down", 0)),
        bytes_up=int(report.get("bytes_up", 0)),
        wall_s=float(report.get("wall_s", 0.0)),
        train_s=float(report.get("train_s", 0.0)),
        aggregate={k: v for k, v in report.items() if k in ("load_s",)},
    )
