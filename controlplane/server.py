"""Assembles `outpost serve`: CA, database, REST API, enrollment and control gRPC servers."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from common.artifact_servicer import add_artifact_service
from common.embedded_http import bind_listener, embedded_server
from common.lifecycle import (
    collect_garbage_less_often,
    configure_logging,
    run_until_signalled,
)
from controlplane.api.app import create_app
from controlplane.bundle_signing import BundleSigner, signing_directory
from controlplane.console.enrollment_pages import EnrollmentHint
from controlplane.db.database import Database
from controlplane.federated.deployment import FederatedDeployment
from controlplane.gateway import Gateway
from controlplane.gateway_parts import GatewayParts
from controlplane.grpc.agent_auth import AgentAuthenticator
from controlplane.grpc.artifacts import registry_artifacts
from controlplane.grpc.control import ControlServicer
from controlplane.grpc.enrollment import EnrollmentServicer
from controlplane.grpc.hub import Hub
from controlplane.liveness import LivenessPolicy
from controlplane.pki import CertificateAuthority
from controlplane.services import ControlPlaneServices
from controlplane.settings import ControlPlaneSettings
from outpost.v1 import control_pb2_grpc as cpb_grpc

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
ADMIN_KEY_FILE = "admin-api-key"

# Pings every 10 s with a 10 s timeout: a dead agent stream is noticed within 30 s.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # grpc-core times out an unanswered ping with this (default 60 s), not keepalive_timeout.
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass(frozen=True)
class ListeningPorts:
    http: int
    grpc: int
    mtls: int
    fleet: int = 0  # the Flower Fleet API relay


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


class ControlPlaneServer:
    def __init__(
        self, settings: ControlPlaneSettings, environ: Mapping[str, str] | None = None
    ) -> None:
        """`environ`: where the gateway looks up cloud targets' `env:` key references."""
        self.settings = settings
        self._environ = dict(environ or {})
        self.gateway: Gateway | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ca: CertificateAuthority | None = None
        self.services: ControlPlaneServices | None = None

    def request_stop(self) -> None:
        """Thread-safe."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)

    def _prepare(self) -> tuple[CertificateAuthority, ControlPlaneServices]:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca, created = CertificateAuthority.load_or_create(settings.data_dir / "ca")
        log.info(
            "%s CA, sha256 fingerprint %s",
            "created the fleet" if created else "loaded the fleet",
            ca.fingerprint,
        )
        db = Database(settings.effective_database_url)
        db.migrate()
        services = ControlPlaneServices.build(
            db,
            telemetry_raw_retention=settings.telemetry_raw_retention,
            telemetry_rollup_retention=settings.telemetry_rollup_retention,
            liveness_policy=LivenessPolicy(
                grace=settings.liveness_grace, restart_grace=settings.liveness_restart_grace
            ),
            model_store_dir=settings.data_dir / "models",
            max_model_bytes=settings.max_model_bytes,
        )
        services.fleet.mark_all_disconnected()
        admin_key = services.api_keys.ensure_initial_admin()
        if admin_key is not None:
            key_file = settings.data_dir / ADMIN_KEY_FILE
            _write_secret(key_file, admin_key)
            log.info(
                "created the initial admin API key in %s (readable by its owner only)", key_file
            )
        return ca, services

    async def run(self, on_listening: asyncio.Future[ListeningPorts] | None = None) -> None:
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ca, services = await asyncio.to_thread(self._prepare)
        signer = await asyncio.to_thread(
            BundleSigner.load_or_create, signing_directory(settings.data_dir)
        )
        bundle_key = signer.public_key_pem
        self.ca, self.services = ca, services
        hub = Hub(self._loop)
        services.desired.add_listener(hub.notify_changed)
        gateway_parts = GatewayParts.build(services, self._environ)
        services.desired.add_listener(lambda _: gateway_parts.state.invalidate())
        self.gateway = gateway_parts.gateway
        options = [
            *KEEPALIVE_OPTIONS,
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # Answers may exceed requests: a very large model's artifact manifest is ~4.5 MB.
            ("grpc.max_send_message_length", max(settings.max_message_bytes, 8 * 1024 * 1024)),
        ]
        mtls_server = grpc.aio.server(options=options)
        public_server = grpc.aio.server(options=options)
        cpb_grpc.add_ControlServiceServicer_to_server(  # type: ignore[no-untyped-call]
            ControlServicer(services, ca, hub, settings), mtls_server
        )
        add_artifact_service(
            mtls_server, registry_artifacts(services, AgentAuthenticator(services, ca, settings))
        )
        if settings.insecure:
            log.warning(
                "PLAIN-TEXT MODE: agent traffic is neither encrypted nor authenticated. "
                "Use this only for a local demo."
            )
            mtls_port = mtls_server.add_insecure_port(f"{settings.host}:{settings.mtls_port}")
        else:
            key, chain = ca.issue_server_certificate(settings.advertise_hosts)
            mtls_credentials = grpc.ssl_server_credentials(
                [(key, chain)], root_certificates=ca.certificate_pem, require_client_auth=True
            )
            mtls_port = mtls_server.add_secure_port(
                f"{settings.host}:{settings.mtls_port}", mtls_credentials
            )
        cpb_grpc.add_EnrollmentServiceServicer_to_server(  # type: ignore[no-untyped-call]
            EnrollmentServicer(services, ca, settings, mtls_port, bundle_public_key_pem=bundle_key),
            public_server,
        )
        if settings.insecure:
            grpc_port = public_server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
        else:
            grpc_port = public_server.add_secure_port(
                f"{settings.host}:{settings.grpc_port}",
                grpc.ssl_server_credentials([(key, chain)]),
            )
        if not settings.console.secure_cookies:
            log.warning(
                "CONSOLE COOKIES WITHOUT 'Secure' (--insecure-cookies): a login can leak over "
                "plain HTTP. Use this only for a local demo."
            )
        http_socket = bind_listener(settings.host, settings.http_port)
        http_server = embedded_server(
            create_app(
                services,
                max_request_bytes=settings.max_request_bytes,
                on_revoke=hub.cut,
                join_token_ttl=settings.join_token_ttl,
                gateway=gateway_parts.gateway,
                console=settings.console,
                enrollment=EnrollmentHint(
                    f"{settings.advertise_hosts[0]}:{grpc_port}", ca.fingerprint, settings.insecure
                ),
            )
        )
        federated = FederatedDeployment(
            services,
            ca,
            settings.data_dir,
            host=settings.host,
            fleet_port=settings.fleet_port,
            advertise_hosts=settings.advertise_hosts,
            insecure=settings.insecure,
        )
        try:
            await mtls_server.start()
            await public_server.start()
            fleet_port = await federated.start()
            http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]))
            ports = ListeningPorts(http_socket.getsockname()[1], grpc_port, mtls_port, fleet_port)
            log.info("REST API on http://%s:%d/api/v1/", settings.host, ports.http)
            log.info("agents enroll on %s:%d (gRPC, TLS)", settings.host, ports.grpc)
            log.info("agents connect on %s:%d (gRPC, mutual TLS)", settings.host, ports.mtls)
            log.info("Flower SuperNodes connect on %s:%d (mutual TLS)", settings.host, ports.fleet)
            if on_listening is not None:
                on_listening.set_result(ports)
            stop_task = asyncio.create_task(self._stop.wait())
            compaction = asyncio.create_task(self._compact_periodically(services))
            alerts = asyncio.create_task(gateway_parts.evaluate_alerts(self._stop))
            await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
            compaction.cancel()
            alerts.cancel()
            log.info("shutting down")
            hub.cut_all("the control plane is shutting down")
            await asyncio.gather(
                public_server.stop(SHUTDOWN_GRACE_S), mtls_server.stop(SHUTDOWN_GRACE_S)
            )
            http_server.should_exit = True
            await http_task
        finally:
            await federated.close()
            http_socket.close()
            await gateway_parts.aclose()
            services.db.dispose()

    async def _compact_periodically(self, services: ControlPlaneServices) -> None:
        while True:
            await asyncio.sleep(self.settings.compaction_interval_s)
            try:
                result = await asyncio.to_thread(services.telemetry.compact)
            except Exception:  # logged; the next round tries again
                log.exception("telemetry compaction failed")
                continue
            log.info(
                "telemetry compacted: %d points rolled up, %d raw and %d rollups deleted",
                result.rolled_up,
                result.raw_deleted,
                result.rollups_deleted,
            )


def serve(settings: ControlPlaneSettings) -> int:
    configure_logging(settings.log_level)
    collect_garbage_less_often()
    run_until_signalled(ControlPlaneServer(settings, os.environ))
    return 0
