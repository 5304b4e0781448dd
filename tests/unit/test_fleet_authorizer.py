"""`fleet_authorizer`: who may reach the Flower Fleet API through the control plane's relay
(a current agent certificate of this fleet, of an agent in an active federated job)."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from agent.control.identity import build_csr, generate_key
from controlplane.db.database import Database
from controlplane.federated.deployment import fleet_authorizer
from controlplane.federated.job_spec import job_spec_from
from controlplane.model_registry import RegisteredModelView
from controlplane.pki import CertificateAuthority, IssuedCertificate
from controlplane.services import ControlPlaneServices
from tests.federated_jobs import add_agent, add_model, job_body

Authorize = Callable[[bytes | None], str | None]


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    authority, _ = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))
    return authority


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    authority, _ = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("other-ca"))
    return authority


@pytest.fixture
def services(tmp_path: Path, migrated_sqlite: Path) -> Iterator[ControlPlaneServices]:
    shutil.copyfile(migrated_sqlite, tmp_path / "outpost.db")
    db = Database(f"sqlite:///{tmp_path / 'outpost.db'}")
    try:
        yield ControlPlaneServices.build(db)
    finally:
        db.dispose()


@pytest.fixture
def model(services: ControlPlaneServices) -> RegisteredModelView:
    return add_model(services)


@pytest.fixture
def authorize(services: ControlPlaneServices, ca: CertificateAuthority) -> Authorize:
    return fleet_authorizer(services, ca)


def certificate(ca: CertificateAuthority, agent_id: str) -> IssuedCertificate:
    _, issued = ca.sign_agent_csr(
        build_csr(generate_key(), agent_id), expected_agent_id=agent_id, valid_for=timedelta(1)
    )
    return issued


def der(issued: IssuedCertificate) -> bytes:
    return ssl.PEM_cert_to_DER_cert(issued.pem.decode("ascii"))


def enrolled(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    model: RegisteredModelView,
    name: str,
) -> tuple[str, bytes]:
    """An agent able to train, and the DER of a current certificate of it from `ca`."""
    agent_id = add_agent(services, name, model=model)
    issued = certificate(ca, agent_id)
    services.fleet.add_certificate(agent_id, issued)
    return agent_id, der(issued)


def start_job(services: ControlPlaneServices, agents: list[str]) -> str:
    return services.federated_jobs.create(job_spec_from(job_body(agents)), actor="alice").id


def test_no_client_certificate_is_refused(authorize: Authorize) -> None:
    assert authorize(None) == "no client certificate"


def test_a_certificate_from_another_ca_is_refused(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    other_ca: CertificateAuthority,
    model: RegisteredModelView,
    authorize: Authorize,
) -> None:
    agent_id, _ = enrolled(services, ca, model, "edge")
    start_job(services, [agent_id])
    stranger = certificate(other_ca, agent_id)  # the same agent id, signed elsewhere
    services.fleet.add_certificate(agent_id, stranger)  # even when its serial were recorded
    assert authorize(der(stranger)) == "the client certificate was not issued by the fleet CA"


def test_bytes_that_are_no_certificate_are_refused(authorize: Authorize) -> None:
    assert authorize(b"\x30\x03\x02\x01\x00") == "the client certificate is not a PEM certificate"
    assert authorize(b"") == "the client certificate is not a PEM certificate"


def test_a_certificate_of_an_unknown_agent_is_refused(
    ca: CertificateAuthority, authorize: Authorize
) -> None:
    agent_id = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
    reason = authorize(der(certificate(ca, agent_id)))
    assert reason == f"agent {agent_id} is unknown or revoked"


def test_a_certificate_the_fleet_never_recorded_is_refused(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    model: RegisteredModelView,
    authorize: Authorize,
) -> None:
    agent_id, _ = enrolled(services, ca, model, "edge")
    start_job(services, [agent_id])
    unrecorded = certificate(ca, agent_id)  # signed by the CA but not the agent's own
    assert authorize(der(unrecorded)) == f"agent {agent_id} is unknown or revoked"


def test_a_revoked_agent_is_refused(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    model: RegisteredModelView,
    authorize: Authorize,
) -> None:
    agent_id, cert = enrolled(services, ca, model, "edge")
    start_job(services, [agent_id])
    assert authorize(cert) is None
    services.fleet.revoke(agent_id, actor="alice")
    assert authorize(cert) == f"agent {agent_id} is unknown or revoked"


def test_an_enrolled_agent_outside_every_active_job_is_refused(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    model: RegisteredModelView,
    authorize: Authorize,
) -> None:
    member, _ = enrolled(services, ca, model, "member")
    outsider, outsider_cert = enrolled(services, ca, model, "outsider")
    no_job = f"agent {outsider} takes part in no active federated job"
    assert authorize(outsider_cert) == no_job  # no job at all
    start_job(services, [member])
    assert authorize(outsider_cert) == no_job  # another agent's job


def test_a_participant_of_an_active_job_is_let_through_until_the_job_ends(
    services: ControlPlaneServices,
    ca: CertificateAuthority,
    model: RegisteredModelView,
    authorize: Authorize,
) -> None:
    first, first_cert = enrolled(services, ca, model, "first")
    second, second_cert = enrolled(services, ca, model, "second")
    job_id = start_job(services, [first, second])
    assert authorize(first_cert) is None
    assert authorize(second_cert) is None
    services.federated_jobs.cancel(job_id, actor="alice")
    assert authorize(first_cert) == f"agent {first} takes part in no active federated job"
