"""`console_router`: the console's pages, login and static files, as one Litestar router."""

from __future__ import annotations

from collections.abc import Callable

from litestar import Router
from litestar.static_files import create_static_files_router

from controlplane.console.admin_pages import admin_routes
from controlplane.console.alert_pages import alert_routes
from controlplane.console.enrollment_pages import EnrollmentHint, enrollment_routes
from controlplane.console.errors import exception_handlers
from controlplane.console.federated_pages import federated_routes
from controlplane.console.fleet_pages import fleet_routes
from controlplane.console.gate import ConsoleGate
from controlplane.console.key_pages import key_routes
from controlplane.console.login_routes import LoginLimiter, login_routes
from controlplane.console.model_pages import model_routes
from controlplane.console.policy_pages import policy_routes
from controlplane.console.rendering import STATIC_DIR, STATIC_PATH, Renderer
from controlplane.console.sessions import ConsoleSessions
from controlplane.console.usage_page import usage_routes
from controlplane.services import ControlPlaneServices
from controlplane.settings import ConsoleSettings


def console_router(
    services: ControlPlaneServices,
    settings: ConsoleSettings,
    *,
    enrollment: EnrollmentHint | None = None,
    on_revoke: Callable[[str], None] | None = None,
) -> Router:
    """`enrollment`: for the install command of new agents; `on_revoke(agent_id)` cuts a
    revoked agent's stream."""
    renderer = Renderer()
    sessions = ConsoleSessions(
        services.db,
        idle=settings.session_idle,
        lifetime=settings.session_lifetime,
        clock=services.telemetry.now,
    )
    gate = ConsoleGate(sessions, services.audit, settings)
    limiter = LoginLimiter(settings.login_failures, settings.login_window.total_seconds())
    handlers = [
        *login_routes(services.users, gate, limiter, services.audit, renderer),
        *fleet_routes(services, gate, renderer, settings),
        *model_routes(services, gate, renderer, settings),
        *federated_routes(services, gate, renderer, settings),
        *policy_routes(services, gate, renderer),
        *usage_routes(services, gate, renderer),
        *alert_routes(services, gate, renderer),
        *admin_routes(services, gate, renderer),
        *key_routes(services, gate, renderer),
        *enrollment_routes(services, gate, renderer, enrollment, on_revoke),
        create_static_files_router(path=STATIC_PATH, directories=[STATIC_DIR]),
    ]
    return Router(
        path="/",
        route_handlers=handlers,
        exception_handlers=exception_handlers(renderer),
        include_in_schema=False,
    )
