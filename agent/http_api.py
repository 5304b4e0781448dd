"""The agent's HTTP front end: OpenAI's API (common/openai_http.py), health, metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar import Litestar, get
from litestar.response import Response

from agent.inference import Inference
from common.openai_http import EXCEPTION_HANDLERS, OpenAIRoutes
from common.prometheus import metrics_route


def create_app(
    inference: Inference,
    *,
    max_request_bytes: int,
    prometheus: Callable[[], bytes] | None = None,
) -> Litestar:
    """`prometheus` renders `/metrics` (blocking; it runs on a worker thread)."""

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response[Any]:
        if inference.ready:
            return Response({"status": "ready"}, status_code=200)
        return Response({"status": "loading"}, status_code=503)

    handlers = [healthz, readyz, *OpenAIRoutes(inference).handlers()]
    if prometheus is not None:
        handlers.append(metrics_route(prometheus))
    return Litestar(
        route_handlers=handlers,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=max_request_bytes,
        openapi_config=None,
        logging_config=None,  # the agent configures logging for the whole process
    )
