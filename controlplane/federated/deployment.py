"""The control plane's federated-learning deployment: the loopback SuperLink, the mutual-TLS
relay that lets enrolled agents (and nothing else) reach its Fleet API, and the job runner."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from common.fleet_relay import FleetRelay
from common.fleet_relay_tls import server_ssl_context
from controlplane.federated.runner import FederatedRunner
from controlplane.federated.superlink import SuperLink
from controlplane.pki import CertificateAuthority, CertificateError
from controlplane.services import ControlPlaneServices

log = logging.getLogger(__name__)


def fleet_authorizer(
    services: ControlPlaneServices, ca: CertificateAuthority
) -> Callable[[bytes | None], str | None]:
    """Lets a connection through when its client certificate is a current agent certificate
    of this fleet and that agent takes part in an active federated job."""

    def authorize(der: bytes | None) -> str | None:
        if der is None:
            return "no client certificate"
        try:
            identity = ca.verify_agent_certificate(ssl.DER_cert_to_PEM_cert(der).encode())
        except CertificateError as exc:
            return str(exc)
        if not services.fleet.certificate_is_current(identity.agent_id, identity.serial):
            return f"agent {identity.agent_id} is unknown or revoked"
        for job in services.federated_jobs.active():
            if any(p.agent_id == identity.agent_id for p in job.participants):
                return None
        return f"agent {identity.agent_id} takes part in no active federated job"

    return authorize


class FederatedDeployment:
    """Started and stopped with the control plane. The SuperLink itself starts with the first
    job (a control plane without jobs runs no Flower process)."""

    def __init__(
        self,
        services: ControlPlaneServices,
        ca: CertificateAuthority,
        data_dir: Path,
        *,
        host: str,
        fleet_port: int,
        advertise_hosts: tuple[str, ...],
        insecure: bool,
    ) -> None:
        self.superlink = SuperLink(data_dir / "federated")
        server_tls = None
        authorize = None
        if insecure:
            log.warning(
                "PLAIN-TEXT MODE: the Flower Fleet API relay neither encrypts nor "
                "authenticates. Use this only for a local demo."
            )
        else:
            key, chain = ca.issue_server_certificate(advertise_hosts)
            server_tls = server_ssl_context(
                cert_chain_pem=chain, key_pem=key, ca_pem=ca.certificate_pem
            )
            authorize = fleet_authorizer(services, ca)
        self.relay = FleetRelay(
            host=host,
            port=fleet_port,
            upstream=f"http://{self.superlink.address}",
            server_ssl=server_tls,
            authorize=authorize,
        )
        self._services = services
        self._data_dir = data_dir
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fleet_port = 0

    async def start(self) -> int:
        """Opens the relay and starts the runner; the relay's port."""
        self.fleet_port = await self.relay.start()
        runner = FederatedRunner(
            self._services, self.superlink, self._data_dir / "federated" / "jobs", self.fleet_port
        )
        self._thread = threading.Thread(
            target=runner.run, args=(self._stop,), name="federated-runner", daemon=True
        )
        self._thread.start()
        return self.fleet_port

    async def close(self) -> None:
        self._stop.set()
        await self.relay.close()
        if self._thread is not None:  # a flwr command it waits on ends within its timeout
            await asyncio.to_thread(self._thread.join, 150)
        await asyncio.to_thread(self.superlink.close)
