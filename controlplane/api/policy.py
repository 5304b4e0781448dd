"""Routes under /api/v1/policy: the live routing policy, its versions, validate, apply, explain."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from litestar import Request, get, post, put
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.response import Response

from common.errors import NotFound
from common.json_body import parse_json_object
from common.policy.document import MAX_DOCUMENT_BYTES, PolicyError, parse_policy
from common.policy.routing import PolicyEngine
from controlplane.api.auth_guard import Access, access
from controlplane.api.views import iso
from controlplane.auth import Principal
from controlplane.policy_explain import (
    MAX_EXPLAIN_BODY_BYTES,
    decision_view,
    explain,
    problem_view,
    read_explain_request,
)
from controlplane.policy_store import PolicyStore, PolicyVersion, validate
from controlplane.services import ControlPlaneServices

MAX_SOURCE_CHARS = 255


def version_view(policy: PolicyVersion, *, document: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "version": policy.version,
        "digest": policy.digest,
        "created_at": iso(policy.created_at),
        "created_by": policy.created_by,
    }
    if document:
        view["document"] = policy.document
    return view


def invalid_policy(error: PolicyError) -> Response[Any]:
    """422 with every problem: {"error": {"code", "message", "problems": [...]}}."""
    return Response(
        content={
            "error": {
                "code": "invalid_policy",
                "message": str(error),
                "problems": [problem_view(p) for p in error.problems],
            }
        },
        status_code=422,
        media_type="application/json",
    )


class _LiveEngine:
    """The engine of the live policy, built once per version (detectors compile once)."""

    def __init__(self, store: PolicyStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._built: tuple[int, PolicyEngine] | None = None

    def engine(self) -> tuple[int | None, PolicyEngine]:
        live = self._store.live()
        if live is None:
            return None, PolicyEngine(None)
        with self._lock:
            if self._built is None or self._built[0] != live.version:
                self._built = (live.version, PolicyEngine(parse_policy(live.document)))
            return self._built


def policy_routes(services: ControlPlaneServices) -> list[Any]:
    store = services.policies
    live_engine = _LiveEngine(store)
    source_param = Parameter(
        default="policy",
        max_length=MAX_SOURCE_CHARS,
        description="the name problems are reported against, e.g. the file name",
    )

    @get("/policy", opt=access(Access.READ, "policy.get", "policy"))
    async def get_policy() -> dict[str, Any]:
        """The live policy: version, digest and the document as it was applied."""
        live = await asyncio.to_thread(store.live)
        if live is None:
            raise NotFound("no routing policy has been applied")
        return version_view(live)

    @get("/policy/versions", opt=access(Access.READ, "policy.list", "policy"))
    async def list_versions(
        limit: int = Parameter(default=100, ge=1, le=1000, description="versions per page"),
        offset: int = Parameter(default=0, ge=0, le=2**31, description="versions to skip"),
    ) -> dict[str, Any]:
        """Every applied version, newest first, without their documents."""
        versions = await asyncio.to_thread(store.versions, limit, offset)
        return {"versions": [version_view(v, document=False) for v in versions]}

    @get(
        "/policy/versions/{version:int}",
        opt=access(Access.READ, "policy.get_version", "policy:{version}"),
    )
    async def get_version(
        version: int = Parameter(ge=1, le=2**31, description="the version number"),
    ) -> dict[str, Any]:
        return version_view(await asyncio.to_thread(store.get, version))

    @post(
        "/policy/validate",
        opt=access(Access.READ, "policy.validate", "policy"),
        status_code=200,
        request_max_body_size=MAX_DOCUMENT_BYTES,
    )
    async def validate_policy(
        request: Request[Any, Any, Any], source: str = source_param
    ) -> Response[Any]:
        """Checks a document (the body: YAML or JSON text) without applying it: 200 with its
        digest and warnings, or 422 with every problem's path, line and column."""
        body = await request.body()
        try:
            checked = await asyncio.to_thread(validate, body, source)
        except PolicyError as error:
            return invalid_policy(error)
        content = {
            "valid": True,
            "digest": checked.policy.digest,
            "warnings": [problem_view(w) for w in checked.warnings],
        }
        return Response(content=content, status_code=200, media_type="application/json")

    @put(
        "/policy",
        opt=access(Access.ADMIN, "policy.apply", "policy"),
        request_max_body_size=MAX_DOCUMENT_BYTES,
    )
    async def apply_policy(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        source: str = source_param,
    ) -> Response[Any]:
        """Applies a document (the body): 201 with the new live version, 200 when it equals
        the live policy already; 422 with its problems when invalid (nothing changes)."""
        body = await request.body()
        try:
            applied = await asyncio.to_thread(
                lambda: store.apply(body, actor=principal.name, source=source)
            )
        except PolicyError as error:
            return invalid_policy(error)
        content = {
            **version_view(applied.policy, document=False),
            "created": applied.created,
            "warnings": [problem_view(w) for w in applied.warnings],
        }
        status = 201 if applied.created else 200
        return Response(content=content, status_code=status, media_type="application/json")

    @post(
        "/policy/explain",
        opt=access(Access.READ, "policy.explain", "policy"),
        status_code=200,
        request_max_body_size=MAX_EXPLAIN_BODY_BYTES,
    )
    async def explain_policy(request: Request[Any, Any, Any]) -> Response[Any]:
        """How the live policy (or the draft in 'document') classifies and routes a prompt:
        level and why, where detectors matched (positions, never the text), route, targets."""
        wanted = read_explain_request(parse_json_object(await request.body()))

        def run() -> dict[str, Any]:
            if wanted.document is not None:
                engine = PolicyEngine(validate(wanted.document, "document").policy)
                version: int | None = None
            else:
                version, engine = live_engine.engine()
            policy = {"version": version, "draft": wanted.document is not None}
            return {"policy": policy, **decision_view(explain(engine, wanted))}

        try:
            content = await asyncio.to_thread(run)
        except PolicyError as error:
            return invalid_policy(error)
        return Response(content=content, status_code=200, media_type="application/json")

    return [get_policy, list_versions, get_version, validate_policy, apply_policy, explain_policy]
