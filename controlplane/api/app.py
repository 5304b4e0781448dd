"""`create_app`: the control plane's REST API (Litestar) with its OpenAPI schema."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from functools import partial
from typing import Any

from litestar import Litestar, Router, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from common.openai_http import EXCEPTION_HANDLERS as OPENAI_EXCEPTION_HANDLERS
from common.openai_http import InferenceFront, OpenAIRoutes
from common.prometheus import metrics_route
from controlplane.api.agents import agent_routes
from controlplane.api.alerts import alert_routes
from controlplane.api.assignments import assignment_routes
from controlplane.api.audit import audit_routes
from controlplane.api.auth_guard import auth_guard, current_principal
from controlplane.api.errors import EXCEPTION_HANDLERS
from controlplane.api.federated import federated_routes
from controlplane.api.inference_keys import inference_key_routes
from controlplane.api.models import model_routes
from controlplane.api.policy import policy_routes
from controlplane.api.sites import site_routes
from controlplane.api.telemetry import telemetry_routes
from controlplane.api.tokens import token_routes
from controlplane.api.usage import usage_routes
from controlplane.api.users import user_routes
from controlplane.console.app import console_router
from controlplane.console.enrollment_pages import EnrollmentHint
from controlplane.fleet_metrics import prometheus
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings

API_PREFIX = "/api/v1"
DEFAULT_JOIN_TOKEN_TTL = timedelta(hours=24)


@get("/healthz", sync_to_thread=False, include_in_schema=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _openapi() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Outpost control plane",
        version="1",
        description=(
            "Fleet registry, join tokens and desired state of Outpost edge agents. "
            "Authenticate with 'Authorization: Bearer <API key>' (or 'X-API-Key')."
        ),
        path=f"{API_PREFIX}/schema",
        # JSON only: the interactive viewers load scripts from CDNs, and sites are air-gapped.
        render_plugins=[JsonRenderPlugin(path=["/", "/openapi.json"])],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(type="http", scheme="bearer", description="API key")
            }
        ),
        security=[{"apiKey": []}],
        use_handler_docstrings=True,
    )


def create_app(
    services: ControlPlaneServices,
    *,
    max_request_bytes: int,
    on_revoke: Callable[[str], None] | None = None,
    join_token_ttl: timedelta = DEFAULT_JOIN_TOKEN_TTL,
    gateway: InferenceFront | None = None,
    console: ConsoleSettings | None = None,
    enrollment: EnrollmentHint | None = None,
) -> Litestar:
    """The REST API over `services`.

    `on_revoke(agent_id)` runs on the event loop after an agent is revoked, so the gRPC side
    can cut its stream. `join_token_ttl` is the lifetime of a token created without one.
    The web console is served at `/` with `console` settings (defaults when None); its
    install commands for new agents name `enrollment`.
    """
    handlers: list[Any] = [
        *agent_routes(services, on_revoke),
        *token_routes(services, join_token_ttl),
        *audit_routes(services),
        *site_routes(services),
        *telemetry_routes(services),
        *model_routes(services),
        *assignment_routes(services, services.assignments),
        *policy_routes(services),
        *inference_key_routes(services),
        *usage_routes(services),
        *alert_routes(services),
        *user_routes(services),
        *federated_routes(services),
    ]
    api = Router(
        path=API_PREFIX,
        route_handlers=handlers,
        guards=[auth_guard(services)],
        dependencies={"principal": Provide(current_principal, sync_to_thread=False)},
    )
    root: list[Any] = [healthz, metrics_route(partial(prometheus, services)), api]
    root.append(
        console_router(
            services, console or ConsoleSettings(), enrollment=enrollment, on_revoke=on_revoke
        )
    )
    if gateway is not None:  # OpenAI's API at /v1, its errors in OpenAI's form
        root.append(
            Router(
                path="/",
                route_handlers=OpenAIRoutes(gateway).handlers(),
                exception_handlers=OPENAI_EXCEPTION_HANDLERS,
                include_in_schema=False,
            )
        )
    return Litestar(
        route_handlers=root,
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=max_request_bytes,
        openapi_config=_openapi(),
        logging_config=None,  # `outpost serve` configures logging for the whole process
    )
