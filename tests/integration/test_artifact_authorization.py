"""Who may fetch registry blobs and find peers on the control plane's mutual-TLS port: only an
enrolled, unrevoked agent, and only the artifacts its current desired state names."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import gguf
import grpc
import numpy as np
import pytest
from sqlmodel import select

from agent.control.identity import build_csr, generate_key
from common.artifacts import MESSAGE_BYTES, manifest_of_file
from common.control import AgentStatus, Hardware, Hello, ItemState, ItemStatus
from common.proto_convert import manifest_from_pb
from controlplane.db.models import AuditEvent
from controlplane.model_assignments import ServingParameters
from controlplane.pki import CertificateAuthority
from controlplane.services import ControlPlaneServices
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.integration.test_control_plane_bad_input import Enrolled, ca_pem, enroll, mtls_channel
from tests.unit.test_controlplane_api import enroll as enroll_row
from tests.unit.test_gguf_info import write_adapter

MALFORMED = ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "sha256:" + "0" * 64]


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    root = tmp_path_factory.mktemp("cp")
    with RunningControlPlane(controlplane_settings(root, None)) as running:
        yield running


@pytest.fixture(scope="module")
def services(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF of a little over 3 MiB: a Fetch of all of it takes several messages."""
    path = tmp_path_factory.mktemp("model") / "blob.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    values = np.random.default_rng(7).standard_normal(800_000).astype(np.float32)
    writer.add_tensor("w.weight", values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert path.stat().st_size > 3 * MESSAGE_BYTES
    return path


@pytest.fixture(scope="module")
def sha256(services: ControlPlaneServices, model_file: Path) -> str:
    return services.models.import_file(model_file, name="blob", actor="test").sha256


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GGUF LoRA adapter for the model's architecture (llama)."""
    return write_adapter(tmp_path_factory.mktemp("adapter") / "lora.gguf", seed=11)


@pytest.fixture(scope="module")
def adapter_sha256(services: ControlPlaneServices, adapter_file: Path) -> str:
    return services.models.import_file(adapter_file, name="blob-lora", actor="test").sha256


def enroll_agent(cp: RunningControlPlane, site: str = "") -> Enrolled:
    agent_id, key = str(uuid.uuid4()), generate_key()
    token = cp.create_token(site=site) if site else cp.create_token()
    response = enroll(cp, token, build_csr(key, agent_id))
    return Enrolled(agent_id, key, response.certificate_pem)


def artifacts(channel: grpc.Channel) -> cpb_grpc.ArtifactServiceStub:
    return cpb_grpc.ArtifactServiceStub(channel)  # type: ignore[no-untyped-call]


def control(channel: grpc.Channel) -> cpb_grpc.ControlServiceStub:
    return cpb_grpc.ControlServiceStub(channel)  # type: ignore[no-untyped-call]


def fetch(channel: grpc.Channel, sha256: str, offset: int = 0, length: int = 0) -> bytes:
    stub = artifacts(channel)
    request = cpb.FetchRequest(sha256=sha256, offset=offset, length=length)
    data, expected = bytearray(), offset
    for chunk in stub.Fetch(request, timeout=30):
        assert chunk.offset == expected
        assert 0 < len(chunk.data) <= MESSAGE_BYTES
        data += chunk.data
        expected += len(chunk.data)
    return bytes(data)


def refusal(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value


def get_manifest(channel: grpc.Channel, sha256: str) -> cpb.ArtifactManifest:
    answer: cpb.ArtifactManifest = artifacts(channel).GetManifest(
        cpb.ManifestRequest(sha256=sha256), timeout=30
    )
    return answer


def denials(services: ControlPlaneServices, action: str) -> list[str]:
    with services.db.session() as session:
        events = session.exec(
            select(AuditEvent).where(AuditEvent.action == action, AuditEvent.outcome == "denied")
        ).all()
    return [str(e.detail.get("reason", "")) for e in events]


def assign(services: ControlPlaneServices, kind: str, target: str, alias: str = "blob") -> int:
    view = services.assignments.assign(
        "blob", target_kind=kind, target=target, parameters=ServingParameters(alias), actor="t"
    )
    return view.id


def find_peers(channel: grpc.Channel, sha256: str) -> list[str]:
    answer = control(channel).FindPeers(cpb.FindPeersRequest(sha256=sha256), timeout=30)
    return list(answer.addresses)


def find_site_agent(channel: grpc.Channel, agent: str) -> tuple[str, str]:
    answer = control(channel).FindSiteAgent(cpb.FindSiteAgentRequest(agent=agent), timeout=30)
    return answer.agent_id, answer.inference_address


# -- ArtifactService -------------------------------------------------------------------------


def test_only_an_assigned_artifact_may_be_fetched(
    cp: RunningControlPlane, services: ControlPlaneServices, model_file: Path, sha256: str
) -> None:
    agent = enroll_agent(cp)
    before = len(denials(services, "fetch-artifact"))
    with mtls_channel(cp, agent.key_pem, agent.certificate_pem) as channel:
        for call in (lambda: get_manifest(channel, sha256), lambda: fetch(channel, sha256)):
            error = refusal(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert f"is not assigned to agent {agent.agent_id}" in error.details()
        reasons = denials(services, "fetch-artifact")[before:]
        assert len(reasons) == 2
        assert all(agent.agent_id in reason for reason in reasons)

        assignment = assign(services, "agent", agent.agent_id)
        manifest = manifest_from_pb(get_manifest(channel, sha256))
        assert manifest == manifest_of_file(model_file)
        content = model_file.read_bytes()
        assert fetch(channel, sha256) == content
        assert fetch(channel, sha256, offset=0, length=4096) == content[:4096]
        middle = MESSAGE_BYTES - 10
        assert (
            fetch(channel, sha256, middle, 20 + MESSAGE_BYTES)
            == content[middle : middle + 20 + MESSAGE_BYTES]
        )
        assert fetch(channel, sha256, offset=len(content)) == b""
        past = refusal(lambda: fetch(channel, sha256, offset=len(content) + 1))
        assert past.code() == grpc.StatusCode.OUT_OF_RANGE
        too_long = refusal(lambda: fetch(channel, sha256, offset=10, length=len(content)))
        assert too_long.code() == grpc.StatusCode.OUT_OF_RANGE

        # Once unassigned it is refused again.
        services.assignments.unassign(assignment, actor="t")
        error = refusal(lambda: get_manifest(channel, sha256))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_another_agents_assignment_authorizes_nobody_else(
    cp: RunningControlPlane, services: ControlPlaneServices, sha256: str
) -> None:
    owner, other = enroll_agent(cp), enroll_agent(cp)
    assignment = assign(services, "agent", owner.agent_id)
    try:
        with mtls_channel(cp, owner.key_pem, owner.certificate_pem) as channel:
            assert get_manifest(channel, sha256).sha256 == sha256
        with mtls_channel(cp, other.key_pem, other.certificate_pem) as channel:
            error = refusal(lambda: fetch(channel, sha256))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        services.assignments.unassign(assignment, actor="t")


def test_site_and_selector_assignments_authorize_their_agents(
    cp: RunningControlPlane, services: ControlPlaneServices, model_file: Path, sha256: str
) -> None:
    site = f"site-{uuid.uuid4().hex[:8]}"
    agent = enroll_agent(cp, site)
    by_site = assign(services, "site", site)
    with mtls_channel(cp, agent.key_pem, agent.certificate_pem) as channel:
        assert fetch(channel, sha256, length=100) == model_file.read_bytes()[:100]
        services.assignments.unassign(by_site, actor="t")
        assert refusal(lambda: fetch(channel, sha256)).code() == grpc.StatusCode.PERMISSION_DENIED
        zone = uuid.uuid4().hex[:8]
        services.fleet.set_labels(agent.agent_id, {"zone": zone}, actor="t")
        by_selector = assign(services, "selector", f"zone={zone}")
        assert get_manifest(channel, sha256).size_bytes == model_file.stat().st_size
        services.assignments.unassign(by_selector, actor="t")


def test_an_assigned_adapter_may_be_fetched_by_its_agent_only(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    adapter_file: Path,
    sha256: str,
    adapter_sha256: str,
) -> None:
    owner, other = enroll_agent(cp), enroll_agent(cp)
    view = services.assignments.assign(
        "blob",
        target_kind="agent",
        target=owner.agent_id,
        parameters=ServingParameters("blob", adapters={"sql": "blob-lora"}),
        actor="t",
    )
    plain = assign(services, "agent", other.agent_id)  # the model, without the adapter
    try:
        [wanted] = services.desired.current(owner.agent_id).models
        assert [(a.name, a.sha256) for a in wanted.adapters] == [("sql", adapter_sha256)]
        with mtls_channel(cp, owner.key_pem, owner.certificate_pem) as channel:
            manifest = manifest_from_pb(get_manifest(channel, adapter_sha256))
            assert manifest == manifest_of_file(adapter_file)
            assert fetch(channel, adapter_sha256) == adapter_file.read_bytes()
            assert get_manifest(channel, sha256).sha256 == sha256  # and its model
        with mtls_channel(cp, other.key_pem, other.certificate_pem) as channel:
            assert get_manifest(channel, sha256).sha256 == sha256
            for call in (
                lambda: get_manifest(channel, adapter_sha256),
                lambda: fetch(channel, adapter_sha256),
            ):
                error = refusal(call)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                assert f"is not assigned to agent {other.agent_id}" in error.details()
        # Assigned again without the adapter: the owner may no longer fetch it.
        services.assignments.assign(
            "blob",
            target_kind="agent",
            target=owner.agent_id,
            parameters=ServingParameters("blob"),
            actor="t",
        )
        with mtls_channel(cp, owner.key_pem, owner.certificate_pem) as channel:
            error = refusal(lambda: fetch(channel, adapter_sha256))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        services.assignments.unassign(view.id, actor="t")
        services.assignments.unassign(plain, actor="t")


def test_a_revoked_agent_is_refused_even_when_assigned(
    cp: RunningControlPlane, services: ControlPlaneServices, sha256: str
) -> None:
    agent = enroll_agent(cp)
    assignment = assign(services, "agent", agent.agent_id)
    services.fleet.revoke(agent.agent_id, actor="t")
    with mtls_channel(cp, agent.key_pem, agent.certificate_pem) as channel:
        for call in (lambda: get_manifest(channel, sha256), lambda: fetch(channel, sha256)):
            error = refusal(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "revoked" in error.details()
    services.assignments.unassign(assignment, actor="t")


def test_an_unknown_artifact_is_refused_not_revealed(
    cp: RunningControlPlane, services: ControlPlaneServices, sha256: str
) -> None:
    agent = enroll_agent(cp)
    assignment = assign(services, "agent", agent.agent_id)
    with mtls_channel(cp, agent.key_pem, agent.certificate_pem) as channel:
        unknown = "0" * 64
        error = refusal(lambda: get_manifest(channel, unknown))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    services.assignments.unassign(assignment, actor="t")


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_sha256_is_invalid_argument(
    cp: RunningControlPlane, sha256: str, value: str
) -> None:
    agent = enroll_agent(cp)
    with mtls_channel(cp, agent.key_pem, agent.certificate_pem) as channel:
        for call in (
            lambda: get_manifest(channel, value),
            lambda: fetch(channel, value),
            lambda: find_peers(channel, value),
        ):
            error = refusal(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "sha256" in error.details()


def test_without_a_client_certificate_the_call_fails(cp: RunningControlPlane, sha256: str) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem(cp))
    with grpc.secure_channel(f"127.0.0.1:{cp.ports.mtls}", credentials) as channel:
        for call in (
            lambda: get_manifest(channel, sha256),
            lambda: fetch(channel, sha256),
            lambda: find_peers(channel, sha256),
        ):
            error = refusal(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE  # the TLS handshake fails


def test_a_certificate_of_another_ca_fails(
    cp: RunningControlPlane, tmp_path: Path, sha256: str
) -> None:
    other_ca, _ = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    agent_id, key = str(uuid.uuid4()), generate_key()
    _, forged = other_ca.sign_agent_csr(
        build_csr(key, agent_id), expected_agent_id=None, valid_for=timedelta(days=1)
    )
    with mtls_channel(cp, key, forged.pem) as channel:
        error = refusal(lambda: get_manifest(channel, sha256))
        assert error.code() == grpc.StatusCode.UNAVAILABLE


# -- FindPeers -------------------------------------------------------------------------------


def peer(
    services: ControlPlaneServices,
    site: str,
    address: str,
    *items: ItemStatus,
    name: str = "peer",
) -> str:
    agent_id = enroll_row(services, name, site=site)
    services.fleet.record_hello(agent_id, Hello(agent_id, "1.0", Hardware(), peer_address=address))
    services.fleet.record_status(agent_id, AgentStatus(0, items))
    return agent_id


def held(sha256: str, state: ItemState, error: str = "", serving_sha256: str = "") -> ItemStatus:
    return ItemStatus(
        "model", "blob", state, error=error, sha256=sha256, serving_sha256=serving_sha256
    )


def test_find_peers_answers_only_ready_connected_peers_of_the_same_site(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    site = f"branch-{uuid.uuid4().hex[:8]}"
    sha = uuid.uuid4().hex * 2
    newer = uuid.uuid4().hex * 2
    caller = enroll_agent(cp, site)
    ready = peer(services, site, "10.0.0.1:8703", held(sha, ItemState.READY))
    # Serving it while a newer version failed: it still holds the blob.
    peer(
        services,
        site,
        "10.0.0.2:8703",
        held(newer, ItemState.FAILED, error="bad", serving_sha256=sha),
    )
    peer(services, site, "10.0.0.3:8703", held(sha, ItemState.DOWNLOADING))
    peer(services, site, "10.0.0.4:8703", held(sha, ItemState.VERIFYING))
    peer(services, site, "", held(sha, ItemState.READY))  # serves no peers
    peer(services, site, "10.0.0.5:8703", held(newer, ItemState.READY))  # another version
    gone = peer(services, site, "10.0.0.6:8703", held(sha, ItemState.READY))
    services.fleet.mark_disconnected(gone)
    revoked = peer(services, site, "10.0.0.7:8703", held(sha, ItemState.READY))
    services.fleet.revoke(revoked, actor="t")
    peer(services, f"{site}-x", "10.0.0.8:8703", held(sha, ItemState.READY))  # another site
    peer(services, "", "10.0.0.9:8703", held(sha, ItemState.READY))  # no site
    # The caller itself reports it ready too: it is not its own peer.
    services.fleet.record_hello(
        caller.agent_id, Hello(caller.agent_id, "1.0", Hardware(), peer_address="10.0.1.1:8703")
    )
    services.fleet.record_status(caller.agent_id, AgentStatus(0, (held(sha, ItemState.READY),)))

    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        # Most recently seen first.
        assert find_peers(channel, sha) == ["10.0.0.2:8703", "10.0.0.1:8703"]
        assert find_peers(channel, newer) == ["10.0.0.5:8703"]
        assert find_peers(channel, "f" * 64) == []
        services.fleet.record_status(ready, AgentStatus(0, (held(sha, ItemState.READY),)))
        assert find_peers(channel, sha) == ["10.0.0.1:8703", "10.0.0.2:8703"]


def test_find_peers_answers_at_most_eight(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    site = f"big-{uuid.uuid4().hex[:8]}"
    sha = uuid.uuid4().hex * 2
    caller = enroll_agent(cp, site)
    for index in range(10):
        peer(services, site, f"10.1.0.{index}:8703", held(sha, ItemState.READY))
    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        assert find_peers(channel, sha) == [f"10.1.0.{i}:8703" for i in range(9, 1, -1)]


def test_an_agent_without_a_site_has_no_peers(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    sha = uuid.uuid4().hex * 2
    caller = enroll_agent(cp)
    peer(services, "", "10.2.0.1:8703", held(sha, ItemState.READY))
    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        assert find_peers(channel, sha) == []


def test_a_revoked_agent_cannot_find_peers(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    site = f"rev-{uuid.uuid4().hex[:8]}"
    sha = uuid.uuid4().hex * 2
    caller = enroll_agent(cp, site)
    peer(services, site, "10.3.0.1:8703", held(sha, ItemState.READY))
    services.fleet.revoke(caller.agent_id, actor="t")
    before = len(denials(services, "find-peers"))
    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        error = refusal(lambda: find_peers(channel, sha))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(denials(services, "find-peers")) == before + 1


# -- FindSiteAgent ---------------------------------------------------------------------------


def forwardable(services: ControlPlaneServices, site: str, name: str, address: str) -> str:
    agent_id = enroll_row(services, name, site=site)
    services.fleet.record_hello(
        agent_id, Hello(agent_id, "1.0", Hardware(), inference_address=address)
    )
    return agent_id


def test_find_site_agent_answers_a_connected_forwardable_agent_of_the_same_site(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    site = f"shop-{uuid.uuid4().hex[:8]}"
    caller = enroll_agent(cp, site)
    shelf = forwardable(services, site, "shelf", "10.4.0.1:8080")
    forwardable(services, f"{site}-x", "elsewhere", "10.4.0.2:8080")  # another site
    forwardable(services, site, "no-address", "")  # takes no forwarded requests
    gone = forwardable(services, site, "gone", "10.4.0.3:8080")
    services.fleet.mark_disconnected(gone)
    revoked = forwardable(services, site, "revoked", "10.4.0.4:8080")
    services.fleet.revoke(revoked, actor="t")
    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        assert find_site_agent(channel, shelf) == (shelf, "10.4.0.1:8080")
        assert find_site_agent(channel, "shelf") == (shelf, "10.4.0.1:8080")
        for unknown in ("elsewhere", "no-address", "gone", "revoked", gone, "nobody"):
            error = refusal(lambda name=unknown: find_site_agent(channel, name))  # type: ignore[misc]
            assert error.code() == grpc.StatusCode.NOT_FOUND, unknown
        for bad in ("", "x" * 10_000, "bad\nname"):
            error = refusal(lambda name=bad: find_site_agent(channel, name))  # type: ignore[misc]
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, repr(bad)


def test_an_agent_without_a_site_finds_no_site_agent(
    cp: RunningControlPlane, services: ControlPlaneServices
) -> None:
    caller = enroll_agent(cp)
    lonely = forwardable(services, "", "lonely", "10.5.0.1:8080")
    with mtls_channel(cp, caller.key_pem, caller.certificate_pem) as channel:
        error = refusal(lambda: find_site_agent(channel, lonely))
        assert error.code() == grpc.StatusCode.NOT_FOUND
