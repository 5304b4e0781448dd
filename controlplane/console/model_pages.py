"""The models page: the registry, assignments (operators assign and unassign) and rollouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.response import Response

from common.errors import Conflict, InsufficientResources, InvalidArgument, NotFound
from controlplane.api.auth_guard import Access
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer, redirect
from controlplane.console.sessions import ConsoleLogin
from controlplane.model_assignments import TARGET_KINDS, AssignmentView, ServingParameters
from controlplane.model_registry import RegisteredModelView
from controlplane.model_store import BlobTooLarge
from controlplane.rollouts import RolloutRow, rollout_status
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings

MODELS_PATH = "/console/models"
ROLLOUTS_PATH = f"{MODELS_PATH}/rollouts"
MAX_FORM_BYTES = 16 * 1024
UPLOAD_TYPE = "application/octet-stream"
MAX_REF_CHARS = 200
MAX_TARGET_CHARS = 1000
MAX_CONTEXT_LENGTH = 1_048_576
_STATUS = {InvalidArgument: 400, NotFound: 404, Conflict: 409, InsufficientResources: 422}


@dataclass(frozen=True)
class ModelsView:
    models: tuple[RegisteredModelView, ...]
    assignments: tuple[AssignmentView, ...]
    rollouts: tuple[RolloutRow, ...]


def models_view(services: ControlPlaneServices) -> ModelsView:
    """Blocking: call in a thread."""
    return ModelsView(
        models=tuple(services.models.list()),
        assignments=tuple(services.assignments.list()),
        rollouts=tuple(rollout_status(services.db, services.desired, services.assignments)),
    )


def progress(row: RolloutRow) -> str:
    if not row.bytes_total or row.state not in ("downloading", "verifying"):
        return ""
    rate = f" at {row.rate_bytes_per_s / 1e6:.1f} MB/s" if row.rate_bytes_per_s else ""
    return f"{100 * row.bytes_done / row.bytes_total:.0f} %{rate}"


def _context_length(text: str) -> int:
    if not text:
        return ServingParameters().context_length
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_CONTEXT_LENGTH:
        raise BadForm(f"The context length must be a number from 1 to {MAX_CONTEXT_LENGTH}.")
    return int(text)


def model_routes(
    services: ControlPlaneServices,
    gate: ConsoleGate,
    renderer: Renderer,
    settings: ConsoleSettings,
) -> list[Any]:
    assignments = services.assignments

    async def page(
        login: ConsoleLogin,
        *,
        error: str = "",
        notice: str = "",
        status: int = 200,
        form: dict[str, str] | None = None,
    ) -> Response[str]:
        view = await asyncio.to_thread(models_view, services)
        return renderer.page(
            "models.html",
            status=status,
            login=login,
            view=view,
            can_assign=login.principal.role.can_change(),
            target_kinds=TARGET_KINDS,
            progress=progress,
            rollouts_path=ROLLOUTS_PATH,
            refresh_seconds=settings.refresh_seconds,
            error=error,
            notice=notice,
            form=form or {"model": "", "kind": "site", "target": "", "alias": "", "context": ""},
        )

    @get(MODELS_PATH, include_in_schema=False)
    async def show_models(request: Request[Any, Any, Any]) -> Response[Any]:
        return await page(await gate.login(request))

    @get(ROLLOUTS_PATH, include_in_schema=False)
    async def rollouts_fragment(request: Request[Any, Any, Any]) -> Response[Any]:
        """The rollouts table alone, polled by console.js while the page is open."""
        await gate.login(request)
        view = await asyncio.to_thread(models_view, services)
        return renderer.page("rollouts_table.html", view=view, progress=progress)

    @post(f"{MODELS_PATH}/assign", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def assign_model(request: Request[Any, Any, Any]) -> Response[Any]:
        """Assigns a registry model to an agent, a site or a label selector (operators)."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        await gate.require(login, Access.CHANGE, "model.assign", "assignments")
        form = {
            "model": field(fields, "model", "The model", max_chars=MAX_REF_CHARS),
            "kind": field(fields, "kind", "The target kind", max_chars=16),
            "target": field(fields, "target", "The target", max_chars=MAX_TARGET_CHARS),
            "alias": field(fields, "alias", "The alias", max_chars=63, required=False),
            "context": field(fields, "context", "The context length", max_chars=8, required=False),
        }
        if form["kind"] not in TARGET_KINDS:
            raise BadForm(f"The target kind must be one of {', '.join(TARGET_KINDS)}.")
        parameters = ServingParameters(
            alias=form["alias"] or None, context_length=_context_length(form["context"])
        )
        try:
            await asyncio.to_thread(
                lambda: assignments.assign(
                    form["model"],
                    target_kind=form["kind"],
                    target=form["target"],
                    parameters=parameters,
                    actor=login.principal.name,
                )
            )
        except (InvalidArgument, NotFound, InsufficientResources) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await page(login, error=str(exc), status=status, form=form)
        return redirect(MODELS_PATH)

    @post(f"{MODELS_PATH}/unassign", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def unassign_model(request: Request[Any, Any, Any]) -> Response[Any]:
        """Removes an assignment (operators)."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        await gate.require(login, Access.CHANGE, "model.unassign", "assignments")
        text = field(fields, "assignment_id", "The assignment", max_chars=19)
        if not text.isascii() or not text.isdigit() or int(text) < 1:
            raise BadForm("The assignment must be given by its number.")
        await asyncio.to_thread(lambda: assignments.unassign(int(text), actor=login.principal.name))
        return redirect(MODELS_PATH)

    @post(f"{MODELS_PATH}/delete", include_in_schema=False, request_max_body_size=MAX_FORM_BYTES)
    async def delete_model(request: Request[Any, Any, Any]) -> Response[Any]:
        """Deletes a registry model or adapter version (operators and admins, as DELETE
        /api/v1/models/{ref}); refused with the registry's reason while it is assigned."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        ref = field(fields, "model", "The model", max_chars=MAX_REF_CHARS)
        await gate.require(login, Access.CHANGE, "model.delete", f"model:{ref}")
        try:
            await asyncio.to_thread(lambda: services.models.delete(ref, actor=login.principal.name))
        except (InvalidArgument, NotFound, Conflict) as exc:
            status = next(code for kind, code in _STATUS.items() if isinstance(exc, kind))
            return await page(login, error=str(exc), status=status)
        return await page(login, notice=f"Deleted {ref}.")

    @post(
        f"{MODELS_PATH}/import",
        include_in_schema=False,
        request_max_body_size=services.models.max_bytes,
    )
    async def import_model(request: Request[Any, Any, Any]) -> Response[Any]:
        """A GGUF file as the raw body (console.js streams the chosen file), the CSRF token in
        X-CSRF-Token, `name` and `filename` in the query; operators and admins."""
        login = await gate.login(request)
        gate.check_header_token(request, login)
        await gate.require(login, Access.CHANGE, "model.import", "models")
        if request.content_type[0] != UPLOAD_TYPE:
            raise BadForm("Choose a model file; uploading it needs JavaScript in the browser.")
        query = {k: request.query_params.get(k, "") for k in ("name", "filename")}
        name = field(query, "name", "The name", max_chars=63, required=False) or None
        filename = field(query, "filename", "The file name", max_chars=255, required=False)
        try:
            model = await services.models.import_stream_async(
                _blocks(request), name=name, filename=filename or None, actor=login.principal.name
            )
        except BlobTooLarge as exc:
            return await page(login, error=str(exc), status=413)
        except InvalidArgument as exc:
            return await page(login, error=str(exc), status=400)
        return await page(login, notice=f"Imported {model.ref} (sha256:{model.sha256[:12]}…).")

    return [
        show_models,
        rollouts_fragment,
        assign_model,
        unassign_model,
        delete_model,
        import_model,
    ]


async def _blocks(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    async for block in request.stream():
        if block:
            yield block
