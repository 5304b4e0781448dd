"""Routes under /api/v1/models: import (streamed upload or host path), list, get, delete; of models
and LoRA adapters alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email.message import Message
from pathlib import Path
from typing import Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter

from common.errors import InvalidArgument
from common.json_body import parse_json_object
from controlplane.api.auth_guard import Access, access
from controlplane.api.errors import ApiError
from controlplane.api.views import iso
from controlplane.auth import Principal
from controlplane.model_registry import RegisteredModelView
from controlplane.model_store import BlobTooLarge
from controlplane.services import ControlPlaneServices

MODEL = "model:{ref}"
MAX_REF = 200  # name@version is at most 127 characters; sha256:<hex> 71
MAX_PATH_CHARS = 4096
UPLOAD_MEDIA_TYPE = "application/octet-stream"


class PayloadTooLarge(ApiError):
    status = 413
    code = "request_too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


def model_json(model: RegisteredModelView) -> dict[str, Any]:
    """A model or an adapter ("kind"); an adapter's "architecture" is the one of the models it
    is for, its "adapter_type" ("lora") and "lora_alpha" are null for models."""
    return {
        "id": model.id,
        "kind": model.kind,
        "name": model.name,
        "version": model.version,
        "digest": model.digest,
        "sha256": model.sha256,
        "size_bytes": model.size_bytes,
        "architecture": model.architecture,
        "parameters": model.parameters,
        "quantization": model.quantization,
        "context_length": model.context_length,
        "license": model.license,
        "chat_template": model.chat_template,
        "adapter_type": model.adapter_type if model.is_adapter else None,
        "lora_alpha": model.lora_alpha if model.is_adapter else None,
        "created_at": iso(model.created_at),
        "created_by": model.created_by,
    }


def _only_query(request: Request[Any, Any, Any], allowed: set[str]) -> None:
    """Refuses unknown and repeated query parameters, so a typo is not silently ignored."""
    params = request.query_params
    unknown = sorted(set(params) - allowed)
    if unknown:
        names = ", ".join(repr(name[:40]) for name in unknown[:5])
        known = ", ".join(sorted(allowed)) or "none"
        raise InvalidArgument(f"unknown query parameter {names}; allowed: {known}")
    for name in allowed:
        if len(params.getall(name, [])) > 1:
            raise InvalidArgument(f"query parameter {name!r} is given more than once")


def _upload_filename(request: Request[Any, Any, Any]) -> str | None:
    """The file name of `Content-Disposition: attachment; filename="..."`, when sent."""
    header = request.headers.get("content-disposition")
    if not header:
        return None
    message = Message()
    message["content-disposition"] = header
    filename = message.get_filename()
    return filename if isinstance(filename, str) and filename.isprintable() else None


def _check_upload_type(request: Request[Any, Any, Any]) -> None:
    media_type = request.headers.get("content-type", UPLOAD_MEDIA_TYPE)
    if media_type.split(";", 1)[0].strip().lower() != UPLOAD_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"send the model file as the raw body with Content-Type: {UPLOAD_MEDIA_TYPE}"
        )


async def _body_blocks(request: Request[Any, Any, Any]) -> AsyncIterator[bytes]:
    async for block in request.stream():
        if block:
            yield block


def _text(document: dict[str, Any], field: str, limit: int) -> str | None:
    value = document.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"'{field}' must be a string")
    if len(value) > limit:
        raise InvalidArgument(f"'{field}' is longer than {limit} characters")
    return value


def import_body(body: bytes) -> tuple[Path, str | None, str | None]:
    """`POST /models/import`: {"path", "name"?, "version"?}."""
    document = parse_json_object(body)
    unknown = sorted(set(document) - {"path", "name", "version"})
    if unknown:
        names = ", ".join(repr(name[:80]) for name in unknown[:5])
        raise InvalidArgument(f"unknown field {names}; allowed: name, path, version")
    path = _text(document, "path", MAX_PATH_CHARS)
    if not path:
        raise InvalidArgument("'path' is required: the model file's path on the control plane")
    if not path.isprintable():
        raise InvalidArgument("'path' must not contain control characters")
    if not path.startswith("/"):
        raise InvalidArgument("'path' must be an absolute path on the control plane host")
    return Path(path), _text(document, "name", 63), _text(document, "version", 63)


def model_routes(services: ControlPlaneServices) -> list[Any]:
    registry = services.models
    ref_param = Parameter(
        max_length=MAX_REF, description="name (newest version), name@version or sha256:<hex>"
    )

    @post(
        "/models",
        opt=access(Access.CHANGE, "model.import", "models"),
        status_code=201,
        request_max_body_size=registry.max_bytes,
    )
    async def upload_model(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        name: str | None = Parameter(
            default=None, max_length=63, description="the model's name (default: file name)"
        ),
        version: str | None = Parameter(
            default=None, max_length=63, description="its version (default: the next integer)"
        ),
    ) -> dict[str, Any]:
        """Imports a GGUF model or LoRA adapter sent as the raw request body
        (application/octet-stream).

        The name defaults to the file name of a `Content-Disposition` header.
        """
        _only_query(request, {"name", "version"})
        _check_upload_type(request)
        try:
            model = await registry.import_stream_async(
                _body_blocks(request),
                name=name,
                version=version,
                filename=_upload_filename(request),
                actor=principal.name,
            )
        except BlobTooLarge as exc:
            raise PayloadTooLarge(str(exc)) from None
        return model_json(model)

    @post(
        "/models/import",
        opt=access(Access.ADMIN, "model.import_path", "models"),
        status_code=201,
    )
    async def import_model_file(
        request: Request[Any, Any, Any], principal: NamedDependency[Principal]
    ) -> dict[str, Any]:
        """Imports a GGUF model or LoRA adapter already on the control plane host: {"path",
        "name"?, "version"?}. Admin only: it reads any file this service can read."""
        _only_query(request, set())
        path, name, version = import_body(await request.body())

        def run() -> dict[str, Any]:
            try:
                model = registry.import_file(path, name=name, version=version, actor=principal.name)
            except BlobTooLarge as exc:
                raise PayloadTooLarge(str(exc)) from None
            return model_json(model)

        return await asyncio.to_thread(run)

    @get("/models", opt=access(Access.READ, "model.list"))
    async def list_models(request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Every registered model and adapter version; `?kind=model` or `?kind=adapter`: only
        those."""
        _only_query(request, {"kind"})
        kind = request.query_params.get("kind")
        return {
            "models": await asyncio.to_thread(
                lambda: list(map(model_json, registry.list(kind=kind)))
            )
        }

    @get("/models/{ref:str}", opt=access(Access.READ, "model.get", MODEL))
    async def get_model(request: Request[Any, Any, Any], ref: str = ref_param) -> dict[str, Any]:
        _only_query(request, set())
        return await asyncio.to_thread(lambda: model_json(registry.get(ref)))

    @delete("/models/{ref:str}", opt=access(Access.CHANGE, "model.delete", MODEL), status_code=204)
    async def delete_model(
        request: Request[Any, Any, Any],
        principal: NamedDependency[Principal],
        ref: str = ref_param,
    ) -> None:
        """Deletes a model or adapter version; refused (409) while an assignment uses it."""
        _only_query(request, set())
        await asyncio.to_thread(registry.delete, ref, actor=principal.name)

    return [upload_model, import_model_file, list_models, get_model, delete_model]
