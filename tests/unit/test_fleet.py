"""The fleet registry: enrollment, certificates, revocation, hello/status, labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlmodel import col, select

from common.control import AgentStatus, Hardware, Hello, ItemState, ItemStatus, ModelAssignment
from common.errors import InvalidArgument, NotFound
from controlplane.db.database import Database
from controlplane.db.models import Agent, AgentState, AuditEvent, Certificate
from controlplane.fleet import AgentAlreadyExists, AgentRevoked, Fleet
from controlplane.services import ControlPlaneServices
from controlplane.tokens import InvalidJoinToken, TokenGrant

T0 = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
AGENT = "3f0e1c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
OTHER = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass(frozen=True)
class IssuedCertificate:  # the shape controlplane.pki hands out
    serial: str
    not_before: datetime
    not_after: datetime
    pem: bytes


def certificate(serial: str, days: int = 30) -> IssuedCertificate:
    return IssuedCertificate(serial, T0 - timedelta(minutes=5), T0 + timedelta(days=days), PEM)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(database: Database, clock: Clock) -> ControlPlaneServices:
    return ControlPlaneServices.build(database, clock=clock)


@pytest.fixture
def fleet(services: ControlPlaneServices) -> Fleet:
    return services.fleet


def enroll(
    services: ControlPlaneServices,
    agent_id: str = AGENT,
    *,
    serial: str = "0a1b",
    site: str = "branch-7",
    labels: dict[str, str] | None = None,
) -> Agent:
    token, _ = services.tokens.create(
        site=site, labels=labels or {}, ttl=timedelta(hours=1), created_by="admin"
    )
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=agent_id, now=T0)
        return services.fleet.enroll(
            session, agent_id=agent_id, name="till-3", grant=grant, certificate=certificate(serial)
        )


def audit_actions(services: ControlPlaneServices) -> list[tuple[str, str, str]]:
    with services.db.session() as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    return [(e.actor, e.action, e.target) for e in events]


def test_enrollment_records_the_agent_its_certificate_and_labels(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    agent = enroll(services, labels={"tier": "gold"})
    assert (agent.id, agent.name, agent.site, agent.labels) == (
        AGENT,
        "till-3",
        "branch-7",
        {"tier": "gold"},
    )
    stored = fleet.get(AGENT)
    assert stored.state == AgentState.ENROLLED
    assert stored.enrolled_at == T0
    assert stored.revoked_at is None
    # The agent learns its labels from its first desired state.
    state = services.desired.current(AGENT)
    assert (state.generation, dict(state.labels)) == (1, {"tier": "gold"})
    assert stored.desired_generation == 1
    with services.db.session() as session:
        [cert] = session.exec(select(Certificate)).all()
    assert (cert.serial, cert.agent_id, cert.pem) == ("0a1b", AGENT, PEM.decode())
    assert fleet.certificate_is_current(AGENT, "0a1b")
    assert ("token:1", "agent.enroll", f"agent:{AGENT}") in audit_actions(services)


def test_an_agent_without_labels_starts_at_generation_zero(
    services: ControlPlaneServices,
) -> None:
    enroll(services)
    assert services.desired.current(AGENT).generation == 0


def test_enrolling_an_existing_id_fails_and_keeps_the_token(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    enroll(services)
    token, _ = services.tokens.create(
        site="elsewhere", labels={}, ttl=timedelta(hours=1), created_by="admin"
    )

    def enroll_again() -> None:
        with services.db.session() as session:
            grant = services.tokens.consume(session, token, agent_id=AGENT, now=T0)
            services.fleet.enroll(
                session, agent_id=AGENT, name="impostor", grant=grant, certificate=certificate("ff")
            )

    with pytest.raises(AgentAlreadyExists):
        enroll_again()
    assert fleet.get(AGENT).name == "till-3"
    assert not fleet.certificate_is_current(AGENT, "ff")
    assert [t.site for t in services.tokens.list()] == ["elsewhere"]  # the rollback kept it


@pytest.mark.parametrize(
    "agent_id",
    ["", "not-a-uuid", AGENT.upper(), AGENT.replace("-", ""), "{" + AGENT + "}", AGENT + "\n"],
)
def test_an_agent_id_must_be_a_canonical_uuid(
    services: ControlPlaneServices, agent_id: str
) -> None:
    grant = TokenGrant(token_id=1, site="", labels={})
    with pytest.raises(InvalidArgument), services.db.session() as session:
        services.fleet.enroll(
            session, agent_id=agent_id, name="n", grant=grant, certificate=certificate("01")
        )
    with pytest.raises(InvalidArgument):
        enroll(services, agent_id)  # the token refuses it first
    assert services.fleet.list() == []
    assert len(services.tokens.list()) == 1


@pytest.mark.parametrize("name", ["", "x" * 256, "a\nb", "a\x00b"])
def test_an_agent_name_must_be_printable_and_bounded(
    services: ControlPlaneServices, name: str
) -> None:
    grant = TokenGrant(token_id=1, site="", labels={})
    with pytest.raises(InvalidArgument), services.db.session() as session:
        services.fleet.enroll(
            session, agent_id=AGENT, name=name, grant=grant, certificate=certificate("01")
        )
    assert services.fleet.list() == []


def test_a_hostile_but_printable_name_is_stored_verbatim(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    name = "'); DROP TABLE agents; -- Zoë's 🚀 till"
    grant = TokenGrant(token_id=1, site="", labels={})
    with services.db.session() as session:
        fleet.enroll(session, agent_id=AGENT, name=name, grant=grant, certificate=certificate("01"))
    assert fleet.get(AGENT).name == name


def test_get_and_list(services: ControlPlaneServices, fleet: Fleet) -> None:
    enroll(services, AGENT, serial="01", site="b")
    enroll(services, OTHER, serial="02", site="a")
    assert [a.id for a in fleet.list()] == [OTHER, AGENT]
    assert [a.id for a in fleet.list(site="b")] == [AGENT]
    assert fleet.list(site="c") == []
    with pytest.raises(NotFound):
        fleet.get("00000000-0000-4000-8000-000000000000")


def test_certificate_currency(services: ControlPlaneServices, fleet: Fleet, clock: Clock) -> None:
    enroll(services, AGENT, serial="0a1b")
    enroll(services, OTHER, serial="0c0d")
    assert fleet.certificate_is_current(AGENT, "0a1b")
    assert fleet.certificate_is_current(AGENT, "0A1B")  # hex case does not matter
    assert not fleet.certificate_is_current(AGENT, "0c0d")  # another agent's certificate
    assert not fleet.certificate_is_current(AGENT, "dead")
    assert not fleet.certificate_is_current("00000000-0000-4000-8000-000000000000", "0a1b")
    clock.now = T0 - timedelta(minutes=6)
    assert not fleet.certificate_is_current(AGENT, "0a1b")  # not yet valid
    clock.now = T0 + timedelta(days=30)
    assert not fleet.certificate_is_current(AGENT, "0a1b")  # expired
    fleet.add_certificate(AGENT, certificate("0e0f", days=60))  # renewed
    assert fleet.certificate_is_current(AGENT, "0e0f")
    assert ("agent:" + AGENT, "certificate.renew", f"agent:{AGENT}") in audit_actions(services)


def test_revoking_an_agent_revokes_its_certificates(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    enroll(services, AGENT, serial="01")
    enroll(services, OTHER, serial="02")
    fleet.add_certificate(AGENT, certificate("03"))
    revoked = fleet.revoke(AGENT, actor="alice")
    assert revoked.state == AgentState.REVOKED
    assert revoked.revoked_at == T0
    assert not fleet.certificate_is_current(AGENT, "01")
    assert not fleet.certificate_is_current(AGENT, "03")
    assert fleet.certificate_is_current(OTHER, "02")
    with services.db.session() as session:
        certs = session.exec(select(Certificate).where(Certificate.agent_id == AGENT)).all()
    assert [c.revoked_at for c in certs] == [T0, T0]
    fleet.revoke(AGENT, actor="alice")  # again: nothing changes, nothing more is audited
    assert audit_actions(services).count(("alice", "agent.revoke", f"agent:{AGENT}")) == 1

    with pytest.raises(AgentRevoked):
        fleet.add_certificate(AGENT, certificate("04"))
    with pytest.raises(AgentRevoked):
        fleet.set_labels(AGENT, {"a": "b"}, actor="alice")
    with pytest.raises(AgentRevoked):
        fleet.record_hello(AGENT, Hello(agent_id=AGENT, version="1", hardware=Hardware()))
    with pytest.raises(NotFound):
        fleet.revoke("00000000-0000-4000-8000-000000000000", actor="alice")


def test_hello_status_and_disconnect_are_recorded(
    services: ControlPlaneServices, fleet: Fleet, clock: Clock
) -> None:
    enroll(services)
    hardware = Hardware(hostname="till-3", os="Linux", cpu_model="x", cpu_cores=8, memory_bytes=2)
    clock.now = T0 + timedelta(minutes=1)
    fleet.record_hello(
        AGENT, Hello(agent_id=AGENT, version="0.1.0\x00", hardware=hardware, observed_generation=3)
    )
    agent = fleet.get(AGENT)
    assert agent.state == AgentState.CONNECTED
    assert agent.version == "0.1.0\N{REPLACEMENT CHARACTER}"  # PostgreSQL cannot store NUL
    assert agent.hardware == {
        "hostname": "till-3",
        "os": "Linux",
        "cpu_model": "x",
        "cpu_cores": 8,
        "memory_bytes": 2,
    }
    assert (agent.observed_generation, agent.last_seen_at) == (3, T0 + timedelta(minutes=1))

    clock.now = T0 + timedelta(minutes=2)
    items = (
        ItemStatus(kind="model", name="smol", state=ItemState.READY),
        ItemStatus(kind="model", name="big", state=ItemState.FAILED, error="no such file"),
        ItemStatus(
            kind="model",
            name="new",
            state=ItemState.DOWNLOADING,
            sha256="ab" * 32,
            bytes_done=4096,
            bytes_total=8192,
            rate_bytes_per_s=1024.5,
            serving_sha256="cd" * 32,
        ),
        # Hostile progress fields are cleaned, never stored as sent.
        ItemStatus(
            kind="model",
            name="odd",
            state=ItemState.DOWNLOADING,
            sha256="../../etc/passwd",
            bytes_done=-5,
            rate_bytes_per_s=float("nan"),
        ),
    )
    fleet.record_status(AGENT, AgentStatus(observed_generation=4, items=items))
    agent = fleet.get(AGENT)
    empty = {"sha256": "", "bytes_done": 0, "bytes_total": 0, "rate_bytes_per_s": 0.0}
    assert agent.status_items == [
        {"kind": "model", "name": "smol", "state": "ready", "error": "", **empty,
         "serving_sha256": ""},
        {"kind": "model", "name": "big", "state": "failed", "error": "no such file", **empty,
         "serving_sha256": ""},
        {"kind": "model", "name": "new", "state": "downloading", "error": "",
         "sha256": "ab" * 32, "bytes_done": 4096, "bytes_total": 8192,
         "rate_bytes_per_s": 1024.5, "serving_sha256": "cd" * 32},
        {"kind": "model", "name": "odd", "state": "downloading", "error": "", **empty,
         "serving_sha256": ""},
    ]  # fmt: skip
    assert (agent.observed_generation, agent.last_seen_at) == (4, T0 + timedelta(minutes=2))

    fleet.mark_disconnected(AGENT)
    assert fleet.get(AGENT).state == AgentState.DISCONNECTED
    fleet.mark_disconnected("00000000-0000-4000-8000-000000000000")  # unknown: nothing to do


def test_a_revoked_agent_stays_revoked_when_its_stream_ends(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    enroll(services)
    fleet.record_hello(AGENT, Hello(agent_id=AGENT, version="1", hardware=Hardware()))
    fleet.revoke(AGENT, actor="alice")
    fleet.record_status(AGENT, AgentStatus(observed_generation=9))
    fleet.mark_disconnected(AGENT)
    agent = fleet.get(AGENT)
    assert agent.state == AgentState.REVOKED
    assert agent.observed_generation == 0


@pytest.mark.parametrize(
    "hello",
    [
        Hello(agent_id=OTHER, version="1", hardware=Hardware()),
        Hello(agent_id=AGENT, version="1", hardware=Hardware(), observed_generation=-1),
        Hello(agent_id=AGENT, version="1", hardware=Hardware(), observed_generation=2**31),
    ],
    ids=["other agent", "negative generation", "huge generation"],
)
def test_an_invalid_hello_is_refused(
    services: ControlPlaneServices, fleet: Fleet, hello: Hello
) -> None:
    enroll(services)
    with pytest.raises(InvalidArgument):
        fleet.record_hello(AGENT, hello)
    assert fleet.get(AGENT).state == AgentState.ENROLLED


def test_a_hello_from_an_unknown_agent_is_not_found(fleet: Fleet) -> None:
    with pytest.raises(NotFound):
        fleet.record_hello(AGENT, Hello(agent_id=AGENT, version="1", hardware=Hardware()))
    with pytest.raises(NotFound):
        fleet.record_status(AGENT, AgentStatus(observed_generation=0))


def test_setting_labels_bumps_the_desired_state(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    enroll(services, labels={"tier": "gold"})
    heard: list[str] = []
    services.desired.add_listener(lambda states: heard.extend(sorted(states)))
    agent = fleet.set_labels(AGENT, {"tier": "silver", "zone": "eu-1"}, actor="alice")
    assert agent.labels == {"tier": "silver", "zone": "eu-1"}
    assert fleet.get(AGENT).labels == {"tier": "silver", "zone": "eu-1"}
    state = services.desired.current(AGENT)
    assert (state.generation, dict(state.labels)) == (2, {"tier": "silver", "zone": "eu-1"})
    assert heard == [AGENT]
    assert ("alice", "agent.set_labels", f"agent:{AGENT}") in audit_actions(services)
    with pytest.raises(InvalidArgument):
        fleet.set_labels(AGENT, {"tier": "x" * 10_000}, actor="alice")
    with pytest.raises(NotFound):
        fleet.set_labels(OTHER, {}, actor="alice")
    assert services.desired.current(AGENT).generation == 2


def test_a_token_used_for_one_enrollment_cannot_enroll_another(
    services: ControlPlaneServices,
) -> None:
    token, _ = services.tokens.create(site="", labels={}, ttl=timedelta(hours=1), created_by="a")
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=AGENT, now=T0)
        services.fleet.enroll(
            session, agent_id=AGENT, name="n", grant=grant, certificate=certificate("01")
        )
    with pytest.raises(InvalidJoinToken, match="used"), services.db.session() as session:
        services.tokens.consume(session, token, agent_id=OTHER, now=T0)
    assert [a.id for a in services.fleet.list()] == [AGENT]


def test_site_wide_models_reach_every_live_agent_of_the_site_only(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    third = "5c4b3a29-1807-4f6e-9d5c-4b3a29180706"
    enroll(services, AGENT, serial="01", site="branch-7", labels={"tier": "gold"})
    enroll(services, OTHER, serial="02", site="branch-7")
    enroll(services, third, serial="03", site="branch-8")
    fleet.revoke(OTHER, actor="alice")
    heard: list[dict[str, int]] = []
    services.desired.add_listener(
        lambda states: heard.append({a: s.generation for a, s in states.items()})
    )
    model = ModelAssignment(alias="smol", path="/models/smol.gguf")
    with services.db.session() as session:
        states = services.desired.set_models_for_site(session, "branch-7", [model], actor="alice")
    assert set(states) == {AGENT}  # not the revoked agent, not the other site
    assert heard == [{AGENT: 2}]  # generation 1 held the token's labels
    current = services.desired.current(AGENT)
    assert (current.generation, current.models, dict(current.labels)) == (
        2,
        (model,),
        {"tier": "gold"},
    )
    assert fleet.get(AGENT).desired_generation == 2
    assert services.desired.current(third).models == ()
    assert ("alice", "desired_state.set_models_for_site", "site:branch-7") in audit_actions(
        services
    )


def test_start_up_marks_agents_recorded_as_connected_disconnected(
    services: ControlPlaneServices, fleet: Fleet
) -> None:
    enroll(services)
    fleet.record_hello(AGENT, Hello(agent_id=AGENT, version="1", hardware=Hardware()))
    seen = fleet.get(AGENT).last_seen_at
    assert fleet.get(AGENT).state == "connected"
    assert fleet.mark_all_disconnected() == 1
    assert fleet.get(AGENT).state == "disconnected"
    assert fleet.get(AGENT).last_seen_at == seen
    assert fleet.mark_all_disconnected() == 0
