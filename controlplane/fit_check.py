"""Will a model fit an agent? Memory, VRAM and disk needed against what the agent reported."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.gguf_info import GgufInfo, kv_cache_bytes
from common.telemetry import Sample

# llama.cpp's compute buffers, the runtime and the prompt batch, beyond weights and KV cache.
OVERHEAD_BYTES = 256 * 1024 * 1024
MEMORY_AVAILABLE = "outpost_memory_available_bytes"
GPU_TOTAL = "outpost_gpu_memory_total_bytes"
GPU_USED = "outpost_gpu_memory_used_bytes"
DISK_FREE = "outpost_disk_free_bytes"


@dataclass(frozen=True)
class Requirement:
    memory_bytes: int  # system memory: the weights and KV cache left on the CPU, plus overhead
    vram_bytes: int  # the offloaded layers' weights and KV cache
    disk_bytes: int  # the model file and its adapters' files
    weights_bytes: int  # the model's and its adapters'
    kv_cache_bytes: int


@dataclass(frozen=True)
class Capacity:
    """What the agent last reported; None where it reported nothing."""

    memory_bytes: int | None
    vram_bytes: int | None
    disk_bytes: int | None
    source: str  # "telemetry", "hello" or "nothing reported"


def requirement(
    info: GgufInfo,
    size_bytes: int,
    *,
    context_length: int,
    gpu_layers: int,
    adapter_bytes: int = 0,
) -> Requirement:
    """llama.cpp keeps the weights of layers not offloaded, and their KV cache, in memory.
    LoRA adapters (`adapter_bytes`, their files' sizes) go where the layers they change go:
    counted as more weights."""
    kv = kv_cache_bytes(info, context_length)
    size_bytes += adapter_bytes
    layers = info.block_count + 1  # the output layer counts as one more
    offloaded = layers if gpu_layers < 0 else min(gpu_layers, layers)
    share = offloaded / layers if layers > 0 else (1.0 if gpu_layers != 0 else 0.0)
    vram = round((size_bytes + kv) * share)
    memory = round((size_bytes + kv) * (1 - share)) + OVERHEAD_BYTES
    return Requirement(memory, vram, size_bytes, size_bytes, kv)


def capacity(hardware: Mapping[str, Any], latest: Sample | None) -> Capacity:
    """From the newest telemetry sample when there is one, else the Hello's total memory."""
    if latest is not None:
        values: dict[str, list[float]] = {}
        for metric in latest.metrics:
            values.setdefault(metric.name, []).append(metric.value)
        memory = values.get(MEMORY_AVAILABLE)
        gpu_total = sum(values.get(GPU_TOTAL, []))
        gpu_used = sum(values.get(GPU_USED, []))
        disk = values.get(DISK_FREE)
        return Capacity(
            memory_bytes=int(memory[0]) if memory else None,
            vram_bytes=int(gpu_total - gpu_used) if GPU_TOTAL in values else 0,
            # The agent reports its state directory and model directories: the tightest counts.
            disk_bytes=int(min(disk)) if disk else None,
            source="telemetry",
        )
    memory_total = hardware.get("memory_bytes")
    if isinstance(memory_total, int) and memory_total > 0:
        return Capacity(memory_total, None, None, "hello")
    return Capacity(None, None, None, "nothing reported")


def problems(need: Requirement, have: Capacity, *, already_on_disk: bool = False) -> list[str]:
    """Why it does not fit, each with the numbers; empty when it fits (or cannot be told)."""
    found = []
    if have.memory_bytes is not None and need.memory_bytes > have.memory_bytes:
        found.append(
            f"needs {_size(need.memory_bytes)} of memory ({_size(need.weights_bytes)} weights "
            f"and {_size(need.kv_cache_bytes)} KV cache, less what is offloaded, plus "
            f"{_size(OVERHEAD_BYTES)} working space) but {_size(have.memory_bytes)} is available"
        )
    if need.vram_bytes > 0 and have.vram_bytes is not None and need.vram_bytes > have.vram_bytes:
        found.append(
            f"needs {_size(need.vram_bytes)} of GPU memory for its offloaded layers "
            f"but {_size(have.vram_bytes)} is free"
        )
    if not already_on_disk and have.disk_bytes is not None and need.disk_bytes > have.disk_bytes:
        found.append(f"needs {_size(need.disk_bytes)} of disk but {_size(have.disk_bytes)} is free")
    return found


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
