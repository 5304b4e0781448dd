"""Registry models on an agent: fetch and verify, load beside the old version, roll back."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.artifacts.download import ChunkSource, Downloader, Progress, resolve_manifest
from agent.artifacts.store import ArtifactError, ArtifactStore
from agent.control.backoff import Backoff
from agent.model_pool import ModelPool
from agent.settings import ModelSettings
from common.artifacts import check_sha256
from common.control import DesiredState, ItemState, ItemStatus, ModelAssignment
from common.errors import InvalidArgument
from common.files import atomic_write
from common.inference import adapter_model_name

log = logging.getLogger(__name__)

RECORDS_FILE = "rollout-state.json"
PROGRESS_INTERVAL_S = 1.0  # at most one progress report per second
MAX_FAILED_PER_ALIAS = 16

# Opens the sources of one artifact for one attempt (peers first, the control plane last).
SourceOpener = Callable[[str], AbstractAsyncContextManager[list[ChunkSource]]]


@dataclass
class AliasRecord:
    """What one alias runs: the version serving now, the one before, and versions that failed."""

    serving: str = ""
    previous: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # sha256 -> why


@dataclass
class _Download:
    task: asyncio.Task[None]
    progress: Progress | None = None
    error: str = ""


class ModelRollout:
    """Turns the registry models of a desired state into pool settings, fetching what is missing.

    `changed()` is called (on the event loop) when a download finishes, so the owner applies
    the desired state again, and `report()` when progress worth telling has happened.
    """

    def __init__(
        self,
        state_dir: Path,
        store: ArtifactStore,
        downloader: Downloader,
        open_sources: SourceOpener,
        *,
        changed: Callable[[], None],
        report: Callable[[], None],
        backoff: Callable[[], Backoff] | None = None,
    ) -> None:
        self._path = state_dir / RECORDS_FILE
        self.store = store
        self._downloader = downloader
        self._open_sources = open_sources
        self._changed = changed
        self._report = report
        self._new_backoff = backoff or (lambda: Backoff(base=2.0, max_delay=300.0))
        self._downloads: dict[str, _Download] = {}
        self._last_report = 0.0
        self.records: dict[str, AliasRecord] = self._load()
        self.sources_used: dict[str, set[str]] = {}  # sha256 -> where its chunks came from

    @property
    def bytes_fetched(self) -> int:
        """Bytes received from sources by this process, discarded ones included."""
        return self._downloader.bytes_fetched

    # -- planning and outcomes -------------------------------------------------------------

    def plan(self, desired: DesiredState, defaults: ModelSettings) -> list[ModelSettings]:
        """Pool settings for `desired`: registry models whose verified file is here, else the
        version serving until the new one is (or stays) usable; starts missing downloads."""
        wanted = _artifacts(desired)
        for sha256 in [s for s in self._downloads if s not in wanted]:
            self._downloads.pop(sha256).task.cancel()
        settings = []
        for model in desired.models:
            if not model.sha256:
                settings.append(_settings(defaults, model, Path(model.path), ""))
                continue
            record = self.records.setdefault(model.alias, AliasRecord())
            usable = model.sha256 not in record.failed and self.store.has(model.sha256)
            if not usable and model.sha256 not in record.failed:
                self._ensure_download(model.sha256, model.size_bytes, model.alias)
            chosen = model.sha256 if usable else self._fallback(record)
            if chosen:
                path = self.store.blob_path(chosen)
                adapters = self._present_adapters(model)
                settings.append(_settings(defaults, model, path, chosen, adapters))
        return settings

    def _present_adapters(self, model: ModelAssignment) -> tuple[tuple[str, Path], ...]:
        """The model's adapters whose verified file is here; starts fetching the others. Each
        one that arrives later reloads the model with it (beside the running one)."""
        present = []
        for adapter in model.adapters:
            if self.store.has(adapter.sha256):
                present.append((adapter.name, self.store.blob_path(adapter.sha256)))
            else:
                label = adapter_model_name(model.alias, adapter.name)
                self._ensure_download(adapter.sha256, adapter.size_bytes, label)
        return tuple(present)

    def settle(self, desired: DesiredState, pool: ModelPool) -> bool:
        """Records what the pool did with the plan; True when a new version failed and the
        plan must be made again (to fall back to the previous version)."""
        failures = {item.name: item.error for item in pool.item_statuses() if item.error}
        again = False
        for model in (m for m in desired.models if m.sha256):
            record = self.records.setdefault(model.alias, AliasRecord())
            served = pool.served(model.alias)
            if served is not None and served.sha256 not in ("", model.sha256, record.serving):
                # A fallback serves: it is the alias's serving version from now on.
                if record.previous == served.sha256:
                    record.previous = ""
                record.serving = served.sha256
            if served is not None and served.sha256 == model.sha256:
                if record.serving != model.sha256:
                    record.previous, record.serving = record.serving, model.sha256
                continue
            tried = self.store.has(model.sha256) and model.sha256 not in record.failed
            if tried:
                reason = failures.get(model.alias, "the model did not load")
                record.failed[model.sha256] = reason
                _trim(record.failed)
                again = served is None and bool(self._fallback(record))
                log.error("model %r version %s failed: %s", model.alias, model.sha256[:12], reason)
        aliases = {m.alias for m in desired.models if m.sha256}
        self.records = {a: r for a, r in self.records.items() if a in aliases}
        self._save()
        return again

    def _fallback(self, record: AliasRecord) -> str:
        """The version to serve while the desired one cannot be: the serving one, or the one
        before it when the serving one has failed since (e.g. after a restart); "" if none."""
        usable = (
            sha256
            for sha256 in (record.serving, record.previous)
            if sha256 and sha256 not in record.failed and self.store.has(sha256)
        )
        return next(usable, "")

    def retain(self, desired: DesiredState) -> None:
        """Deletes artifacts no alias wants, serves or keeps as its previous version."""
        keep = _artifacts(desired)
        for record in self.records.values():
            keep |= {record.serving, record.previous} - {""}
        deleted = self.store.retain(keep)
        if deleted:
            log.info("deleted %d artifact(s) no longer needed", len(deleted))

    def statuses(self, desired: DesiredState, pool: ModelPool) -> list[ItemStatus]:
        """One item per registry model of `desired`, then one per adapter of each."""
        return self._model_statuses(desired, pool) + self._adapter_statuses(desired, pool)

    def _adapter_statuses(self, desired: DesiredState, pool: ModelPool) -> list[ItemStatus]:
        items = []
        for model in desired.models:
            served = pool.served(model.alias)
            loaded = dict(served.adapters) if served is not None else {}
            for adapter in model.adapters:
                name = adapter_model_name(model.alias, adapter.name)
                base = ItemStatus("adapter", name, ItemState.PENDING, sha256=adapter.sha256)
                if loaded.get(adapter.name) == self.store.blob_path(adapter.sha256):
                    items.append(replace(base, state=ItemState.READY))
                else:
                    items.append(self._fetch_status(base, adapter.sha256, adapter.size_bytes))
        return items

    def _model_statuses(self, desired: DesiredState, pool: ModelPool) -> list[ItemStatus]:
        items = []
        for model in (m for m in desired.models if m.sha256):
            record = self.records.get(model.alias, AliasRecord())
            served = pool.served(model.alias)
            serving = served.sha256 if served is not None else ""
            base = ItemStatus(
                "model", model.alias, ItemState.PENDING, sha256=model.sha256, serving_sha256=serving
            )
            if serving == model.sha256:
                items.append(replace(base, state=ItemState.READY))
            elif model.sha256 in record.failed:
                kept = f"; version {serving[:12]} keeps serving" if serving else ""
                error = f"{record.failed[model.sha256]}{kept}"
                items.append(replace(base, state=ItemState.FAILED, error=error))
            else:
                items.append(self._fetch_status(base, model.sha256, model.size_bytes))
        return items

    def _fetch_status(self, base: ItemStatus, sha256: str, size_bytes: int) -> ItemStatus:
        """An artifact not in use yet: downloading (or failing to), here to load, or pending."""
        download = self._downloads.get(sha256)
        if download is not None and (download.error or download.progress is not None):
            return _download_status(base, download)
        if self.store.has(sha256):
            return replace(base, state=ItemState.LOADING)
        return replace(base, bytes_total=size_bytes)

    def close(self) -> None:
        for download in self._downloads.values():
            download.task.cancel()
        self._downloads.clear()

    # -- downloads -------------------------------------------------------------------------

    def _ensure_download(self, sha256: str, size_bytes: int, label: str) -> None:
        """Starts fetching artifact `sha256` unless it is already; `label` names it in logs."""
        if sha256 in self._downloads:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(sha256, size_bytes, label))
        self._downloads[sha256] = _Download(task)

    async def _fetch(self, sha256: str, size_bytes: int, label: str) -> None:
        """Fetches until the artifact is verified and adopted, retrying with backoff."""
        backoff = self._new_backoff()
        download = self._downloads.get(sha256)
        while True:
            try:
                await self._fetch_once(sha256, size_bytes)
                break
            except (ArtifactError, InvalidArgument, OSError) as exc:
                error = f"download of {sha256[:12]} failed: {exc}"
            delay = backoff.next_delay()
            log.warning("%s; retrying in %.0f s", error, delay)
            if download is not None:
                download.error = f"{error} (retrying)"
            self._report()
            await asyncio.sleep(delay)
        self._downloads.pop(sha256, None)
        log.info("%r: artifact %s verified", label, sha256[:12])
        self._changed()

    async def _fetch_once(self, sha256: str, size_bytes: int) -> None:
        download = self._downloads.get(sha256)
        async with self._open_sources(sha256) as sources:
            if not sources:
                raise ArtifactError("the control plane has not been reached yet")
            # The manifest from the most trusted source that has it: the control plane (last).
            manifest = await resolve_manifest(
                sha256, list(reversed(sources)), size_bytes=size_bytes or None
            )

            def on_progress(progress: Progress) -> None:
                if progress.source:
                    self.sources_used.setdefault(sha256, set()).add(progress.source)
                if download is not None:
                    download.progress, download.error = progress, ""
                now = time.monotonic()
                if (
                    now - self._last_report >= PROGRESS_INTERVAL_S
                    or progress.state != "downloading"
                ):
                    self._last_report = now
                    self._report()

            await self._downloader.fetch(manifest, sources, on_progress)

    # -- persistence -----------------------------------------------------------------------

    def _load(self) -> dict[str, AliasRecord]:
        try:
            document: Any = json.loads(self._path.read_bytes())
            return {
                str(alias): AliasRecord(
                    serving=_digest_or_empty(entry.get("serving")),
                    previous=_digest_or_empty(entry.get("previous")),
                    failed={
                        check_sha256(sha): str(reason)
                        for sha, reason in dict(entry.get("failed", {})).items()
                    },
                )
                for alias, entry in dict(document["aliases"]).items()
            }
        except FileNotFoundError:
            return {}
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            RecursionError,  # absurdly nested JSON
            InvalidArgument,
        ) as exc:
            log.error("ignoring damaged %s: %s", self._path, exc)
            return {}

    def _save(self) -> None:
        document = {
            "aliases": {
                alias: {"serving": r.serving, "previous": r.previous, "failed": r.failed}
                for alias, r in self.records.items()
            }
        }
        atomic_write(self._path, json.dumps(document, indent=2).encode() + b"\n", 0o600)


def _settings(
    defaults: ModelSettings,
    model: ModelAssignment,
    path: Path,
    sha256: str,
    adapters: tuple[tuple[str, Path], ...] = (),
) -> ModelSettings:
    return replace(
        defaults,
        alias=model.alias,
        path=path,
        context_length=model.context_length or defaults.context_length,
        gpu_layers=model.gpu_layers,
        queue_depth=model.queue_depth,
        threads=model.threads or defaults.threads,
        sha256=sha256,
        adapters=adapters,
    )


def _artifacts(desired: DesiredState) -> set[str]:
    """Every registry artifact `desired` names: models and their adapters."""
    wanted = {m.sha256 for m in desired.models if m.sha256}
    return wanted | {a.sha256 for m in desired.models for a in m.adapters}


def _download_status(base: ItemStatus, download: _Download) -> ItemStatus:
    if download.error:
        return replace(base, state=ItemState.FAILED, error=download.error)
    if download.progress is None:
        return base
    progress = download.progress
    state = ItemState.VERIFYING if progress.state == "verifying" else ItemState.DOWNLOADING
    return replace(
        base,
        state=state,
        bytes_done=progress.bytes_done,
        bytes_total=progress.bytes_total,
        rate_bytes_per_s=progress.rate_bytes_per_s,
    )


def _digest_or_empty(value: object) -> str:
    return "" if value in (None, "") else check_sha256(value)


def _trim(failed: dict[str, str]) -> None:
    while len(failed) > MAX_FAILED_PER_ALIAS:
        failed.pop(next(iter(failed)))
