"""Routes under /api/v1/fl: federated fine-tuning jobs (create, list, show with rounds, cancel)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter, QueryParameter

from controlplane.api.auth_guard import Access, access
from controlplane.auth import Principal
from controlplane.federated.job_spec import parse_job_spec
from controlplane.federated.jobs import MAX_LIST
from controlplane.services import ControlPlaneServices

JOB = "fl_job:{job_id}"
MAX_JOB_ID = 64


def federated_routes(services: ControlPlaneServices) -> list[Any]:
    jobs = services.federated_jobs
    job_id_param = Parameter(max_length=MAX_JOB_ID, description="the job's id (a UUID)")

    @post("/fl/jobs", opt=access(Access.CHANGE, "fl_job.create", "fl_jobs"), status_code=201)
    async def create_job(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Starts a federated LoRA fine-tuning job (see docs/federated.md for the body). Its
        participants are planned now: agents that cannot take part are listed in `skipped`
        with the reason; fewer than `min_participants` left is a 400 naming them."""
        spec = parse_job_spec(await request.body())
        return await asyncio.to_thread(lambda: jobs.create(spec, actor=principal.name).to_json())

    @get("/fl/jobs", opt=access(Access.READ, "fl_job.list"))
    async def list_jobs(
        # `state` is a name Litestar reserves for its own kwarg.
        job_state: Annotated[
            str | None,
            QueryParameter(name="state", max_length=16, description="only jobs in this state"),
        ] = None,
        limit: int = Parameter(default=100, ge=1, le=MAX_LIST),
    ) -> dict[str, Any]:
        """Jobs, newest first."""

        def load() -> list[dict[str, Any]]:
            return [j.to_json() for j in jobs.list(state=job_state, limit=limit)]

        return {"jobs": await asyncio.to_thread(load)}

    @get("/fl/jobs/{job_id:str}", opt=access(Access.READ, "fl_job.get", JOB))
    async def get_job(job_id: str = job_id_param) -> dict[str, Any]:
        """The job with its rounds (each phase: participants, dropped sites, per-site losses,
        bytes moved, times)."""

        def load() -> dict[str, Any]:
            job = jobs.get(job_id)
            return {**job.to_json(), "round_reports": [r.to_json() for r in jobs.rounds(job_id)]}

        return await asyncio.to_thread(load)

    @post(
        "/fl/jobs/{job_id:str}/cancel",
        opt=access(Access.CHANGE, "fl_job.cancel", JOB),
        status_code=200,
    )
    async def cancel_job(
        principal: NamedDependency[Principal], job_id: str = job_id_param
    ) -> dict[str, Any]:
        """Cancels a job that has not ended; 409 for one that has."""
        return await asyncio.to_thread(lambda: jobs.cancel(job_id, actor=principal.name).to_json())

    return [create_job, list_jobs, get_job, cancel_job]
