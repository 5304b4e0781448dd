"""Registry → assignment → verified download → serving, with real servers and the real model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.artifacts.store import ArtifactStore
from common.artifacts import CHUNK_SIZE
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.model_variants import missing_tensor_copy, nan_weights_copy

pytestmark = pytest.mark.model

SMOL: dict[str, Any] = {"alias": "smol", "context_length": 512}
DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def upload(cp: RunningControlPlane, path: Path, **params: str) -> dict[str, Any]:
    with cp.api() as api, path.open("rb") as handle:
        response = api.post(
            "/models",
            content=handle,
            params=params,
            headers={"Content-Type": "application/octet-stream"},
        )
    assert response.status_code == 201, response.text
    return dict(response.json())


def assign(cp: RunningControlPlane, **body: Any) -> httpx.Response:
    with cp.api() as api:
        return api.post("/assignments", json=body)


def rollouts(cp: RunningControlPlane) -> list[dict[str, Any]]:
    with cp.api() as api:
        return list(api.get("/rollouts").json()["rollouts"])


def rollout_of(cp: RunningControlPlane, agent_id: str, sha256: str) -> dict[str, Any] | None:
    return next(
        (r for r in rollouts(cp) if r["agent_id"] == agent_id and r["sha256"] == sha256), None
    )


def wait_state(cp: RunningControlPlane, agent_id: str, sha256: str, state: str) -> dict[str, Any]:
    def reached() -> bool:
        row = rollout_of(cp, agent_id, sha256)
        return row is not None and row["state"] == state

    wait_until(reached, f"agent {agent_id} reports {sha256[:12]} {state}", timeout=120)
    row = rollout_of(cp, agent_id, sha256)
    assert row is not None
    return row


def complete(base: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{base}/v1/completions",
        json={"model": model, "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0},
        timeout=60,
    )


def agent_id_of(cp: RunningControlPlane, name_hint: int = 0) -> str:
    with cp.api() as api:
        agents = api.get("/agents").json()["agents"]
    return str(agents[name_hint]["id"])


def test_import_assign_download_verify_serve_and_roll_back(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        good = upload(cp, demo_model, name="smollm2")
        assert good["sha256"] == DEMO_SHA256
        assert good["version"] == "1"
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, cp.create_token(site="hq"), cp.fingerprint
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            agent_id = agent_id_of(cp)
            response = assign(
                cp, model="smollm2@1", agent=agent_id, alias="smol", context_length=512
            )
            assert response.status_code == 201, response.text
            assert response.json()["agents"] == [agent_id]
            row = wait_state(cp, agent_id, DEMO_SHA256, "ready")
            assert row["model"] == "smollm2@1"
            assert row["serving_sha256"] == DEMO_SHA256
            store = ArtifactStore(tmp_path / "agent" / "artifacts")
            assert store.blobs() == [DEMO_SHA256]
            assert store.blob_path(DEMO_SHA256).read_bytes() == demo_model.read_bytes()
            first = complete(running.http_base, "smol")
            assert first.status_code == 200, first.text
            assert first.json()["choices"][0]["text"]

            # A new version whose weights are NaN loads but fails its health prompt: the agent
            # keeps serving version 1 and reports why.
            broken = upload(
                cp, nan_weights_copy(demo_model, tmp_path / "broken.gguf"), name="smollm2"
            )
            assert broken["version"] == "2"
            response = assign(
                cp, model="smollm2@2", agent=agent_id, alias="smol", context_length=512
            )
            assert response.status_code == 201, response.text
            failed = wait_state(cp, agent_id, broken["sha256"], "failed")
            assert "health prompt" in failed["error"]
            assert failed["serving_sha256"] == DEMO_SHA256
            again = complete(running.http_base, "smol")
            assert again.status_code == 200
            assert again.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
            # The previous version stays on disk; the failed one is kept while it is assigned.
            assert set(store.blobs()) == {DEMO_SHA256, broken["sha256"]}

            # A version llama.cpp cannot load at all rolls back the same way.
            unloadable = upload(
                cp, missing_tensor_copy(demo_model, tmp_path / "unloadable.gguf"), name="smollm2"
            )
            response = assign(
                cp, model="smollm2@3", agent=agent_id, alias="smol", context_length=512
            )
            assert response.status_code == 201, response.text
            failed = wait_state(cp, agent_id, unloadable["sha256"], "failed")
            assert "failed to load" in failed["error"]
            assert failed["serving_sha256"] == DEMO_SHA256
            assert complete(running.http_base, "smol").status_code == 200


def test_fit_check_refuses_an_assignment_with_the_numbers(tmp_path: Path, demo_model: Path) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        upload(cp, demo_model, name="smollm2")
        running, _ = managed_agent(
            tmp_path / "agent",
            cp.enroll_address,
            cp.create_token(site="hq"),
            cp.fingerprint,
            telemetry_interval_s=1.0,
        )
        with running:
            running.wait_until_serving()
            agent_id = ""

            def sampled() -> bool:
                nonlocal agent_id
                with cp.api() as api:
                    agents = api.get("/agents").json()["agents"]
                    if not agents:
                        return False
                    agent_id = agents[0]["id"]
                    health = api.get(f"/agents/{agent_id}/health").json()
                return health.get("collected_at") is not None

            wait_until(sampled, "the agent's first telemetry sample is stored")
            # This machine has no NVIDIA GPU: offloading every layer cannot fit.
            response = assign(cp, model="smollm2", site="hq", gpu_layers=-1)
            assert response.status_code == 422, response.text
            message = response.json()["error"]["message"]
            assert agent_id in message
            assert "of GPU memory for its offloaded layers but 0 B is free" in message
            with cp.api() as api:
                assert api.get("/assignments").json()["assignments"] == []
            accepted = assign(cp, model="smollm2", site="hq")
            assert accepted.status_code == 201
            assert accepted.json()["agents"] == [agent_id]


def test_peer_transfer_within_a_site(tmp_path: Path, demo_model: Path) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        model = upload(cp, demo_model, name="smollm2")
        first, first_companion = managed_agent(
            tmp_path / "a",
            cp.enroll_address,
            cp.create_token(site="branch"),
            cp.fingerprint,
            peer_address="127.0.0.1:0",
        )
        second, second_companion = managed_agent(
            tmp_path / "b",
            cp.enroll_address,
            cp.create_token(site="branch"),
            cp.fingerprint,
            peer_address="127.0.0.1:0",
        )
        with first:
            first.wait_until_serving()
            wait_until(first_companion.link.connected.is_set, "agent a is connected")
            first_id = agent_id_of(cp)
            assert assign(cp, model="smollm2", agent=first_id, alias="smol").status_code == 201
            wait_state(cp, first_id, model["sha256"], "ready")
            with second:
                second.wait_until_serving()
                wait_until(second_companion.link.connected.is_set, "agent b is connected")
                with cp.api() as api:
                    agents = api.get("/agents").json()["agents"]
                second_id = next(a["id"] for a in agents if a["id"] != first_id)
                assert assign(cp, model="smollm2", agent=second_id, alias="smol").status_code == 201
                wait_state(cp, second_id, model["sha256"], "ready")
                sources = second_companion.rollout.sources_used[model["sha256"]]
                assert sources == {f"peer {first_companion.link.peer_address}"}
                assert complete(second.http_base, "smol").status_code == 200


def test_agent_restarted_mid_download_resumes(tmp_path: Path, demo_model: Path) -> None:
    size = demo_model.stat().st_size
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        model = upload(cp, demo_model, name="smollm2")
        token = cp.create_token(site="hq")
        # 8 MiB/s: the 94 MiB model takes about 12 s, so the restart lands mid-way.
        running, companion = managed_agent(
            tmp_path / "agent",
            cp.enroll_address,
            token,
            cp.fingerprint,
            download_rate_limit=8 * 1024 * 1024,
        )
        with running:
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, "the agent is connected")
            agent_id = agent_id_of(cp)
            assert assign(cp, model="smollm2", agent=agent_id, alias="smol").status_code == 201

            def halfway() -> bool:
                row = rollout_of(cp, agent_id, model["sha256"])
                return row is not None and row["bytes_done"] >= 3 * CHUNK_SIZE

            wait_until(halfway, "three chunks are verified", timeout=60)
        first_fetched = companion.rollout.bytes_fetched
        assert 3 * CHUNK_SIZE <= first_fetched < size
        again, again_companion = managed_agent(tmp_path / "agent", download_rate_limit=0)
        with again:
            again.wait_until_serving()
            wait_state(cp, agent_id, model["sha256"], "ready")
            refetched = first_fetched + again_companion.rollout.bytes_fetched - size
            assert 0 <= refetched <= CHUNK_SIZE
            assert complete(again.http_base, "smol").status_code == 200
