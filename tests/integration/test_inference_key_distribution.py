"""An inference key created at the control plane reaches a managed agent, which keeps
authenticating it alone; a revoked key stops working."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

from agent.inference_keys import INFERENCE_KEYS_FILE
from common.policy.routing import Caller
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)


def create(cp: RunningControlPlane, name: str, role: str, team: str) -> dict[str, Any]:
    with cp.api() as api:
        response = api.post("/inference-keys", json={"name": name, "role": role, "team": team})
    assert response.status_code == 201, response.text
    return dict(response.json())


def desired_generation(cp: RunningControlPlane, agent_id: str) -> int:
    with cp.api() as api:
        return int(api.get(f"/agents/{agent_id}").json()["desired_generation"])


def test_the_agent_authenticates_created_keys_refuses_revoked_ones_and_keeps_them(
    tmp_path: Path,
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        early = create(cp, "early", "analyst", "bi")  # before the agent enrolls: it gets it too
        token = cp.create_token(site="branch-1")
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, token, cp.fingerprint
        )
        with running:
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                (listed,) = api.get("/agents").json()["agents"]
            agent_id = listed["id"]
            companion.wait_applied(desired_generation(cp, agent_id))
            keys = companion.inference_keys
            assert keys.authenticate(f"Bearer {early['key']}") == Caller(
                "analyst", "bi", str(early["id"])
            )

            late = create(cp, "late", "developer", "search")
            companion.wait_applied(desired_generation(cp, agent_id))
            assert keys.authenticate(f"Bearer {late['key']}") == Caller(
                "developer", "search", str(late["id"])
            )

            with cp.api() as api:
                assert api.delete(f"/inference-keys/{early['id']}").status_code == 204
            companion.wait_applied(desired_generation(cp, agent_id))
            assert keys.authenticate(f"Bearer {early['key']}") is None
            assert keys.authenticate(f"Bearer {late['key']}") is not None
            wait_until(
                lambda: any(
                    i == {"kind": "inference_keys", "name": "1", "state": "ready", "error": ""}
                    for i in _status(cp, agent_id)
                ),
                "the agent reports one inference key ready",
            )
            path = tmp_path / "agent" / INFERENCE_KEYS_FILE
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert late["key"] not in path.read_text()

    # The control plane is gone; the agent restarts from its state directory alone.
    again, companion = managed_agent(tmp_path / "agent")
    with again:
        wait_until(lambda: companion.inference_keys.grants != (), "the kept keys are loaded")
        assert not companion.link.connected.is_set()
        assert companion.inference_keys.authenticate(f"Bearer {late['key']}") == Caller(
            "developer", "search", str(late["id"])
        )
        assert companion.inference_keys.authenticate(f"Bearer {early['key']}") is None


def _status(cp: RunningControlPlane, agent_id: str) -> list[dict[str, Any]]:
    with cp.api() as api:
        return list(api.get(f"/agents/{agent_id}").json()["status"])
