"""ModelRollout: downloads over fake sources, fake backends in a real pool, records on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.artifacts.download import ChunkSource, Downloader
from agent.artifacts.store import ArtifactStore
from agent.control.backoff import Backoff
from agent.model_pool import ModelPool
from agent.model_rollout import RECORDS_FILE, AliasRecord, ModelRollout
from agent.settings import ModelSettings
from common.artifacts import ArtifactManifest, manifest_of_stream
from common.control import (
    AdapterAssignment,
    DesiredState,
    ItemState,
    ItemStatus,
    ModelAssignment,
)
from tests.unit.test_model_pool_swap import TIMEOUT_S, FakeModels, answer, tiny_gguf, until

CHUNK = 256  # small chunks: a tiny model is several of them
BLOCK = 100  # blocks do not line up with chunks, as over the wire they need not
DEFAULTS = ModelSettings(path=Path(), alias="model", threads=2)


@dataclass(frozen=True)
class Version:
    """One version of a model as the registry holds it."""

    name: str
    data: bytes
    manifest: ArtifactManifest

    @property
    def sha256(self) -> str:
        return self.manifest.sha256

    @property
    def file_name(self) -> str:  # what the fake backend answers with
        return f"{self.sha256}.gguf"


@pytest.fixture
def versions(tmp_path: Path) -> dict[str, Version]:
    made = {}
    for name in ("v1", "v2", "v3", "v4"):
        data = tiny_gguf(tmp_path / f"{name}.gguf", name, floats=512).read_bytes()
        made[name] = Version(name, data, manifest_of_stream([data], chunk_size=CHUNK))
    return made


class FakeSource:
    """A ChunkSource holding some versions. It can refuse its first `failures` manifest
    requests, hold manifest requests until `answer` is set, and stall a transfer at byte
    `stall_at` until `release` is set."""

    def __init__(
        self,
        held: list[Version],
        *,
        name: str = "control plane",
        failures: int = 0,
        stall_at: int | None = None,
        hold_manifests: bool = False,
    ) -> None:
        self.name = name
        self._held = {v.sha256: v for v in held}
        self.failures = failures
        self.stall_at = stall_at
        self.manifest_calls = 0
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        if not hold_manifests:
            self.answer.set()
        self.stalled = asyncio.Event()
        self.release = asyncio.Event()
        self.reads_closed = asyncio.Event()

    async def manifest(self, sha256: str) -> ArtifactManifest:
        self.manifest_calls += 1
        self.asked.set()
        await self.answer.wait()
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("connection refused")
        if sha256 not in self._held:
            raise LookupError(f"{sha256[:12]} is not held here")
        return self._held[sha256].manifest

    async def read(self, sha256: str, offset: int, length: int) -> AsyncIterator[bytes]:
        data = self._held[sha256].data[offset : offset + length]
        try:
            for start in range(0, len(data), BLOCK):
                if self.stall_at is not None and offset + start >= self.stall_at:
                    self.stalled.set()
                    await self.release.wait()
                yield data[start : start + BLOCK]
        finally:
            self.reads_closed.set()


class RecordingBackoff(Backoff):
    """Tiny delays, each one recorded."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__(base=0.001, max_delay=0.002, jitter=0.0)
        self._delays = delays

    def next_delay(self) -> float:
        delay = super().next_delay()
        self._delays.append(delay)
        return delay


