"""Routes for model assignments (/api/v1/assignments) and rollout status (/api/v1/rollouts)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict
from typing import Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from common.errors import InvalidArgument
from common.json_body import parse_json_object
from controlplane.api.auth_guard import Access, access
from controlplane.api.bodies import GPU_LAYERS_RANGE, reject_unknown
from controlplane.api.views import iso
from controlplane.auth import Principal
from controlplane.desired_state_checks import MAX_ADAPTERS
from controlplane.model_assignments import AssignmentView, ModelAssignments, ServingParameters
from controlplane.rollouts import rollout_status
from controlplane.services import ControlPlaneServices

ASSIGNMENT = "assignment:{assignment_id}"
_TARGETS = ("agent", "site", "selector")
_PARAMETERS = {
    "context_length": (1, 1_048_576),
    "gpu_layers": GPU_LAYERS_RANGE,
    "threads": (0, 1024),
    "queue_depth": (0, 1024),
}
MAX_REF = 200


def assignment_view(view: AssignmentView) -> dict[str, Any]:
    return {
        "id": view.id,
        "model": {
            "name": view.model.name,
            "version": view.model.version,
            "digest": view.model.digest,
            "size_bytes": view.model.size_bytes,
        },
        "target": {"kind": view.target_kind, "value": view.target},
        "alias": view.alias,
        "adapters": [
            {
                "name": a.name,
                "ref": a.adapter.ref,
                "sha256": a.adapter.sha256,
                "size_bytes": a.adapter.size_bytes,
            }
            for a in view.adapters
        ],
        "context_length": view.context_length,
        "gpu_layers": view.gpu_layers,
        "threads": view.threads,
        "queue_depth": view.queue_depth,
        "agents": list(view.agents),
        "fit_unchecked": list(view.fit_unchecked),
        "created_at": iso(view.created_at),
        "created_by": view.created_by,
    }


class _Object(dict[str, Any]):
    """A JSON object that remembers the keys it was given more than once."""

    repeated: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    document = _Object(pairs)
    if len(document) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        document.repeated = tuple(sorted(key for key, n in counts.items() if n > 1))
    return document


def _adapters(body: bytes, value: object) -> dict[str, str]:
    """'adapters': {"<name>": "<registry reference>"}; the names are checked by the service."""
    if not isinstance(value, dict):
        raise InvalidArgument("'adapters' must be an object of adapter names to model references")
    if len(value) > MAX_ADAPTERS:
        raise InvalidArgument(f"'adapters' has more than {MAX_ADAPTERS} entries")
    # json.loads keeps the last of repeated keys: read again to refuse a name given twice.
    repeated = json.loads(body, object_pairs_hook=_object).get("adapters", _Object()).repeated
    if repeated:
        names = ", ".join(repr(name[:63]) for name in repeated[:5])
        raise InvalidArgument(f"'adapters' names adapter(s) more than once: {names}")
    for name, ref in value.items():
        if not isinstance(ref, str) or not 1 <= len(ref) <= MAX_REF:
            raise InvalidArgument(
                f"'adapters': adapter {name[:63]!r} must name a registered adapter "
                "(name, name@version or sha256:<hex>)"
            )
    return dict(value)


def assignment_body(body: bytes) -> tuple[str, str, str | dict[str, str], ServingParameters]:
    """{"model", exactly one of "agent"/"site"/"selector", "alias"?, "adapters"?, serving
    parameters?}"""
    document = parse_json_object(body)
    reject_unknown(document, {"model", "alias", "adapters", *_TARGETS, *_PARAMETERS})
    model = document.get("model")
    if not isinstance(model, str) or not 1 <= len(model) <= MAX_REF:
        raise InvalidArgument("'model' is required: a name, name@version or sha256:<hex>")
    given = [t for t in _TARGETS if t in document]
    if len(given) != 1:
        raise InvalidArgument("give exactly one of 'agent', 'site' or 'selector'")
    kind = given[0]
    target = document[kind]
    if kind == "selector":
        if not isinstance(target, dict) or not all(isinstance(v, str) for v in target.values()):
            raise InvalidArgument("'selector' must be an object of label keys to values")
    elif not isinstance(target, str):
        raise InvalidArgument(f"'{kind}' must be a string")
    alias = document.get("alias")
    if alias is not None and not isinstance(alias, str):
        raise InvalidArgument("'alias' must be a string")
    numbers: dict[str, int] = {}
    for name, (low, high) in _PARAMETERS.items():
        if document.get(name) is None:
            continue
        value = document[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"'{name}' must be an integer")
        if not low <= value <= high:
            raise InvalidArgument(f"'{name}' must be between {low} and {high}, got {value}")
        numbers[name] = value
    adapters = {} if document.get("adapters") is None else _adapters(body, document["adapters"])
    return model, kind, target, ServingParameters(alias=alias, adapters=adapters, **numbers)


def assignment_routes(services: ControlPlaneServices, assignments: ModelAssignments) -> list[Any]:
    @post("/assignments", opt=access(Access.CHANGE, "model.assign", "assignments"), status_code=201)
    async def create_assignment(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Assigns a registry model, with LoRA adapters by name, to an agent, a site or a label
        selector (replacing one of the same target and alias). Refused with 422 and the numbers
        when it cannot fit."""
        model, kind, target, parameters = assignment_body(await request.body())
        view = await asyncio.to_thread(
            assignments.assign,
            model,
            target_kind=kind,
            target=target,
            parameters=parameters,
            actor=principal.name,
        )
        return assignment_view(view)

    @get("/assignments", opt=access(Access.READ, "model.assignments"))
    async def list_assignments() -> dict[str, Any]:
        """Every assignment, with the agents it reaches now."""
        views = await asyncio.to_thread(assignments.list)
        return {"assignments": [assignment_view(v) for v in views]}

    @delete(
        "/assignments/{assignment_id:int}",
        opt=access(Access.CHANGE, "model.unassign", ASSIGNMENT),
        status_code=204,
    )
    async def delete_assignment(
        principal: NamedDependency[Principal],
        assignment_id: int = Parameter(ge=1, le=2**63 - 1),
    ) -> None:
        """Removes an assignment; its agents stop serving the model (unless another matches)."""
        await asyncio.to_thread(assignments.unassign, assignment_id, actor=principal.name)

    @get("/rollouts", opt=access(Access.READ, "model.rollouts"))
    async def list_rollouts() -> dict[str, Any]:
        """Per assignment and agent: pending, downloading (bytes, rate), verifying, loading,
        ready, failed (reason; the version still serving), or superseded."""
        rows = await asyncio.to_thread(rollout_status, services.db, services.desired, assignments)
        return {"rollouts": [asdict(row) for row in rows]}

    return [create_assignment, list_assignments, delete_assignment, list_rollouts]
