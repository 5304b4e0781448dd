"""The models an agent serves, by alias: checked at start-up, loaded in the background."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.engine.protocol import ModelBackend
from agent.model_file import ModelFile, ModelFileError, inspect_model_file, sha256_of
from agent.model_runner import ModelRunner
from agent.settings import ModelSettings
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

    @property
    def ready(self) -> bool:
        return all(slot.runner is not None for slot in self._slots.values())

    async def load_all(self) -> None:
        """Loads each model on a worker thread; raises if any fails to load."""
        for alias, slot in self._slots.items():
            log.info("loading model %r from %s", alias, slot.settings.path)
            slot.sha256 = await asyncio.to_thread(sha256_of, slot.settings.path)
            try:
                backend = await asyncio.to_thread(self._factory, slot.settings)
            except Exception as exc:  # llama.cpp reports load failures as plain exceptions
                raise ModelFileError(
                    f"model file {slot.settings.path} failed to load: {exc}"
                ) from exc
            slot.runner = ModelRunner(alias, backend, queue_depth=slot.settings.queue_depth)
            log.info("model %r ready (sha256 %s)", alias, slot.sha256)

    def runner(self, alias: str) -> ModelRunner:
        slot = self._slots.get(alias)
        if slot is None:
            known = ", ".join(sorted(self._slots)) or "none"
            raise NotFound(f"model {alias!r} is not served here (models: {known})")
        if slot.runner is None:
            raise Unavailable(f"model {alias!r} is still loading")
        return slot.runner

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