class Agent:
    """A ModelRollout with its store, pool and sources, driven the way ManagedAgent drives it.

    Create inside the event loop (the events belong to it).
    """

    def __init__(self, state_dir: Path, sources: list[FakeSource], models: FakeModels) -> None:
        self.store = ArtifactStore(state_dir / "artifacts")
        self.sources = sources
        self.models = models
        self.pool = ModelPool([], models)
        self.downloaded = asyncio.Event()
        self.reports: list[list[ItemStatus]] = []
        self.backoff_delays: list[float] = []
        self.desired: DesiredState | None = None
        downloader = Downloader(self.store, retry_rounds=1, retry_delay_s=0.001)
        self.rollout = ModelRollout(
            state_dir,
            self.store,
            downloader,
            self.open_sources,
            changed=self.downloaded.set,
            report=self.on_report,
            backoff=lambda: RecordingBackoff(self.backoff_delays),
        )

    @contextlib.asynccontextmanager
    async def open_sources(self, sha256: str) -> AsyncIterator[list[ChunkSource]]:
        yield list(self.sources)

    def on_report(self) -> None:
        if self.desired is not None:
            self.reports.append(self.rollout.statuses(self.desired, self.pool))

    async def apply(self, desired: DesiredState) -> list[ItemStatus]:
        """ManagedAgent.apply: plan, load, settle (a second pass after a fallback), retain."""
        self.desired = desired
        for _ in range(2):
            await self.pool.apply(self.rollout.plan(desired, DEFAULTS))
            if not self.rollout.settle(desired, self.pool):
                break
        self.rollout.retain(desired)
        return self.rollout.statuses(desired, self.pool)

    async def wait_downloaded(self) -> None:
        await asyncio.wait_for(self.downloaded.wait(), TIMEOUT_S)
        self.downloaded.clear()

    def install(self, version: Version) -> None:
        """Puts a verified blob in the store, as a finished download or a bundle does."""
        staged = self.store.staging_dir() / version.name
        staged.write_bytes(version.data)
        self.store.adopt(version.sha256, staged)

    def close(self) -> None:
        self.rollout.close()
        self.pool.close()


def desired(generation: int, *models: tuple[str, Version]) -> DesiredState:
    return DesiredState(
        generation,
        tuple(
            ModelAssignment(
                alias=alias,
                sha256=v.sha256,
                size_bytes=len(v.data),
                context_length=256,
                queue_depth=4,
                model_name="smollm2",
                model_version=v.name,
            )
            for alias, v in models
        ),
    )


def only(statuses: list[ItemStatus]) -> ItemStatus:
    assert len(statuses) == 1, statuses
    return statuses[0]


def records_on_disk(state_dir: Path) -> dict[str, object]:
    document: dict[str, object] = json.loads((state_dir / RECORDS_FILE).read_bytes())
    return document


def run_test(test: Coroutine[Any, Any, None]) -> None:
    """Runs one test's coroutine; every wait in it has a deadline."""
    asyncio.run(test)


async def all_other_tasks_done() -> None:
    """Waits until every task but this one (e.g. a cancelled download) has finished."""
    me = asyncio.current_task()
    await until(lambda: all(t.done() for t in asyncio.all_tasks() if t is not me))


# -- downloads, and serving meanwhile ---------------------------------------------------------


def test_a_missing_version_downloads_while_the_previous_one_keeps_serving(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]

    async def main() -> None:
        source = FakeSource([v1, v2], stall_at=3 * CHUNK)
        agent = Agent(tmp_path, [source], FakeModels())
        agent.install(v1)
        status = only(await agent.apply(desired(1, ("smol", v1))))
        assert (status.state, status.sha256, status.serving_sha256) == (
            ItemState.READY,
            v1.sha256,
            v1.sha256,
        )
        assert source.manifest_calls == 0  # nothing to fetch

        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert status.state == ItemState.PENDING
        assert (status.sha256, status.serving_sha256) == (v2.sha256, v1.sha256)
        assert status.bytes_total == len(v2.data)
        assert await answer(agent.pool) == v1.file_name

        await asyncio.wait_for(source.stalled.wait(), TIMEOUT_S)
        status = only(agent.rollout.statuses(desired(2, ("smol", v2)), agent.pool))
        assert status.state == ItemState.DOWNLOADING
        assert CHUNK <= status.bytes_done < len(v2.data)
        assert status.bytes_total == len(v2.data)
        assert status.rate_bytes_per_s > 0
        assert status.serving_sha256 == v1.sha256
        assert await answer(agent.pool) == v1.file_name  # still v1 while v2 downloads
        assert not agent.store.has(v2.sha256)
        assert agent.store.partials() == [v2.sha256]

        source.release.set()
        await agent.wait_downloaded()
        assert agent.store.blob_path(v2.sha256).read_bytes() == v2.data
        assert agent.store.partials() == []
        # Verified and in the store, not loaded yet.
        status = only(agent.rollout.statuses(desired(2, ("smol", v2)), agent.pool))
        assert status.state == ItemState.LOADING
        verifying = [r[0] for r in agent.reports if r[0].state == ItemState.VERIFYING]
        assert verifying
        assert verifying[-1].bytes_done == len(v2.data)

        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert (status.state, status.serving_sha256) == (ItemState.READY, v2.sha256)
        assert await answer(agent.pool) == v2.file_name
        assert agent.rollout.records == {"smol": AliasRecord(v2.sha256, v1.sha256)}
        assert agent.rollout.sources_used == {v2.sha256: {"control plane"}}
        assert agent.models.loaded == [v1.file_name, v2.file_name]
        agent.close()

    run_test(main())
    on_disk = records_on_disk(tmp_path)
    assert on_disk == {
        "aliases": {"smol": {"serving": versions["v2"].sha256, "previous": v1.sha256, "failed": {}}}
    }


