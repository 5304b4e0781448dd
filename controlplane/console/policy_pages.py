"""The routing policy page: the live version, an editor that validates and publishes, explain."""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from typing import Any

from litestar import Request, get, post
from litestar.params import Parameter
from litestar.response import Response

from common.errors import InvalidArgument
from common.policy.document import MAX_DOCUMENT_BYTES, PolicyError, PolicyProblem, parse_policy
from common.policy.routing import Caller, PolicyEngine
from controlplane.api.auth_guard import Access
from controlplane.console.errors import BadForm
from controlplane.console.gate import ConsoleGate, field
from controlplane.console.rendering import Renderer
from controlplane.console.sessions import ConsoleLogin
from controlplane.policy_explain import (
    MAX_MODEL_CHARS,
    MAX_NAME_CHARS,
    ExplainRequest,
    decision_view,
    explain,
    explanation_text,
)
from controlplane.policy_store import PolicyStore, PolicyVersion, validate
from controlplane.services import ControlPlaneServices

POLICY_PATH = "/console/policy"
SOURCE = "editor"
MAX_PROMPT_CHARS = 64 * 1024
MAX_POLICY_FORM_BYTES = 4 * MAX_DOCUMENT_BYTES  # URL-encoding may triple a document
MAX_EXPLAIN_FORM_BYTES = 4 * MAX_PROMPT_CHARS
VERSIONS_PATH = f"{POLICY_PATH}/versions"
RECENT_VERSIONS = 10  # on the policy page
VERSIONS_PER_PAGE = 100  # on the history page
MAX_VERSION = 2**31 - 1


@dataclass(frozen=True)
class EditorState:
    """What the editor shows after an action."""

    document: str
    problems: tuple[PolicyProblem, ...] = ()
    warnings: tuple[PolicyProblem, ...] = ()
    notice: str = ""
    diff: tuple[tuple[str, str], ...] = ()  # (added | removed | context | hunk, line)


MAX_DIFF_LINES = 2000


def diff_lines(live: str, draft: str) -> tuple[tuple[str, str], ...]:
    """The draft against the live document, as unified-diff lines with their kind."""
    lines = difflib.unified_diff(
        live.splitlines(), draft.splitlines(), "live", "draft", lineterm="", n=2
    )
    kinds = {"+": "added", "-": "removed", "@": "hunk"}
    shown = [(kinds.get(line[:1], "context"), line) for line in lines][2:]  # no file header
    return tuple(shown[:MAX_DIFF_LINES])


def _explain(store: PolicyStore, wanted: ExplainRequest) -> list[str]:
    live = store.live()
    engine = PolicyEngine(parse_policy(live.document) if live is not None else None)
    return explanation_text(decision_view(explain(engine, wanted)))


