"""Serving peers: StoreBlobs, the control link's statuses and artifact sources, a standalone
ManagedAgent, and the settings that configure them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import pytest

from agent.artifacts.blobs import StoreBlobs
from agent.artifacts.download import Downloader, Progress
from agent.artifacts.grpc_source import CHANNEL_OPTIONS, GrpcChunkSource
from agent.artifacts.store import ArtifactError, ArtifactStore
from agent.cli import main as agent_main
from agent.control.backoff import Backoff
from agent.control.client import MAX_PEERS, ControlLink, ControlLinkSettings
from agent.control.identity import IdentityStore, StoredIdentity
from agent.control.lookups import ControlLookups
from agent.control.state_store import DesiredStateStore
from agent.managed import ManagedAgent
from agent.settings import (
    AgentSettings,
    ModelSettings,
    SettingsError,
    apply_environment,
    load_toml,
    validate,
)
from common.artifact_servicer import ArtifactServicer, add_artifact_service
from common.artifacts import manifest_of_file
from common.control import (
    AgentStatus,
    DesiredState,
    Hardware,
    Hello,
    ItemState,
    ItemStatus,
    ModelAssignment,
)
from common.proto_convert import status_from_pb
from outpost.v1 import control_pb2 as cpb
from outpost.v1 import control_pb2_grpc as cpb_grpc
from tests.agent_harness import RunningAgent
from tests.unit.test_model_pool_swap import TIMEOUT_S, FakeModels, tiny_gguf

T = TypeVar("T")


def run(work: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(work(), TIMEOUT_S * 3)

    return asyncio.run(main())


def install(store: ArtifactStore, source: Path) -> str:
    """Adopts a copy of `source` into `store` (as a verified download would); its sha256."""
    sha256 = manifest_of_file(source).sha256
    staged = store.staging_dir() / source.name
    staged.write_bytes(source.read_bytes())
    store.adopt(sha256, staged)
    return sha256


def damage(path: Path) -> None:
    path.chmod(0o644)  # blobs are read-only
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@contextlib.asynccontextmanager
async def artifact_server(store: ArtifactStore) -> AsyncIterator[str]:
    """An ArtifactService over `store` on 127.0.0.1; yields its address."""
    server = grpc.aio.server()
    add_artifact_service(server, ArtifactServicer(StoreBlobs(store)))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


# -- StoreBlobs --------------------------------------------------------------------------------


def test_store_blobs_serves_only_complete_verified_blobs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    model = tiny_gguf(tmp_path / "m.gguf", "m", floats=4096)
    sha256 = install(store, model)
    other = tiny_gguf(tmp_path / "other.gguf", "other")
    other_manifest = manifest_of_file(other)
    store.save_partial(other_manifest, 0)  # a partial download is never served
    store.open_partial(other_manifest.sha256).close()
    blobs = StoreBlobs(store)
    assert blobs.manifest(sha256) == manifest_of_file(model)
    assert blobs.manifest(other_manifest.sha256) is None
    assert blobs.manifest("0" * 64) is None
    with blobs.open(sha256) as handle:
        assert handle.read() == model.read_bytes()


def test_store_blobs_refuses_a_blob_damaged_on_disk_after_verification(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    sha256 = install(store, tiny_gguf(tmp_path / "m.gguf", "m"))
    damage(store.blob_path(sha256))
    assert StoreBlobs(store).manifest(sha256) is None

    async def over_grpc() -> str:
        async with (
            artifact_server(store) as address,
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
        ):
            with pytest.raises(ArtifactError) as refused:
                await GrpcChunkSource(channel, "peer").manifest(sha256)
        return str(refused.value)

    assert "NOT_FOUND" in run(over_grpc)


def test_a_peer_whose_blob_was_damaged_after_serving_it_is_caught_by_the_receiver(
    tmp_path: Path,
) -> None:
    """Its manifest is cached, so the peer still offers it; every chunk is verified on arrival
    and the next source (the control plane) supplies the bytes instead."""
    model = tiny_gguf(tmp_path / "m.gguf", "m", floats=4096)
    peer_store = ArtifactStore(tmp_path / "peer")
    control_store = ArtifactStore(tmp_path / "control")
    sha256 = install(peer_store, model)
    install(control_store, model)
    peer_blobs = StoreBlobs(peer_store)
    assert peer_blobs.manifest(sha256) is not None  # served once: cached
    damage(peer_store.blob_path(sha256))
    reports: list[Progress] = []

    async def fetch() -> bytes:
        server = grpc.aio.server()
        add_artifact_service(server, ArtifactServicer(peer_blobs))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with (
                artifact_server(control_store) as control_address,
                grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=CHANNEL_OPTIONS) as peer,
                grpc.aio.insecure_channel(control_address, options=CHANNEL_OPTIONS) as control,
            ):
                sources = [GrpcChunkSource(peer, "peer"), GrpcChunkSource(control, "control")]
                loader = Downloader(ArtifactStore(tmp_path / "me"), retry_delay_s=0.001)
                blob = await loader.fetch_sha256(sha256, sources, on_progress=reports.append)
                return blob.read_bytes()
        finally:
            await server.stop(None)

    assert run(fetch) == model.read_bytes()
    assert {r.source for r in reports} == {"peer", "control"}


# -- ControlLink: statuses and artifact sources, against a fake control plane ------------------


class FakeControlPlane(cpb_grpc.EnrollmentServiceServicer, cpb_grpc.ControlServiceServicer):
    """Discover, Connect (records what the agent sends, sends nothing) and FindPeers."""

    def __init__(self) -> None:
        self.port = 0
        self.received: asyncio.Queue[cpb.AgentMessage] = asyncio.Queue()
        self.end_session = asyncio.Event()
        self.peers: list[str] = []
        self.find_peers_status: grpc.StatusCode | None = None
        self.peer_requests: list[str] = []

    async def Discover(
        self, request: cpb.DiscoverRequest, context: grpc.aio.ServicerContext
    ) -> cpb.DiscoverResponse:
        return cpb.DiscoverResponse(mtls_port=self.port)

    async def Connect(
        self, request_iterator: AsyncIterator[cpb.AgentMessage], context: grpc.aio.ServicerContext
    ) -> None:
        async def pump() -> None:
            async for message in request_iterator:
                await self.received.put(message)

        reader = asyncio.ensure_future(pump())
        ending = asyncio.ensure_future(self.end_session.wait())
        await asyncio.wait({reader, ending}, return_when=asyncio.FIRST_COMPLETED)
        reader.cancel()
        ending.cancel()
        if self.end_session.is_set():
            self.end_session.clear()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    async def FindPeers(
        self, request: cpb.FindPeersRequest, context: grpc.aio.ServicerContext
    ) -> cpb.FindPeersResponse:
        self.peer_requests.append(request.sha256)
        if self.find_peers_status is not None:
            await context.abort(self.find_peers_status, "no peers for you")
        return cpb.FindPeersResponse(addresses=self.peers)

    async def next_message(self) -> cpb.AgentMessage:
        return await asyncio.wait_for(self.received.get(), TIMEOUT_S)


@dataclass
class LinkUnderTest:
    link: ControlLink
    control: FakeControlPlane
    identity: StoredIdentity
    control_store: ArtifactStore


@contextlib.asynccontextmanager
async def fake_control_plane(tmp_path: Path) -> AsyncIterator[LinkUnderTest]:
    """A fake control plane (also an ArtifactService over its own store) and an insecure
    ControlLink to it; the link is not running yet."""
    control = FakeControlPlane()
    control_store = ArtifactStore(tmp_path / "control-plane")
    server = grpc.aio.server()
    add_enrollment = cpb_grpc.add_EnrollmentServiceServicer_to_server
    add_control = cpb_grpc.add_ControlServiceServicer_to_server
    add_enrollment(control, server)  # type: ignore[no-untyped-call]
    add_control(control, server)  # type: ignore[no-untyped-call]
    add_artifact_service(server, ArtifactServicer(StoreBlobs(control_store)))
    control.port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{control.port}"
    identity = StoredIdentity(str(uuid.uuid4()), address, control.port, b"", b"", b"")

    async def apply(desired: DesiredState) -> AgentStatus:
        raise AssertionError("the fake control plane sends no desired state")

    def hello(agent_id: str, generation: int) -> Hello:
        return Hello(agent_id, "test", Hardware(), observed_generation=generation)

    link = ControlLink(
        ControlLinkSettings(address, "", "", insecure=True),
        IdentityStore(tmp_path / "agent"),
        DesiredStateStore(tmp_path / "agent"),
        apply,
        hello,
        backoff=Backoff(base=0.001, max_delay=0.002),
    )
    try:
        yield LinkUnderTest(link, control, identity, control_store)
    finally:
        await server.stop(None)


@contextlib.asynccontextmanager
async def running(link: ControlLink, identity: StoredIdentity) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(link.run(identity, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, TIMEOUT_S)


def status(generation: int) -> AgentStatus:
    item = ItemStatus(
        "model",
        "smol",
        ItemState.DOWNLOADING,
        sha256="ab" * 32,
        bytes_done=generation * 100,
        bytes_total=1000,
        rate_bytes_per_s=12.5,
    )
    return AgentStatus(observed_generation=generation, items=(item,))


def test_only_the_latest_status_is_kept_and_sent_once_per_session(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_control_plane(tmp_path) as t:
            t.link.publish_status(status(1))
            t.link.publish_status(status(2))  # before any session: replaces status 1
            assert t.link.observed_generation == 2
            async with running(t.link, t.identity):
                hello = await t.control.next_message()
                assert hello.hello.observed_generation == 2
                sent = await t.control.next_message()
                assert status_from_pb(sent.status) == status(2)
                t.link.publish_status(status(3))
                t.link.publish_status(status(4))  # no await between: only 4 goes out
                sent = await t.control.next_message()
                assert status_from_pb(sent.status) == status(4)
                # A new session sends its Hello and the latest status again, once.
                t.control.end_session.set()
                hello = await t.control.next_message()
                assert hello.WhichOneof("body") == "hello"
                assert hello.hello.observed_generation == 4
                sent = await t.control.next_message()
                assert status_from_pb(sent.status) == status(4)
                t.link.publish_status(status(5))
                sent = await t.control.next_message()
                assert status_from_pb(sent.status) == status(5)
            assert t.control.received.empty()

    run(main)


def test_without_a_status_a_session_sends_only_its_hello(tmp_path: Path) -> None:
    async def main() -> None:
        async with fake_control_plane(tmp_path) as t:
            async with running(t.link, t.identity):
                hello = await t.control.next_message()
                assert hello.WhichOneof("body") == "hello"
                t.link.publish_status(status(1))
                assert status_from_pb((await t.control.next_message()).status) == status(1)
            assert t.control.received.empty()

    run(main)


def test_artifact_sources_list_peers_first_and_the_control_plane_last(tmp_path: Path) -> None:
    model = tiny_gguf(tmp_path / "m.gguf", "m", floats=4096)

    async def main() -> None:
        async with fake_control_plane(tmp_path) as t:
            sha256 = install(t.control_store, model)
            lookups = ControlLookups(t.link)
            async with lookups.artifact_sources(sha256) as sources:
                assert sources == []  # the control plane has not been reached yet
            assert t.control.peer_requests == []
            t.link.peer_address = "127.0.0.1:7"  # this agent itself
            peer_store = ArtifactStore(tmp_path / "peer")
            install(peer_store, model)
            async with running(t.link, t.identity), artifact_server(peer_store) as peer:
                await t.control.next_message()  # the session is up
                refused = [f"127.0.0.1:{port}" for port in range(1, 11)]  # nothing listens
                t.control.peers = [
                    "127.0.0.1:7",
                    "not an address",
                    "host:99999",
                    "bad\nhost:80",
                    "x" * 300 + ":80",
                    peer,
                    *refused,
                ]
                async with lookups.artifact_sources(sha256) as sources:
                    names = [source.name for source in sources]
                    # At most MAX_PEERS valid addresses are kept; this agent's own is skipped.
                    assert names == [
                        f"peer {peer}",
                        *(f"peer {a}" for a in refused[: MAX_PEERS - 2]),
                        "control plane",
                    ]
                    reports: list[Progress] = []
                    loader = Downloader(ArtifactStore(tmp_path / "agent" / "artifacts"))
                    blob = await loader.fetch_sha256(
                        sha256, sources, size_bytes=model.stat().st_size, on_progress=reports.append
                    )
                    assert blob.read_bytes() == model.read_bytes()
                    assert {r.source for r in reports} == {f"peer {peer}"}
                assert t.control.peer_requests == [sha256]

                t.control.find_peers_status = grpc.StatusCode.UNIMPLEMENTED  # an older one
                async with lookups.artifact_sources(sha256) as sources:
                    assert [source.name for source in sources] == ["control plane"]
                    manifest = await sources[0].manifest(sha256)
                    assert manifest == manifest_of_file(model)

    run(main)


# -- ManagedAgent without a control plane ------------------------------------------------------


@contextlib.contextmanager
def standalone_agent(
    state_dir: Path, models: FakeModels, peer_address: str = "", inference_address: str = ""
) -> Iterator[tuple[RunningAgent, ManagedAgent]]:
    link = ControlLinkSettings(control_plane="", join_token="", ca_fingerprint="")
    companion = ManagedAgent(
        state_dir,
        link,
        ModelSettings(path=Path(), alias="model", threads=2),
        peer_address=peer_address,
        inference_address=inference_address,
    )
    settings = AgentSettings(host="127.0.0.1", grpc_port=0, http_port=0, state_dir=state_dir)
    with RunningAgent(settings, models, companion) as agent:
        agent.wait_until_serving()
        yield agent, companion


def test_a_standalone_agent_serves_its_stored_state_and_its_blobs_to_peers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "agent"
    model = tiny_gguf(tmp_path / "m.gguf", "m", floats=4096)
    sha256 = install(ArtifactStore(state_dir / "artifacts"), model)
    size = model.stat().st_size
    assignment = ModelAssignment(alias="tiny", sha256=sha256, size_bytes=size, context_length=256)
    DesiredStateStore(state_dir).save(DesiredState(3, (assignment,)))
    models = FakeModels()

    with (
        caplog.at_level(logging.INFO),
        standalone_agent(
            state_dir, models, peer_address="127.0.0.1:0", inference_address="127.0.0.1:0"
        ) as (agent, companion),
    ):
        # HOST:0 became the port the gRPC (HTTP) server bound, as the hello reports.
        assert companion.link.peer_address == f"127.0.0.1:{agent.ports.grpc}"
        hello = companion._hello("a-1", 3)
        assert hello.peer_address == f"127.0.0.1:{agent.ports.grpc}"
        assert hello.inference_address == f"127.0.0.1:{agent.ports.http}"
        assert companion.link.observed_generation == 3
        assert companion.rollout.records["tiny"].serving == sha256
        listed = httpx.get(f"{agent.http_base}/v1/models", timeout=30).json()
        assert [m["id"] for m in listed["data"]] == ["tiny"]
        completion = httpx.post(
            f"{agent.http_base}/v1/completions",
            json={"model": "tiny", "prompt": "hi", "max_tokens": 4},
            timeout=30,
        )
        assert completion.status_code == 200, completion.text
        assert completion.json()["choices"][0]["text"] == f"{sha256}.gguf"

        async def fetch_from_agent() -> bytes:
            async with grpc.aio.insecure_channel(
                agent.grpc_target, options=CHANNEL_OPTIONS
            ) as channel:
                loader = Downloader(ArtifactStore(tmp_path / "neighbour"))
                source = GrpcChunkSource(channel, "peer")
                blob = await loader.fetch_sha256(sha256, [source], size_bytes=size)
                return blob.read_bytes()

        assert run(fetch_from_agent) == model.read_bytes()
    messages = [r.getMessage() for r in caplog.records]
    assert any("no control plane configured and not enrolled" in m for m in messages)
    assert models.loaded == [f"{sha256}.gguf"]


def test_without_a_peer_address_an_agent_serves_no_artifacts(tmp_path: Path) -> None:
    state_dir = tmp_path / "agent"
    sha256 = install(ArtifactStore(state_dir / "artifacts"), tiny_gguf(tmp_path / "m.gguf", "m"))
    with standalone_agent(state_dir, FakeModels()) as (agent, companion):
        assert companion.link.peer_address == ""

        async def ask() -> str:
            async with grpc.aio.insecure_channel(agent.grpc_target) as channel:
                with pytest.raises(ArtifactError) as refused:
                    await GrpcChunkSource(channel, "peer").manifest(sha256)
            return str(refused.value)

        assert "UNIMPLEMENTED" in run(ask)


# -- settings ----------------------------------------------------------------------------------


def managed(**values: Any) -> AgentSettings:
    return validate(AgentSettings(state_dir=Path("/var/lib/outpost"), **values), managed=True)


@pytest.mark.parametrize(
    "address", ["127.0.0.1:0", "10.1.2.3:50051", "agent-7.branch.example:8701", "[::1]:50051"]
)
@pytest.mark.parametrize("name", ["peer_address", "inference_address"])
def test_good_addresses_are_accepted(name: str, address: str) -> None:
    assert getattr(managed(**{name: address}), name) == address


@pytest.mark.parametrize(
    "address",
    [
        "agent-7",
        ":50051",
        "agent-7:",
        "agent-7:http",
        "agent-7:65536",
        "agent-7:-1",
        "agent-7: 80",
        "agent-7:²",  # a digit to str.isdigit, not to int()
        "agent-7:٣",  # an Arabic-Indic three
        "agent 7:80",
        "agent-7\n:80",
    ],
)
@pytest.mark.parametrize(
    ("name", "port_zero"), [("peer_address", "gRPC"), ("inference_address", "HTTP")]
)
def test_bad_addresses_are_refused_with_a_clear_message(
    name: str, port_zero: str, address: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        managed(**{name: address})
    assert str(refused.value) == (
        f"{name} must be HOST:PORT (PORT 0: the {port_zero} port), got {address!r}"
    )


def test_download_rate_limit_must_be_a_non_negative_integer(tmp_path: Path) -> None:
    assert managed(download_rate_limit=0).download_rate_limit == 0
    assert managed(download_rate_limit=8_000_000).download_rate_limit == 8_000_000
    with pytest.raises(SettingsError, match="download_rate_limit must not be negative"):
        managed(download_rate_limit=-1)
    environ = {"OUTPOST_AGENT_DOWNLOAD_RATE_LIMIT": "8 MB/s"}
    with pytest.raises(SettingsError, match="environment download_rate_limit: expected an int"):
        apply_environment(AgentSettings(), environ)
    environ = {"OUTPOST_AGENT_DOWNLOAD_RATE_LIMIT": " 4096 ", "OUTPOST_AGENT_PEER_ADDRESS": "a:1"}
    settings = apply_environment(AgentSettings(), environ)
    assert (settings.download_rate_limit, settings.peer_address) == (4096, "a:1")
    config = tmp_path / "agent.toml"
    config.write_text("download_rate_limit = true\n")
    with pytest.raises(SettingsError, match="download_rate_limit: expected an integer, got True"):
        load_toml(config)
    config.write_text('download_rate_limit = 1024\npeer_address = "10.0.0.5:0"\n')
    loaded = load_toml(config)
    assert (loaded.download_rate_limit, loaded.peer_address) == (1024, "10.0.0.5:0")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--peer-address", "nope"], "peer_address must be HOST:PORT"),
        (["--peer-address", "agent:²"], "peer_address must be HOST:PORT"),
        (["--download-rate-limit", "-5"], "download_rate_limit must not be negative"),
    ],
)
def test_outpost_agent_run_refuses_bad_peer_settings_with_exit_2(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = agent_main(["run", "--state-dir", str(tmp_path / "agent"), *flags])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("outpost-agent: error: ")
    assert message in err
    assert not (tmp_path / "agent").exists()  # refused before anything was written
