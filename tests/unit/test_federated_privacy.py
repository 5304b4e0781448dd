"""Differential privacy in a job's rounds: the ServerApp wraps FedAvg in Flower's server-side
fixed clipping, so each site's update is clipped and the aggregate gets Gaussian noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from controlplane.federated.run_plan import DifferentialPrivacy, RunPlan
from controlplane.federated.server_app import _settings, _strategy
from controlplane.federated.server_rounds import SiteRounds
from tests.unit.test_federated_rounds import (
    SHAPES,
    SITES,
    FakeGrid,
    adapter,
    array_record,
    metrics,
    reply,
    server_identity,  # noqa: F401  (the fixture, used below)
)

pytestmark = pytest.mark.usefixtures("server_identity")


def plan(tmp_path: Path, dp: DifferentialPrivacy | None) -> RunPlan:
    return RunPlan(
        job_id="j",
        output_dir=str(tmp_path),
        base_gguf="unused.gguf",
        agents=tuple(SITES.values()),
        rounds=1,
        rank=2,
        targets=("q_proj",),
        differential_privacy=dp,
    )


def one_round(tmp_path: Path, dp: DifferentialPrivacy | None) -> dict[str, np.ndarray]:
    """Round 1 from an all-zero adapter; the sites answer with far-apart updates."""
    strategy = SiteRounds(_strategy(plan(tmp_path, dp), SITES), SITES, SHAPES, tmp_path)
    config = ConfigRecord(dict(_settings(plan(tmp_path, dp)).to_config()))
    sent = list(strategy.configure_train(1, array_record(adapter(0.0)), config, FakeGrid(SITES)))
    assert sorted(m.metadata.dst_node_id for m in sent) == sorted(SITES)
    replies = [
        reply(11, adapter(1.0), metrics(10)),
        reply(22, adapter(100.0), metrics(10)),
        reply(33, adapter(-50.0), metrics(10)),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return {key: array.numpy() for key, array in arrays.items()}


def test_without_privacy_the_aggregate_is_the_plain_average(tmp_path: Path) -> None:
    for value in one_round(tmp_path, None).values():
        np.testing.assert_allclose(value, (1.0 + 100.0 - 50.0) / 3, rtol=1e-6)


def test_updates_are_clipped_and_the_aggregate_gets_noise(tmp_path: Path) -> None:
    clip = 1.0
    aggregate = one_round(tmp_path, DifferentialPrivacy(noise_multiplier=0.0, clipping_norm=clip))
    # Each site's update was scaled to an L2 norm of at most `clip` (over all its tensors), so
    # the average of three of them has a norm of at most `clip` too: far below 17 per element.
    norm = float(np.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in aggregate.values())))
    assert norm <= clip + 1e-5
    noisy = one_round(tmp_path, DifferentialPrivacy(noise_multiplier=1.0, clipping_norm=clip))
    difference = max(float(np.abs(noisy[k] - aggregate[k]).max()) for k in aggregate)
    assert difference > 1e-3  # Gaussian noise of scale noise_multiplier * clip / sites
