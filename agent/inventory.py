"""What the agent tells the control plane about itself: version, hardware, capabilities."""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Sequence
from pathlib import Path

from agent import __version__
from common.control import Hardware, Hello, LocalModel


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def hardware() -> Hardware:
    return Hardware(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        cpu_model=_cpu_model(),
        cpu_cores=os.cpu_count() or 0,
        memory_bytes=_memory_bytes(),
    )


def capabilities() -> tuple[str, ...]:
    import llama_cpp

    from agent.training.capability import training_capability

    found = ["llama.cpp", "gguf", "chat-template"]
    if llama_cpp.llama_supports_gpu_offload():
        found.append("gpu-offload")
    found.append(training_capability())
    return tuple(found)


def local_models(paths: Sequence[Path]) -> tuple[LocalModel, ...]:
    models = []
    for path in paths:
        try:
            models.append(LocalModel(path=str(path), size_bytes=path.stat().st_size))
        except OSError:
            continue
    return tuple(models)


def build_hello(
    agent_id: str, observed_generation: int, model_paths: Sequence[Path], caps: tuple[str, ...]
) -> Hello:
    return Hello(
        agent_id=agent_id,
        version=__version__,
        hardware=hardware(),
        capabilities=caps,
        models=local_models(model_paths),
        observed_generation=observed_generation,
    )