def version_number(text: str) -> int:
    """A version number from the address, else InvalidArgument (a 400 page saying so)."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_VERSION:
        raise InvalidArgument(f"a policy version is a whole number from 1 to {MAX_VERSION}")
    return int(text)


def policy_routes(
    services: ControlPlaneServices, gate: ConsoleGate, renderer: Renderer
) -> list[Any]:
    store = services.policies

    async def page(
        login: ConsoleLogin,
        *,
        editor: EditorState | None = None,
        explanation: tuple[str, ...] = (),
        explain_fields: dict[str, str] | None = None,
        status: int = 200,
    ) -> Response[str]:
        live: PolicyVersion | None = await asyncio.to_thread(store.live)
        recent = await asyncio.to_thread(store.versions, RECENT_VERSIONS + 1)
        if editor is None:
            editor = EditorState(document=live.document if live is not None else "")
        return renderer.page(
            "policy.html",
            status=status,
            login=login,
            live=live,
            recent=recent[:RECENT_VERSIONS],
            more_versions=len(recent) > RECENT_VERSIONS,
            editor=editor,
            can_publish=login.principal.role.is_admin(),
            explanation=explanation,
            explain=explain_fields or {"prompt": "", "role": "", "team": "", "model": ""},
        )

    @get(POLICY_PATH, include_in_schema=False)
    async def show_policy(request: Request[Any, Any, Any]) -> Response[Any]:
        return await page(await gate.login(request))

    @post(
        f"{POLICY_PATH}/edit",
        include_in_schema=False,
        request_max_body_size=MAX_POLICY_FORM_BYTES,
    )
    async def edit_policy(request: Request[Any, Any, Any]) -> Response[Any]:
        """`action=validate` checks the document; `action=publish` (admins) applies it."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        action = field(fields, "action", "The action", max_chars=16)
        if action not in ("validate", "publish"):
            raise BadForm("The action must be validate or publish.")
        if action == "publish":
            await gate.require(login, Access.ADMIN, "policy.apply", "policy")
        document = field(
            fields, "document", "The policy", max_chars=MAX_DOCUMENT_BYTES, multiline=True
        )
        try:
            if action == "validate":
                checked = await asyncio.to_thread(validate, document, SOURCE)
                live = await asyncio.to_thread(store.live)
                changes = diff_lines(live.document if live is not None else "", document)
                same = "the same as the live version; " if live is not None and not changes else ""
                notice = f"Valid (digest {checked.policy.digest[:12]}…); {same}not published."
                editor = EditorState(
                    document, warnings=tuple(checked.warnings), notice=notice, diff=changes
                )
            else:
                name = login.principal.name
                applied = await asyncio.to_thread(
                    lambda: store.apply(document, actor=name, source=SOURCE)
                )
                version = applied.policy.version
                notice = (
                    f"Published as version {version}."
                    if applied.created
                    else f"Unchanged: version {version} is already this policy."
                )
                editor = EditorState(document, warnings=applied.warnings, notice=notice)
        except PolicyError as error:
            return await page(
                login, editor=EditorState(document, problems=tuple(error.problems)), status=422
            )
        return await page(login, editor=editor)

    @post(
        f"{POLICY_PATH}/explain",
        include_in_schema=False,
        request_max_body_size=MAX_EXPLAIN_FORM_BYTES,
    )
    async def explain_prompt(request: Request[Any, Any, Any]) -> Response[Any]:
        """How the live policy classifies and routes a sample prompt (any role)."""
        login = await gate.login(request)
        fields = await gate.form(request, login)
        values = {
            "prompt": field(
                fields, "prompt", "The prompt", max_chars=MAX_PROMPT_CHARS, multiline=True
            ),
            "role": field(fields, "role", "The role", max_chars=MAX_NAME_CHARS),
            "team": field(fields, "team", "The team", max_chars=MAX_NAME_CHARS, required=False),
            "model": field(fields, "model", "The model", max_chars=MAX_MODEL_CHARS, required=False),
        }
        wanted = ExplainRequest(
            parts=(values["prompt"],),
            caller=Caller(role=values["role"], team=values["team"], declared_level=None),
            model=values["model"],
        )
        lines = await asyncio.to_thread(_explain, store, wanted)
        return await page(login, explanation=tuple(lines), explain_fields=values)

    # Reading the history is open to every role, as GET /api/v1/policy/versions is (Access.READ).
    @get(VERSIONS_PATH, include_in_schema=False)
    async def list_versions(
        request: Request[Any, Any, Any],
        offset: int = Parameter(default=0, ge=0, le=MAX_VERSION),
    ) -> Response[Any]:
        """Every applied version, newest first, a page of them at a time."""
        login = await gate.login(request)
        versions = await asyncio.to_thread(store.versions, VERSIONS_PER_PAGE + 1, offset)
        live = await asyncio.to_thread(store.live)
        return renderer.page(
            "policy_versions.html",
            login=login,
            versions=versions[:VERSIONS_PER_PAGE],
            live_version=live.version if live is not None else None,
            offset=offset,
            newer=max(offset - VERSIONS_PER_PAGE, 0) if offset else None,
            older=offset + VERSIONS_PER_PAGE if len(versions) > VERSIONS_PER_PAGE else None,
        )

    @get(f"{VERSIONS_PATH}/{{version:str}}", include_in_schema=False)
    async def show_version(
        request: Request[Any, Any, Any], version: str = Parameter(max_length=12)
    ) -> Response[Any]:
        """One version's document as it was applied, and how the live version differs."""
        login = await gate.login(request)
        number = version_number(version)
        shown = await asyncio.to_thread(store.get, number)  # NotFound: a 404 page
        live = await asyncio.to_thread(store.live)
        changes = diff_lines(live.document, shown.document) if live is not None else ()
        return renderer.page(
            "policy_version.html",
            login=login,
            shown=shown,
            live=live,
            diff=changes,
        )

    return [show_policy, edit_policy, explain_prompt, list_versions, show_version]
