"""Telemetry end to end: agent collectors → control stream → storage → REST and /metrics;
an outage buffered on the agent's disk and replayed without loss or duplicates; liveness."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlmodel import col, select

from controlplane.db.models import TelemetrySampleRecord
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)


def health(cp: RunningControlPlane, agent_id: str) -> dict[str, Any]:
    with cp.api() as api:
        response = api.get(f"/agents/{agent_id}/health")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stored_seqs(cp: RunningControlPlane, agent_id: str) -> list[int]:
    assert cp.server.services is not None
    with cp.server.services.db.session() as session:
        rows = session.exec(
            select(TelemetrySampleRecord.seq)
            .where(TelemetrySampleRecord.agent_id == agent_id)
            .order_by(col(TelemetrySampleRecord.seq))
        ).all()
    return list(rows)


def scrape(cp: RunningControlPlane) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{cp.ports.http}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_telemetry_round_trip_outage_replay_and_liveness(tmp_path: Path) -> None:
    settings = controlplane_settings(
        tmp_path / "cp",
        None,
        liveness_grace=timedelta(seconds=1),
        liveness_restart_grace=timedelta(0),
    )
    with RunningControlPlane(settings) as cp:
        enroll_port = cp.ports.grpc
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, cp.create_token(), cp.fingerprint,
            telemetry_interval_s=0.2,
        )  # fmt: skip
        with running:
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                agent_id = api.get("/agents").json()["agents"][0]["id"]
            wait_until(lambda: health(cp, agent_id)["counters"]["stored"] >= 3, "samples stored")
            first = health(cp, agent_id)
            names = {m["name"] for m in first["metrics"]}
            assert {"outpost_memory_total_bytes", "outpost_cpu_utilization_ratio"} <= names
            assert first["liveness"] == {"state": "ready", "reason": "connected"}
            assert scrape(cp)[("outpost_fleet_agents", (("liveness", "ready"),))] == 1.0

            # The control plane goes away; the agent keeps sampling into its disk buffer.
            cp.__exit__(None, None, None)
            wait_until(lambda: len(companion.telemetry) >= 5, "samples buffered during the outage")
            last_seq = companion.telemetry.next_seq - 1
            with RunningControlPlane(replace(settings, grpc_port=enroll_port)) as cp2:
                wait_until(
                    lambda: stored_seqs(cp2, agent_id)[-1:] >= [last_seq],
                    "the buffered samples are replayed",
                )
                seqs = stored_seqs(cp2, agent_id)
                assert seqs[:last_seq] == list(range(1, last_seq + 1))  # no gap, no repeat
                running.stop()
                wait_until(
                    lambda: health(cp2, agent_id)["liveness"]["state"] == "unreachable",
                    "the stopped agent becomes unreachable after the grace period",
                )
                up = scrape(cp2)
                assert up[("outpost_fleet_agents", (("liveness", "unreachable"),))] == 1.0
                assert up[("outpost_telemetry_samples_stored_total", ())] >= last_seq
