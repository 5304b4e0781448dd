"""The fit check's arithmetic: what a model needs, what an agent reported, and why it won't fit."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.gguf_info import GgufInfo
from common.telemetry import Metric, Sample
from controlplane.fit_check import (
    DISK_FREE,
    GPU_TOTAL,
    GPU_USED,
    MEMORY_AVAILABLE,
    OVERHEAD_BYTES,
    Capacity,
    Requirement,
    capacity,
    problems,
    requirement,
)

MiB = 1024**2
GiB = 1024**3
# SmolLM2-135M Q4_1, the demo model: 30 blocks, 576 wide, 9 heads of which 3 for K and V.
SIZE = 98_362_432
SMOL = GgufInfo.from_metadata(
    {"block_count": 30, "embedding_length": 576, "head_count": 9, "head_count_kv": 3}
)
# K and V, 30 blocks, 4096 tokens, 3 KV heads, 576 / 9 = 64 wide each, 2 bytes (f16): 90 MiB.
KV_4096 = 2 * 30 * 4096 * 3 * 64 * 2
AT = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def gpu(index: str, total: float, used: float) -> list[Metric]:
    labels = {"gpu": index, "name": "NVIDIA L4"}
    return [Metric(GPU_TOTAL, total, labels), Metric(GPU_USED, used, labels)]


def test_kv_cache_and_overhead_on_the_cpu_only() -> None:
    assert 90 * MiB == KV_4096
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=0)
    assert need == Requirement(
        memory_bytes=SIZE + KV_4096 + OVERHEAD_BYTES,
        vram_bytes=0,
        disk_bytes=SIZE,
        weights_bytes=SIZE,
        kv_cache_bytes=KV_4096,
    )
    assert need.memory_bytes == 461_169_728
    assert 256 * MiB == OVERHEAD_BYTES


def test_adapters_count_as_weights_where_their_layers_go() -> None:
    adapters = 30 * MiB
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=0, adapter_bytes=adapters)
    assert need == Requirement(
        memory_bytes=SIZE + adapters + KV_4096 + OVERHEAD_BYTES,
        vram_bytes=0,
        disk_bytes=SIZE + adapters,
        weights_bytes=SIZE + adapters,
        kv_cache_bytes=KV_4096,
    )
    offloaded = requirement(SMOL, SIZE, context_length=4096, gpu_layers=-1, adapter_bytes=adapters)
    assert (offloaded.vram_bytes, offloaded.memory_bytes) == (
        SIZE + adapters + KV_4096,
        OVERHEAD_BYTES,
    )


def test_the_kv_cache_grows_with_the_context() -> None:
    small = requirement(SMOL, SIZE, context_length=512, gpu_layers=0)
    large = requirement(SMOL, SIZE, context_length=8192, gpu_layers=0)
    assert small.kv_cache_bytes == 2 * 30 * 512 * 3 * 64 * 2 == 11_796_480
    assert large.kv_cache_bytes == 180 * MiB
    assert large.memory_bytes - small.memory_bytes == 180 * MiB - 11_796_480


@pytest.mark.parametrize("gpu_layers", [-1, 31, 100])
def test_offloading_every_layer_leaves_only_the_overhead_in_memory(gpu_layers: int) -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=gpu_layers)
    # 30 blocks and the output layer: 31 layers; more than 31 are all of them.
    assert need.vram_bytes == SIZE + KV_4096 == 192_734_272
    assert need.memory_bytes == OVERHEAD_BYTES
    assert (need.disk_bytes, need.kv_cache_bytes) == (SIZE, KV_4096)


def test_offloading_some_layers_splits_weights_and_cache_by_layer() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=10)
    # 10 of 31 layers: 192,734,272 * 10 / 31 = 62,172,345.8 on the GPU, the rest in memory.
    assert need.vram_bytes == 62_172_346
    assert need.memory_bytes == 130_561_926 + OVERHEAD_BYTES
    assert need.vram_bytes + need.memory_bytes - OVERHEAD_BYTES == SIZE + KV_4096


def test_a_header_without_the_shape_needs_no_kv_cache() -> None:
    bare = GgufInfo.from_metadata({})
    need = requirement(bare, 1000, context_length=4096, gpu_layers=0)
    assert need == Requirement(1000 + OVERHEAD_BYTES, 0, 1000, 1000, 0)
    # With no blocks known the output layer is the only one: offloading moves everything.
    offloaded = requirement(bare, 1000, context_length=4096, gpu_layers=5)
    assert (offloaded.vram_bytes, offloaded.memory_bytes) == (1000, OVERHEAD_BYTES)


def test_capacity_from_telemetry_sums_gpus_and_takes_the_tightest_disk() -> None:
    sample = Sample(
        AT,
        (
            Metric(MEMORY_AVAILABLE, 3 * GiB),
            *gpu("0", 8 * GiB, 1 * GiB),
            *gpu("1", 8 * GiB, 2 * GiB),
            Metric(DISK_FREE, 50 * GiB, {"path": "/var/lib/outpost"}),
            Metric(DISK_FREE, 7 * GiB, {"path": "/models"}),
        ),
    )
    have = capacity({"memory_bytes": 64 * GiB}, sample)  # telemetry wins over the Hello
    assert have == Capacity(3 * GiB, 13 * GiB, 7 * GiB, "telemetry")


def test_capacity_from_telemetry_without_a_gpu_is_no_vram() -> None:
    have = capacity({}, Sample(AT, (Metric(MEMORY_AVAILABLE, 2 * GiB),)))
    assert have == Capacity(2 * GiB, 0, None, "telemetry")
    # A sample that reported nothing of memory or disk leaves those unknown.
    empty = capacity({}, Sample(AT, (Metric("outpost_cpu_utilization_ratio", 0.5),)))
    assert empty == Capacity(None, 0, None, "telemetry")


def test_capacity_from_the_hello_or_nothing() -> None:
    assert capacity({"memory_bytes": 16 * GiB}, None) == Capacity(16 * GiB, None, None, "hello")
    for hardware in ({}, {"memory_bytes": 0}, {"memory_bytes": -5}, {"memory_bytes": "16G"}):
        assert capacity(hardware, None) == Capacity(None, None, None, "nothing reported")


def test_a_model_that_fits_has_no_problems() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=0)
    exact = Capacity(need.memory_bytes, 0, SIZE, "telemetry")
    assert problems(need, exact) == []
    assert problems(need, Capacity(None, None, None, "nothing reported")) == []
    offloaded = requirement(SMOL, SIZE, context_length=4096, gpu_layers=-1)
    assert problems(offloaded, Capacity(OVERHEAD_BYTES, 192_734_272, 10 * GiB, "telemetry")) == []
    # The Hello says nothing of GPUs: offloading cannot be checked, so it is not refused.
    assert problems(offloaded, Capacity(16 * GiB, None, None, "hello")) == []


def test_too_little_memory_is_explained_with_the_numbers() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=0)
    [found] = problems(need, Capacity(need.memory_bytes - 1, None, None, "telemetry"))
    assert found == (
        "needs 439.8 MiB of memory (93.8 MiB weights and 90.0 MiB KV cache, less what is "
        "offloaded, plus 256.0 MiB working space) but 439.8 MiB is available"
    )
    [small] = problems(need, Capacity(100 * MiB, None, None, "telemetry"))
    assert small.endswith("but 100.0 MiB is available")


def test_too_little_gpu_memory_and_disk_are_each_reported() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=-1)
    found = problems(need, Capacity(8 * GiB, 0, 50 * MiB, "telemetry"))
    assert found == [
        "needs 183.8 MiB of GPU memory for its offloaded layers but 0 B is free",
        "needs 93.8 MiB of disk but 50.0 MiB is free",
    ]


def test_a_model_already_on_disk_needs_no_disk() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=0)
    have = Capacity(8 * GiB, 0, 1 * MiB, "telemetry")
    assert problems(need, have, already_on_disk=True) == []
    assert len(problems(need, have)) == 1


def test_every_shortfall_at_once() -> None:
    need = requirement(SMOL, SIZE, context_length=4096, gpu_layers=10)
    found = problems(need, Capacity(1023, 1024 * GiB, 5 * 1024**4, "telemetry"))
    assert found == [
        "needs 380.5 MiB of memory (93.8 MiB weights and 90.0 MiB KV cache, less what is "
        "offloaded, plus 256.0 MiB working space) but 1023 B is available"
    ]
    tiny = problems(need, Capacity(0, 1024, 0, "telemetry"))
    assert [p.split(" but ")[1] for p in tiny] == [
        "0 B is available",
        "1.0 KiB is free",
        "0 B is free",
    ]
