"""The models an agent serves, by alias: checked, loaded in the background, swapped at run time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.engine.protocol import ModelBackend
from agent.model_file import ModelFile, ModelFileError, inspect_model_file, sha256_of
from agent.model_runner import ModelRunner
from agent.settings import ModelSettings
from common.control import ItemState, ItemStatus
from common.errors import NotFound, Unavailable
from common.inference import ModelInfo

log = logging.getLogger(__name__)

BackendFactory = Callable[[ModelSettings], ModelBackend]


@dataclass
class _Slot:
    settings: ModelSettings
    file: ModelFile
    sha256: str = ""
    runner: ModelRunner | None = None


class ModelPool:
    def __init__(self, models: Sequence[ModelSettings], backend_factory: BackendFactory) -> None:
        """Inspects every model file at once; raises ModelFileError naming a bad one."""
        self._factory = backend_factory
        self._slots = {m.alias: _Slot(m, inspect_model_file(m.path)) for m in models}
        self._failed: dict[str, ItemStatus] = {}

    @property
    def ready(self) -> bool:
        return all(slot.runner is not None for slot in self._slots.values())

    async def load_all(self) -> None:
        """Loads each configured model on a worker thread; raises if any fails to load."""
        for slot in list(self._slots.values()):
            await self._load(slot)

    async def _load(self, slot: _Slot, *, self_test: bool = False) -> None:
        path = slot.settings.path
        log.info("loading model %r from %s", slot.settings.alias, path)
        slot.sha256 = slot.settings.sha256 or await asyncio.to_thread(sha256_of, path)
        try:
            backend = await asyncio.to_thread(self._factory, slot.settings)
        except Exception as exc:  # llama.cpp reports load failures as plain exceptions
            raise ModelFileError(f"model file {path} failed to load: {exc}") from exc
        if self_test:
            try:
                await asyncio.to_thread(backend.self_test)
            except Exception as exc:  # whatever the engine raised: the model is not usable
                await asyncio.to_thread(backend.close)
                raise ModelFileError(f"model file {path} failed its health prompt: {exc}") from exc
        slot.runner = ModelRunner(
            slot.settings.alias, backend, queue_depth=slot.settings.queue_depth
        )
        log.info("model %r ready (sha256 %s)", slot.settings.alias, slot.sha256)

    async def apply(self, models: Sequence[ModelSettings]) -> list[ItemStatus]:
        """Makes the pool serve exactly `models`; returns each model's outcome.

        Unchanged models keep running. A changed one is loaded beside the running version,
        must answer a health prompt, and only then replaces it (the old one is closed after
        its running generation); if it fails, the old version keeps serving and the alias is
        reported FAILED with the reason. Removed models stop taking requests at once.
        """
        wanted = {m.alias: m for m in models}
        for alias in [a for a in self._slots if a not in wanted]:
            await self._remove(alias)
        self._failed = {a: f for a, f in self._failed.items() if a in wanted}
        for alias, settings in wanted.items():
            current = self._slots.get(alias)
            if current is not None and current.settings == settings:
                continue
            try:
                slot = _Slot(settings, await asyncio.to_thread(inspect_model_file, settings.path))
                await self._load(slot, self_test=True)
            except ModelFileError as exc:
                log.error("model %r not served from %s: %s", alias, settings.path, exc)
                self._failed[alias] = ItemStatus("model", alias, ItemState.FAILED, str(exc))
                continue
            self._slots[alias] = slot
            self._failed.pop(alias, None)
            if current is not None and current.runner is not None:
                log.info("model %r: replaced %s", alias, current.settings.path)
                await asyncio.to_thread(current.runner.close)
        return self.item_statuses()

    def item_statuses(self) -> list[ItemStatus]:
        """One item per alias: FAILED (the latest change failed; a previous version may still
        serve), READY or LOADING."""
        statuses = [
            self._failed.get(alias)
            or ItemStatus(
                "model",
                alias,
                ItemState.READY if slot.runner is not None else ItemState.LOADING,
            )
            for alias, slot in self._slots.items()
        ]
        return statuses + [f for a, f in self._failed.items() if a not in self._slots]

    def served(self, alias: str) -> ModelSettings | None:
        """The settings the alias is served with now (None: not served)."""
        slot = self._slots.get(alias)
        return slot.settings if slot is not None and slot.runner is not None else None

    async def _remove(self, alias: str) -> None:
        slot = self._slots.pop(alias)
        if slot.runner is not None:
            log.info("unloading model %r", alias)
            await asyncio.to_thread(slot.runner.close)

    def runner(self, alias: str) -> ModelRunner:
        slot = self._slots.get(alias)
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            raise NotFound(f"model {alias!r} is not served here (models: {known})")
        if slot.runner is None:
            raise Unavailable(f"model {alias!r} is still loading")
        return slot.runner

    def runners(self) -> list[tuple[str, ModelRunner | None]]:
        """Each configured model by alias, with its runner once loaded."""
        return [(alias, slot.runner) for alias, slot in self._slots.items()]

    def model_paths(self) -> list[Path]:
        return [slot.settings.path for slot in self._slots.values()]

    def describe(self) -> list[ModelInfo]:
        infos = []
        for alias, slot in self._slots.items():
            runner = slot.runner
            infos.append(
                ModelInfo(
                    alias=alias,
                    sha256=slot.sha256,
                    architecture=slot.file.architecture,
                    context_length=(
                        runner.description.context_length
                        if runner
                        else slot.settings.context_length
                    ),
                    size_bytes=slot.file.size_bytes,
                    ready=runner is not None,
                )
            )
        return infos

    def close(self) -> None:
        for slot in self._slots.values():
            if slot.runner is not None:
                slot.runner.close()
                slot.runner = None
