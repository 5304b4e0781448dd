"""Federated pages: the jobs (refreshed live), one job with its rounds, start and cancel."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.response import Response

from common.errors import Conflict, InvalidArgument, NotFound
from controlplane.api.auth_guard import Access
from controlplane.console.errors import BadForm
from controlplane.console.federated_form import (
    StartForm,
    document_bytes,
    form_choices,
    job_document,
    read_start_form,
)
from controlplane.console.federated_views import job_detail, jobs_list, spec_summary
from controlplane.console.gate import ConsoleGate
from controlplane.console.rendering import Renderer, redirect
from controlplane.console.sessions import ConsoleLogin
from controlplane.federated.job_spec import MAX_SPEC_BYTES, parse_job_spec
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings

FEDERATED_PATH = "/console/federated"
JOBS_FRAGMENT_PATH = f"{FEDERATED_PATH}/jobs"
NEW_PATH = f"{FEDERATED_PATH}/new"
MAX_JOB_ID_CHARS = 64
MAX_CANCEL_FORM_BYTES = 16 * 1024
_STATUS = {InvalidArgument: 400, NotFound: 404, Conflict: 409}


def job_path(job_id: str) -> str:
    return f"{JOBS_FRAGMENT_PATH}/{job_id}"


def federated_routes(
    services: ControlPlaneServices,
    gate: ConsoleGate,
    renderer: Renderer,
    settings: ConsoleSettings,
) -> list[Any]:
    jobs = services.federated_jobs

    @get(FEDERATED_PATH, include_in_schema=False)
    async def show_jobs(request: Request[Any, Any, Any]) -> Response[Any]:
        """Every recent job, newest first; the table refreshes itself."""
        login = await gate.login(request)
        rows = await asyncio.to_thread(jobs_list, services)
        return renderer.page(
            "federated.html",
            login=login,
            rows=rows,
            can_change=login.principal.role.can_change(),
            fragment_path=JOBS_FRAGMENT_PATH,
            refresh_seconds=settings.refresh_seconds,
        )

    @get(JOBS_FRAGMENT_PATH, include_in_schema=False)
    async def jobs_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
        """The jobs table alone, polled by console.js."""
        await gate.login(request)
        rows = await asyncio.to_thread(jobs_list, services)
        return renderer.page("federated_table.html", rows=rows)

    async def job_context(login: ConsoleLogin, job_id: str) -> dict[str, Any]:
        detail = await asyncio.to_thread(job_detail, services, job_id)
        return {
            "login": login,
            "detail": detail,
            "summary": spec_summary(detail.job),
            "can_cancel": login.principal.role.can_change() and not detail.job.terminal,
            "job_path": job_path(detail.job.id),
        }

    async def job_page(
        login: ConsoleLogin, job_id: str, *, error: str = "", status: int = 200
    ) -> Response[Any]:
        context = await job_context(login, job_id)
        return renderer.page(
            "federated_job.html",
            status=status,
            error=error,
            refresh_seconds=settings.refresh_seconds,
            **context,
        )

    @get(f"{JOBS_FRAGMENT_PATH}/{{job_id:str}}", include_in_schema=False)
    async def show_job(
        request: Request[Any, Any, Any], job_id: str = Parameter(max_length=MAX_JOB_ID_CHARS)
    ) -> Response[Any]:
        """One job: its spec, participants, rounds, evaluation and train-loss chart."""
        return await job_page(await gate.login(request), job_id)

    @get(f"{JOBS_FRAGMENT_PATH}/{{job_id:str}}/live", include_in_schema=False)
    async def job_fragment(
        request: Request[Any, Any, Any], job_id: str = Parameter(max_length=MAX_JOB_ID_CHARS)
    ) -> Response[Any]:
        """The job's state, rounds and evaluation alone, polled by console.js."""
        login = await gate.login(request)
        return renderer.page("federated_job_live.html", **await job_context(login, job_id))

    @post(
        f"{JOBS_FRAGMENT_PATH}/{{job_id:str}}/cancel",
        include_in_schema=False,
        request_max_body_size=MAX_CANCEL_FORM_BYTES,
    )
    async def cancel_job(
        request: Request[Any, Any, Any], job_id: str = Parameter(max_length=MAX_JOB_ID_CHARS)
    ) -> Response[Any]:
        """Cancels an active job (operators and admins, as POST /api/v1/fl/jobs/{id}/cancel);
        a job that already ended is refused on its page."""
        login = await gate.login(request)
        await gate.form(request, login)
        await gate.require(login, Access.CHANGE, "fl_job.cancel", f"fl_job:{job_id}")
        try:
            await asyncio.to_thread(lambda: jobs.cancel(job_id, actor=login.principal.name))
        except Conflict as exc:
            return await job_page(login, job_id, error=str(exc), status=409)
        return redirect(job_path(job_id))

    async def start_page(
        login: ConsoleLogin, form: StartForm, *, error: str = "", status: int = 200
    ) -> Response[Any]:
        def load() -> tuple[list[Any], list[Any]]:
            return services.models.list(kind="model"), services.fleet.list()

        models, agents = await asyncio.to_thread(load)
        return renderer.page(
            "federated_new.html",
            status=status,
            login=login,
            can_start=login.principal.role.can_change(),
            models=models,
            agents=sorted((a for a in agents if a.revoked_at is None), key=lambda a: a.name),
            form=form,
            error=error,
            **form_choices(),
        )

    @get(NEW_PATH, include_in_schema=False)
    async def new_job(request: Request[Any, Any, Any]) -> Response[Any]:
        """The "Start job" form (operators and admins; others see why it is not there)."""
        return await start_page(await gate.login(request), StartForm())

    @post(NEW_PATH, include_in_schema=False, request_max_body_size=MAX_SPEC_BYTES)
    async def start_job(request: Request[Any, Any, Any]) -> Response[Any]:
        """Starts a job from the form: its JSON document goes through the REST API's parser
        and the job service; a refusal is shown in the form with the user's input."""
        login = await gate.login(request)
        form = await read_start_form(request, login)
        await gate.require(login, Access.CHANGE, "fl_job.create", "fl_jobs")
        try:
            spec = parse_job_spec(document_bytes(job_document(form)))
            name = login.principal.name
            job = await asyncio.to_thread(lambda: jobs.create(spec, actor=name))
        except BadForm as exc:
            return await start_page(login, form, error=exc.message, status=400)
        except (InvalidArgument, NotFound) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await start_page(login, form, error=str(exc), status=status)
        return redirect(job_path(job.id))

    return [show_jobs, jobs_fragment, show_job, job_fragment, cancel_job, new_job, start_job]
