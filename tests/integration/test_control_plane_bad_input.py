"""Hostile and broken agents against the control plane's gRPC ports: each is refused with a
clear status, only an audit event is recorded, and a well-behaved agent stays connected."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from sqlmodel import col, select

from agent.control.identity import build_csr, generate_key
from controlplane.db.models import (
    Agent,
    AlertEventRow,
    AuditEvent,
    JoinToken,
    UsageRecordRow,
)
from controlplane.pki import CertificateAuthority
from controlplane.tokens import hash_token
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc
from tests.agent_harness import RunningAgent
from tests.controlplane_harness import (
    ObservedManagedAgent,
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)


@dataclass(frozen=True)
class Enrolled:
    agent_id: str
    key_pem: bytes
    certificate_pem: bytes


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningControlPlane, RunningAgent, ObservedManagedAgent]]:
    """One control plane (short Hello deadline) and one well-behaved agent connected to it."""
    root = tmp_path_factory.mktemp("fleet")
    settings = controlplane_settings(root / "cp", None, hello_timeout_s=1.0)
    with RunningControlPlane(settings) as cp:
        running, companion = managed_agent(
            root / "good-agent", cp.enroll_address, cp.create_token(), cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the good agent is connected")
            yield cp, running, companion
            assert companion.link.connected.is_set(), "the good agent was disturbed"


@pytest.fixture
def cp(
    fleet: tuple[RunningControlPlane, RunningAgent, ObservedManagedAgent],
) -> RunningControlPlane:
    return fleet[0]


def ca_pem(cp: RunningControlPlane) -> bytes:
    assert cp.server.ca is not None
    return cp.server.ca.certificate_pem


def enroll(
    cp: RunningControlPlane, token: str, csr_pem: bytes, name: str = "test-agent"
) -> cpb.EnrollResponse:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem(cp))
    with grpc.secure_channel(cp.enroll_address, credentials) as channel:
        stub = cpb_grpc.EnrollmentServiceStub(channel)  # type: ignore[no-untyped-call]
        response: cpb.EnrollResponse = stub.Enroll(
            cpb.EnrollRequest(join_token=token, csr_pem=csr_pem, name=name), timeout=30
        )
        return response


def enroll_new(cp: RunningControlPlane) -> Enrolled:
    agent_id = str(uuid.uuid4())
    key = generate_key()
    response = enroll(cp, cp.create_token(), build_csr(key, agent_id))
    return Enrolled(agent_id, key, response.certificate_pem)


def mtls_channel(cp: RunningControlPlane, key_pem: bytes, certificate_pem: bytes) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=ca_pem(cp), private_key=key_pem, certificate_chain=certificate_pem
    )
    return grpc.secure_channel(f"127.0.0.1:{cp.ports.mtls}", credentials)


def hello(agent_id: str, **extra: object) -> cpb.AgentMessage:
    return cpb.AgentMessage(hello=cpb.Hello(agent_id=agent_id, version="test", **extra))  # type: ignore[arg-type]


def connect_error(
    channel: grpc.Channel, messages: list[cpb.AgentMessage], hold: bool = False
) -> grpc.RpcError:
    """Opens Connect, sends `messages` (then keeps the stream open when `hold`), and returns the
    error the control plane ends it with."""
    done = threading.Event()

    def requests() -> Iterator[cpb.AgentMessage]:
        yield from messages
        if hold:
            done.wait(30)

    stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.RpcError) as error:
        for _ in stub.Connect(requests(), timeout=30):
            pass
    done.set()
    return error.value


def sent_twice(
    cp: RunningControlPlane, enrolled: Enrolled, message: cpb.AgentMessage, ack: str
) -> list[int]:
    """Sends `enrolled`'s hello, then `message` twice (a replay of the whole of it) on the real
    control stream; answers the acked_seq of the reply field `ack` to each (the stream stays up)."""
    replied = threading.Event()

    def requests() -> Iterator[cpb.AgentMessage]:
        yield hello(enrolled.agent_id)
        yield message
        yield message
        replied.wait(30)

    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        replies = stub.Connect(requests(), timeout=30)
        assert next(replies).HasField("desired_state")
        acks = [getattr(next(replies), ack).acked_seq for _ in range(2)]
        replied.set()
        replies.cancel()
    return acks


StoredRow = TypeVar("StoredRow", AlertEventRow, UsageRecordRow)


def stored_from(cp: RunningControlPlane, table: type[StoredRow], source: str) -> list[StoredRow]:
    """The rows of `table` the control plane stored from the agent `source`, by sequence."""
    assert cp.server.services is not None
    statement = select(table).where(table.source == source).order_by(col(table.seq))
    with cp.server.services.db.session() as session:
        return [table.model_validate(row) for row in session.exec(statement)]


def agent_count(cp: RunningControlPlane) -> int:
    assert cp.server.services is not None
    with cp.server.services.db.session() as session:
        return len(session.exec(select(Agent)).all())


def denials(cp: RunningControlPlane, action: str) -> int:
    assert cp.server.services is not None
    with cp.server.services.db.session() as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "denied")
        ).all()
    return len(events)


def test_unknown_malformed_and_reused_tokens_are_refused(cp: RunningControlPlane) -> None:
    before_agents, before_denials = agent_count(cp), denials(cp, "enroll")
    csr = build_csr(generate_key(), str(uuid.uuid4()))
    for token, reason in [
        ("opj_" + "x" * 32, "unknown"),
        ("not a token", "malformed"),
        ("", "malformed"),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            enroll(cp, token, csr)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert reason in error.value.details()
    token = cp.create_token()
    enroll(cp, token, build_csr(generate_key(), str(uuid.uuid4())))
    with pytest.raises(grpc.RpcError) as error:
        enroll(cp, token, build_csr(generate_key(), str(uuid.uuid4())))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "used" in error.value.details()
    assert agent_count(cp) == before_agents + 1  # only the one good enrollment
    assert denials(cp, "enroll") == before_denials + 4


def test_expired_token_is_refused(cp: RunningControlPlane) -> None:
    token = cp.create_token()
    assert cp.server.services is not None
    with cp.server.services.db.session() as session:
        row = session.exec(select(JoinToken).where(JoinToken.token_hash == hash_token(token))).one()
        row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(row)
    with pytest.raises(grpc.RpcError) as error:
        enroll(cp, token, build_csr(generate_key(), str(uuid.uuid4())))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "expired" in error.value.details()


def test_csr_for_another_agents_id_is_refused(cp: RunningControlPlane) -> None:
    victim = enroll_new(cp)
    before = agent_count(cp)
    with pytest.raises(grpc.RpcError) as error:
        enroll(cp, cp.create_token(), build_csr(generate_key(), victim.agent_id))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert agent_count(cp) == before
    with mtls_channel(cp, victim.key_pem, victim.certificate_pem) as channel:  # victim unaffected
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        replies = stub.Connect(iter([hello(victim.agent_id)]), timeout=30)
        assert next(replies).HasField("desired_state")


@pytest.mark.parametrize(
    "csr",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        b"x" * 100_000,
    ],
)
def test_malformed_csr_is_refused(cp: RunningControlPlane, csr: bytes) -> None:
    with pytest.raises(grpc.RpcError) as error:
        enroll(cp, cp.create_token(), csr)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_certificate_from_another_ca_cannot_connect(
    cp: RunningControlPlane, tmp_path: Path
) -> None:
    other_ca, _ = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    agent_id, key = str(uuid.uuid4()), generate_key()
    _, forged = other_ca.sign_agent_csr(
        build_csr(key, agent_id), expected_agent_id=None, valid_for=timedelta(days=1)
    )
    with mtls_channel(cp, key, forged.pem) as channel:
        error = connect_error(channel, [hello(agent_id)])
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_expired_certificate_cannot_connect(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    assert cp.server.ca is not None
    _, expired = cp.server.ca.sign_agent_csr(
        build_csr(enrolled.key_pem, enrolled.agent_id),
        expected_agent_id=enrolled.agent_id,
        valid_for=timedelta(hours=1),
        now=datetime.now(UTC) - timedelta(days=2),
    )
    with mtls_channel(cp, enrolled.key_pem, expired.pem) as channel:
        error = connect_error(channel, [hello(enrolled.agent_id)])
    assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_revoked_agent_cannot_connect(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    with cp.api() as api:
        assert api.post(f"/agents/{enrolled.agent_id}/revoke").status_code == 200
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        error = connect_error(channel, [hello(enrolled.agent_id)])
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "revoked" in error.details()


def test_agent_cannot_speak_for_another_agent(cp: RunningControlPlane) -> None:
    mallory, victim = enroll_new(cp), enroll_new(cp)
    with mtls_channel(cp, mallory.key_pem, mallory.certificate_pem) as channel:
        error = connect_error(channel, [hello(victim.agent_id)])
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as renew:
            stub.RenewCertificate(
                cpb.RenewRequest(csr_pem=build_csr(generate_key(), victim.agent_id)), timeout=30
            )
    assert renew.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert victim.agent_id in renew.value.details()


def test_renewal_for_itself_works(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    new_key = generate_key()
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        renewed = stub.RenewCertificate(
            cpb.RenewRequest(csr_pem=build_csr(new_key, enrolled.agent_id)), timeout=30
        )
    with mtls_channel(cp, new_key, renewed.certificate_pem) as channel:
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        replies = stub.Connect(iter([hello(enrolled.agent_id)]), timeout=30)
        assert next(replies).HasField("desired_state")


def test_first_message_must_be_hello(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        status = cpb.AgentMessage(status=cpb.Status(observed_generation=1))
        error = connect_error(channel, [status])
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Hello" in error.details()


def test_silent_stream_is_closed_after_the_hello_deadline(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        error = connect_error(channel, [], hold=True)
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "Hello" in error.details()


def test_oversized_message_is_refused(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    big = hello(enrolled.agent_id, capabilities=["x" * 1024] * 5000)  # ~5 MiB > 4 MiB
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        error = connect_error(channel, [big])
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_status_with_invalid_item_state_ends_the_stream(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    bad = cpb.AgentMessage(
        status=cpb.Status(observed_generation=1, items=[cpb.ItemStatus(kind="model", name="m")])
    )
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        error = connect_error(channel, [hello(enrolled.agent_id), bad], hold=True)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_undecodable_stream_message_is_refused(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        connect = channel.stream_stream(
            "/outpost.v1.ControlService/Connect",
            request_serializer=lambda raw: raw,
            response_deserializer=cpb.ControlMessage.FromString,
        )
        with pytest.raises(grpc.RpcError) as error:
            list(connect(iter([b"\xff\xff\xff\xff not protobuf"]), timeout=30))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed" in error.value.details()
    assert cp.server.services is not None
    assert cp.server.services.fleet.get(enrolled.agent_id).state == "enrolled"  # never connected


def test_agent_that_hangs_up_is_marked_disconnected(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    assert cp.server.services is not None
    fleet = cp.server.services.fleet
    hung_up = threading.Event()

    def requests() -> Iterator[cpb.AgentMessage]:
        yield hello(enrolled.agent_id)
        hung_up.wait(30)

    with mtls_channel(cp, enrolled.key_pem, enrolled.certificate_pem) as channel:
        stub = cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]
        call = stub.Connect(requests(), timeout=30)
        assert next(call).HasField("desired_state")
        assert fleet.get(enrolled.agent_id).state == "connected"
        call.cancel()
        hung_up.set()
    wait_until(lambda: fleet.get(enrolled.agent_id).state == "disconnected", "marked disconnected")


def test_hostile_telemetry_is_counted_and_the_stream_stays_up(cp: RunningControlPlane) -> None:
    enrolled = enroll_new(cp)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)

    def sample(seq: int, *metrics: cpb.MetricValue, at_ms: int = now_ms) -> cpb.TelemetrySample:
        return cpb.TelemetrySample(seq=seq, collected_at_ms=at_ms, metrics=list(metrics))

    memory = cpb.MetricValue(name="outpost_memory_total_bytes", value=1024)
    batch = cpb.TelemetryBatch(
        samples=[
            sample(
                1, memory, cpb.MetricValue(name="outpost_memory_used_bytes", value=float("nan"))
            ),
            sample(2, cpb.MetricValue(name="outpost_memory_used_bytes", value=-5)),
            sample(3, cpb.MetricValue(name="outpost_not_a_metric", value=1)),
            sample(4, memory, at_ms=now_ms + 3_600_000),  # an hour in the future
            sample(5, memory, at_ms=0),  # 1970
            sample(
                6,
                cpb.MetricValue(
                    name="outpost_cpu_utilization_ratio", value=7.5, labels={"cpu": "total"}
                ),
            ),
            sample(6, memory),  # a repeat
            sample(9, memory),  # a gap
        ],
        dropped=2,
    )
    # replayed whole: nothing is stored twice
    acks = sent_twice(cp, enrolled, cpb.AgentMessage(telemetry=batch), "telemetry_ack")
    assert acks == [9, 9]  # everything handled, so the agent may forget all of it
    assert cp.server.services is not None
    counters = cp.server.services.telemetry.counters(enrolled.agent_id)
    assert counters.received == 16
    assert counters.stored == 5  # seqs 1, 2, 3, 6 and 9 (with their valid metrics only)
    # Per batch: NaN, negative bytes, unknown name, ratio 7.5, the future and the 1970 sample;
    # the replayed batch's two whole-sample rejects are turned away again.
    assert counters.rejected == 6 + 2
    assert counters.duplicates == 1 + 6  # the repeat of 6, then the replayed batch's new ones
    assert counters.dropped_by_agent == 2  # reported twice, counted once
    latest = cp.server.services.telemetry.latest(enrolled.agent_id)
    assert latest is not None
    assert [m.name for m in latest.metrics] == ["outpost_memory_total_bytes"]