def test_sources_that_all_fail_report_failed_retrying_and_retry_with_the_backoff(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1 = versions["v1"]

    async def main() -> None:
        peer = FakeSource([], name="peer 10.0.0.7:50051", failures=2, hold_manifests=True)
        control = FakeSource([v1], failures=2)
        agent = Agent(tmp_path, [peer, control], FakeModels())
        status = only(await agent.apply(desired(1, ("smol", v1))))
        await asyncio.wait_for(peer.asked.wait(), TIMEOUT_S)
        # Asked, no answer yet: pending, with the size it will have.
        status = only(agent.rollout.statuses(desired(1, ("smol", v1)), agent.pool))
        assert (status.state, status.bytes_total, status.error) == (
            ItemState.PENDING,
            len(v1.data),
            "",
        )
        assert status.serving_sha256 == ""
        peer.answer.set()
        await agent.wait_downloaded()
        failed = [r[0] for r in agent.reports if r[0].state == ItemState.FAILED]
        assert len(failed) == 2
        for item in failed:
            assert item.error.startswith(f"download of {v1.sha256[:12]} failed: ")
            assert item.error.endswith("(retrying)")
            assert "connection refused" in item.error
        assert len(agent.backoff_delays) == 2
        assert all(0 < delay <= 0.002 for delay in agent.backoff_delays)
        # The manifest comes from the control plane (the most trusted source, listed last).
        assert control.manifest_calls == 3
        status = only(await agent.apply(desired(1, ("smol", v1))))
        assert (status.state, status.error) == (ItemState.READY, "")
        agent.close()

    run_test(main())


def test_without_any_source_the_download_waits_for_the_control_plane(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1 = versions["v1"]

    async def main() -> None:
        agent = Agent(tmp_path, [], FakeModels())
        await agent.apply(desired(1, ("smol", v1)))
        await until(lambda: len(agent.backoff_delays) >= 2)
        status = only(agent.rollout.statuses(desired(1, ("smol", v1)), agent.pool))
        assert status.state == ItemState.FAILED
        assert "the control plane has not been reached yet" in status.error
        assert status.error.endswith("(retrying)")
        # The control plane answers: the next attempt fetches it.
        agent.sources.append(FakeSource([v1]))
        await agent.wait_downloaded()
        assert only(await agent.apply(desired(1, ("smol", v1)))).state == ItemState.READY
        agent.close()

    run_test(main())


def test_a_download_no_longer_wanted_is_cancelled_and_its_partial_deleted(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]

    async def main() -> None:
        source = FakeSource([v2], stall_at=2 * CHUNK)
        agent = Agent(tmp_path, [source], FakeModels())
        agent.install(v1)
        await agent.apply(desired(1, ("smol", v1)))
        await agent.apply(desired(2, ("smol", v2)))
        await asyncio.wait_for(source.stalled.wait(), TIMEOUT_S)
        assert agent.store.partials() == [v2.sha256]
        status = only(await agent.apply(desired(3, ("smol", v1))))  # assigned back to v1
        assert (status.state, status.sha256) == (ItemState.READY, v1.sha256)
        await asyncio.wait_for(source.reads_closed.wait(), TIMEOUT_S)
        await all_other_tasks_done()
        await agent.apply(desired(3, ("smol", v1)))
        assert agent.store.partials() == []
        assert agent.store.blobs() == [v1.sha256]
        assert not agent.downloaded.is_set()
        agent.close()

    run_test(main())


def test_close_cancels_downloads_in_flight(tmp_path: Path, versions: dict[str, Version]) -> None:
    v1 = versions["v1"]

    async def main() -> None:
        source = FakeSource([v1], stall_at=CHUNK)
        agent = Agent(tmp_path, [source], FakeModels())
        await agent.apply(desired(1, ("smol", v1)))
        await asyncio.wait_for(source.stalled.wait(), TIMEOUT_S)
        agent.close()
        await asyncio.wait_for(source.reads_closed.wait(), TIMEOUT_S)
        await all_other_tasks_done()
        assert not agent.store.has(v1.sha256)
        assert not agent.downloaded.is_set()

    run_test(main())


# -- failures, rollback and restarts ----------------------------------------------------------


def test_a_version_failing_its_health_check_is_recorded_and_not_retried_after_a_restart(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    models = FakeModels()
    models.unhealthy[v2.file_name] = "the logits are NaN"

    async def first_run() -> None:
        agent = Agent(tmp_path, [FakeSource([v1, v2])], models)
        agent.install(v1)
        await agent.apply(desired(1, ("smol", v1)))
        await agent.apply(desired(2, ("smol", v2)))
        await agent.wait_downloaded()
        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert status.state == ItemState.FAILED
        assert "failed its health prompt: the logits are NaN" in status.error
        assert status.error.endswith(f"; version {v1.sha256[:12]} keeps serving")
        assert (status.sha256, status.serving_sha256) == (v2.sha256, v1.sha256)
        assert await answer(agent.pool) == v1.file_name
        record = agent.rollout.records["smol"]
        assert (record.serving, record.previous) == (v1.sha256, "")
        assert "the logits are NaN" in record.failed[v2.sha256]
        # Both stay on disk: v1 serves, v2 is still what the control plane asks for.
        assert agent.store.blobs() == sorted([v1.sha256, v2.sha256])
        agent.close()

    run_test(first_run())
    assert models.loaded == [v1.file_name, v2.file_name]
    failed = records_on_disk(tmp_path)["aliases"]
    assert isinstance(failed, dict)
    assert list(failed["smol"]["failed"]) == [v2.sha256]

    restarted = FakeModels()

    async def after_restart() -> None:
        source = FakeSource([v1, v2])
        agent = Agent(tmp_path, [source], restarted)
        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert status.state == ItemState.FAILED
        assert "the logits are NaN" in status.error
        assert status.serving_sha256 == v1.sha256
        assert await answer(agent.pool) == v1.file_name
        assert source.manifest_calls == 0
        agent.close()

    run_test(after_restart())
    assert restarted.loaded == [v1.file_name]  # the failed version was not tried again


def test_a_failed_version_whose_blob_is_gone_is_not_downloaded_again(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]
    models = FakeModels()
    models.unloadable[v2.file_name] = "unknown tensor type"

    async def main() -> None:
        source = FakeSource([v1, v2])
        agent = Agent(tmp_path, [source], models)
        agent.install(v1)
        await agent.apply(desired(1, ("smol", v1)))
        agent.install(v2)
        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert "failed to load: unknown tensor type" in status.error
        agent.store.retain([v1.sha256])  # e.g. removed by hand
        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert status.state == ItemState.FAILED
        assert source.manifest_calls == 0
        assert agent.rollout.statuses(desired(2, ("smol", v2)), agent.pool) == [status]
        agent.close()

    run_test(main())


def test_when_nothing_serves_yet_a_failing_version_falls_back_to_the_recorded_one(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]

    async def first_run() -> None:
        agent = Agent(tmp_path, [], FakeModels())
        agent.install(v1)
        assert only(await agent.apply(desired(1, ("smol", v1)))).state == ItemState.READY
        agent.close()

    run_test(first_run())
    models = FakeModels()
    models.unhealthy[v2.file_name] = "answers nonsense"

    async def restarted() -> None:
        # v2 arrived while the agent was down (e.g. from a bundle): a fresh pool tries it first.
        agent = Agent(tmp_path, [], models)
        agent.install(v2)
        state = desired(2, ("smol", v2))
        plan = agent.rollout.plan(state, DEFAULTS)
        assert [(s.alias, s.sha256) for s in plan] == [("smol", v2.sha256)]
        await agent.pool.apply(plan)
        assert agent.rollout.settle(state, agent.pool) is True  # plan again
        plan = agent.rollout.plan(state, DEFAULTS)
        assert [(s.alias, s.sha256) for s in plan] == [("smol", v1.sha256)]
        assert plan[0].path == agent.store.blob_path(v1.sha256)
        await agent.pool.apply(plan)
        assert agent.rollout.settle(state, agent.pool) is False
        status = only(agent.rollout.statuses(state, agent.pool))
        assert status.state == ItemState.FAILED
        assert "answers nonsense" in status.error
        assert status.serving_sha256 == v1.sha256
        assert await answer(agent.pool) == v1.file_name
        # The fallback is the alias's serving version now; the failed one is only recorded.
        record = agent.rollout.records["smol"]
        assert (record.serving, record.previous) == (v1.sha256, "")
        assert v2.sha256 in record.failed
        agent.close()

    run_test(restarted())
    assert models.loaded == [v2.file_name, v1.file_name]


def test_a_first_version_that_fails_leaves_the_alias_failed_and_unserved(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1 = versions["v1"]
    models = FakeModels()
    models.unhealthy[v1.file_name] = "answers nonsense"

    async def main() -> None:
        agent = Agent(tmp_path, [], models)
        agent.install(v1)
        status = only(await agent.apply(desired(1, ("smol", v1))))
        assert status.state == ItemState.FAILED
        assert status.error.endswith("answers nonsense")  # nothing "keeps serving"
        assert status.serving_sha256 == ""
        assert agent.pool.served("smol") is None
        agent.close()

    run_test(main())
    assert models.loaded == [v1.file_name]  # no second pass: there is nothing to fall back to


def test_a_serving_version_that_fails_after_a_restart_falls_back_to_the_previous_one(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2 = versions["v1"], versions["v2"]

    async def first_run() -> None:
        agent = Agent(tmp_path, [], FakeModels())
        agent.install(v1)
        await agent.apply(desired(1, ("smol", v1)))
        agent.install(v2)
        await agent.apply(desired(2, ("smol", v2)))
        assert agent.rollout.records["smol"] == AliasRecord(v2.sha256, v1.sha256)
        agent.close()

    run_test(first_run())
    models = FakeModels()
    models.unloadable[v2.file_name] = "out of memory"  # e.g. the machine has less now

    async def restarted() -> None:
        agent = Agent(tmp_path, [], models)
        status = only(await agent.apply(desired(2, ("smol", v2))))
        assert status.state == ItemState.FAILED
        assert "out of memory" in status.error
        assert status.serving_sha256 == v1.sha256
        assert await answer(agent.pool) == v1.file_name
        # The fallback is the alias's serving version now; the failed one is only recorded.
        record = agent.rollout.records["smol"]
        assert (record.serving, record.previous) == (v1.sha256, "")
        assert v2.sha256 in record.failed
        agent.close()

    run_test(restarted())
    assert models.loaded == [v2.file_name, v1.file_name]


# -- what is kept on disk ---------------------------------------------------------------------


def test_retain_keeps_desired_serving_and_previous_and_deletes_the_rest(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, v2, v3, v4 = versions["v1"], versions["v2"], versions["v3"], versions["v4"]

    async def main() -> None:
        agent = Agent(tmp_path, [], FakeModels())
        for version in (v1, v2, v3):
            agent.install(version)
        # A partial download and a blob that nothing refers to.
        agent.store.save_partial(v4.manifest, 0)
        agent.store.open_partial(v4.sha256).close()
        stray = agent.store.staging_dir() / "stray"
        stray.write_bytes(b"GGUF stray")
        agent.store.adopt("ab" * 32, stray)
        assert len(agent.store.blobs()) == 4

        await agent.apply(desired(1, ("smol", v1)))
        assert agent.store.blobs() == [v1.sha256]  # only what is desired or serving is kept
        assert agent.store.partials() == []
        for generation, version in ((2, v2), (3, v3)):
            agent.install(version)
            await agent.apply(desired(generation, ("smol", version)))
        assert agent.rollout.records == {"smol": AliasRecord(v3.sha256, v2.sha256)}
        assert agent.store.blobs() == sorted([v2.sha256, v3.sha256])

        # Two aliases: each keeps its own serving and previous versions.
        agent.install(v1)
        await agent.apply(desired(4, ("smol", v3), ("chat", v1)))
        assert agent.store.blobs() == sorted([v1.sha256, v2.sha256, v3.sha256])
        # An alias no longer assigned: its records and blobs go.
        await agent.apply(desired(5, ("chat", v1)))
        assert set(agent.rollout.records) == {"chat"}
        assert agent.store.blobs() == [v1.sha256]
        assert agent.pool.served("smol") is None
        await agent.apply(desired(6))
        assert agent.store.blobs() == []
        assert agent.rollout.records == {}
        agent.close()

    run_test(main())
    assert records_on_disk(tmp_path) == {"aliases": {}}


def test_path_models_pass_through_untouched(tmp_path: Path, versions: dict[str, Version]) -> None:
    path_model = tiny_gguf(tmp_path / "local.gguf", "local")
    v1 = versions["v1"]

    async def main() -> None:
        agent = Agent(tmp_path, [], FakeModels())
        agent.install(v1)
        state = DesiredState(
            1,
            (
                ModelAssignment(alias="local", path=str(path_model), context_length=512),
                *desired(1, ("smol", v1)).models,
            ),
        )
        plan = agent.rollout.plan(state, DEFAULTS)
        assert [(s.alias, s.path, s.sha256, s.context_length) for s in plan] == [
            ("local", path_model, "", 512),
            ("smol", agent.store.blob_path(v1.sha256), v1.sha256, 256),
        ]
        assert all(s.threads == 2 for s in plan)  # the agent's default when unassigned
        statuses = await agent.apply(state)
        assert [s.name for s in statuses] == ["smol"]  # ModelRollout reports registry models
        assert await answer(agent.pool, "local") == "local.gguf"
        agent.close()

    run_test(main())


# -- the records file -------------------------------------------------------------------------

HEX = "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00garbage",
        b"[]",
        b'"aliases"',
        b'{"aliases": 7}',
        b'{"aliases": {"smol": "serving"}}',
        b'{"aliases": {"smol": {"serving": "../../etc/passwd"}}}',
        b'{"aliases": {"smol": {"serving": 5}}}',
        b'{"aliases": {"smol": {"previous": "' + HEX.upper().encode() + b'"}}}',
        b'{"aliases": {"smol": {"failed": {"not-a-sha": "why"}}}}',
        b'{"aliases": {"smol": {"failed": "abc"}}}',
        b'{"aliases": {"smol": {"failed": 12}}}',
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=[
        "not-json",
        "not-utf8",
        "a-list",
        "a-string",
        "aliases-a-number",
        "entry-a-string",
        "path-as-sha",
        "sha-a-number",
        "uppercase-sha",
        "failed-key-not-a-sha",
        "failed-a-string",
        "failed-a-number",
        "deeply-nested",
    ],
)
def test_a_damaged_or_hostile_records_file_is_ignored_with_a_log_line(
    tmp_path: Path,
    versions: dict[str, Version],
    content: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / RECORDS_FILE).write_bytes(content)
    v1 = versions["v1"]

    async def main() -> None:
        with caplog.at_level(logging.ERROR, logger="agent.model_rollout"):
            agent = Agent(tmp_path, [], FakeModels())
        assert agent.rollout.records == {}
        assert [r.getMessage() for r in caplog.records if "ignoring damaged" in r.getMessage()]
        agent.install(v1)
        assert only(await agent.apply(desired(1, ("smol", v1)))).state == ItemState.READY
        agent.close()

    run_test(main())
    assert records_on_disk(tmp_path) == {
        "aliases": {"smol": {"serving": v1.sha256, "previous": "", "failed": {}}}
    }


def test_records_survive_a_restart_and_an_absent_file_is_no_error(
    tmp_path: Path, versions: dict[str, Version], caplog: pytest.LogCaptureFixture
) -> None:
    v1 = versions["v1"]
    shutil.rmtree(tmp_path / "artifacts", ignore_errors=True)

    async def main() -> None:
        with caplog.at_level(logging.ERROR, logger="agent.model_rollout"):
            agent = Agent(tmp_path, [], FakeModels())
        assert agent.rollout.records == {}
        assert caplog.records == []
        agent.install(v1)
        await agent.apply(desired(1, ("smol", v1)))
        agent.close()
        again = Agent(tmp_path, [], FakeModels())
        assert again.rollout.records == {"smol": AliasRecord(v1.sha256, "")}
        again.close()

    run_test(main())
    assert (tmp_path / RECORDS_FILE).stat().st_mode & 0o777 == 0o600


# -- LoRA adapters ----------------------------------------------------------------------------


def with_adapters(state: DesiredState, **adapters: Version) -> DesiredState:
    """`state` with its first model carrying `adapters` (name = version, blobs as stand-ins)."""
    first, *rest = state.models
    carried = tuple(
        AdapterAssignment(name, v.sha256, len(v.data), "support-lora", v.name)
        for name, v in adapters.items()
    )
    return replace(state, models=(replace(first, adapters=carried), *rest))


def test_adapters_download_and_each_reloads_the_model_with_it_as_it_arrives(
    tmp_path: Path, versions: dict[str, Version]
) -> None:
    v1, a1, a2 = versions["v1"], versions["v2"], versions["v3"]

    async def main() -> None:
        source = FakeSource([a1, a2], stall_at=2 * CHUNK)
        agent = Agent(tmp_path, [source], FakeModels())
        agent.install(v1)
        agent.install(a1)
        state = with_adapters(desired(1, ("smol", v1)), support=a1, legal=a2)
        statuses = await agent.apply(state)
        by_name = {s.name: s for s in statuses}
        assert by_name["smol"].state == ItemState.READY
        assert by_name["smol:support"].state == ItemState.READY
        assert (by_name["smol:legal"].kind, by_name["smol:legal"].sha256) == ("adapter", a2.sha256)
        assert by_name["smol:legal"].state in (ItemState.PENDING, ItemState.DOWNLOADING)
        served = agent.pool.served("smol")
        assert served is not None
        assert served.adapters == (("support", agent.store.blob_path(a1.sha256)),)

        await asyncio.wait_for(source.stalled.wait(), TIMEOUT_S)
        legal = {s.name: s for s in agent.rollout.statuses(state, agent.pool)}["smol:legal"]
        assert legal.state == ItemState.DOWNLOADING
        assert 0 < legal.bytes_done < legal.bytes_total == len(a2.data)
        source.release.set()
        await agent.wait_downloaded()

        statuses = await agent.apply(state)
        assert {s.name: s.state for s in statuses} == {
            "smol": ItemState.READY,
            "smol:support": ItemState.READY,
            "smol:legal": ItemState.READY,
        }
        served = agent.pool.served("smol")
        assert served is not None
        assert dict(served.adapters) == {
            "support": agent.store.blob_path(a1.sha256),
            "legal": agent.store.blob_path(a2.sha256),
        }
        assert agent.models.loaded == [v1.file_name, v1.file_name]  # reloaded once, beside
        assert agent.store.blobs() == sorted([v1.sha256, a1.sha256, a2.sha256])

        # Dropped from the desired state: unloaded with a reload, its blob deleted.
        statuses = await agent.apply(with_adapters(desired(2, ("smol", v1)), support=a1))
        assert [s.name for s in statuses] == ["smol", "smol:support"]
        served = agent.pool.served("smol")
        assert served is not None
        assert [name for name, _ in served.adapters] == ["support"]
        assert agent.store.blobs() == sorted([v1.sha256, a1.sha256])
        agent.close()

    run_test(main())
