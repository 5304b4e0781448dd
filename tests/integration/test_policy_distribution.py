"""A policy applied at the control plane reaches a managed agent, which keeps enforcing it alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.policy_state import POLICY_STATE_FILE
from common.policy.document import parse_policy
from common.policy.routing import Caller
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.policy_documents import CLOUD, MINIMAL

UNKNOWN_LEVEL = MINIMAL.replace("max_level: internal", "max_level: secretish")


def agent_json(cp: RunningControlPlane, agent_id: str) -> dict[str, Any]:
    with cp.api() as api:
        return dict(api.get(f"/agents/{agent_id}").json())


def policy_items(cp: RunningControlPlane, agent_id: str) -> list[dict[str, Any]]:
    return [i for i in agent_json(cp, agent_id)["status"] if i["kind"] == "policy"]


def apply(cp: RunningControlPlane, document: str) -> Any:
    with cp.api() as api:
        return api.put("/policy", content=document, headers={"Content-Type": "application/yaml"})


def test_the_agent_gets_keeps_and_enforces_the_policy_alone(tmp_path: Path) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        assert apply(cp, CLOUD).status_code == 201  # before the agent enrolls: it gets it too
        token = cp.create_token(site="branch-1")
        running, companion = managed_agent(
            tmp_path / "agent", cp.enroll_address, token, cp.fingerprint
        )
        with running:
            wait_until(companion.link.connected.is_set, "the agent is connected")
            with cp.api() as api:
                (listed,) = api.get("/agents").json()["agents"]
            agent_id = listed["id"]
            wait_until(
                lambda: (
                    policy_items(cp, agent_id)
                    == [{"kind": "policy", "name": "1", "state": "ready", "error": ""}]
                ),
                "the agent reports policy version 1 ready",
            )
            response = apply(cp, MINIMAL)
            assert (response.status_code, response.json()["version"]) == (201, 2)
            wait_until(
                lambda: (
                    policy_items(cp, agent_id)
                    == [{"kind": "policy", "name": "2", "state": "ready", "error": ""}]
                ),
                "the agent reports policy version 2 ready",
            )
            assert companion.policy.policy is not None
            assert companion.policy.policy.digest == parse_policy(MINIMAL).digest
            assert (tmp_path / "agent" / POLICY_STATE_FILE).exists()
            # An invalid document is refused at the control plane; the agent keeps version 2.
            assert apply(cp, UNKNOWN_LEVEL).status_code == 422
            generation = agent_json(cp, agent_id)["desired_generation"]
            assert companion.wait_applied(generation).observed_generation == generation
            assert companion.policy.policy.version == 2

    # The control plane is gone; the agent restarts from its state directory alone.
    again, companion = managed_agent(tmp_path / "agent")
    with again:
        wait_until(lambda: companion.policy.policy is not None, "the kept policy is loaded")
        assert not companion.link.connected.is_set()
        assert companion.policy.policy is not None
        assert companion.policy.policy.version == 2
        decision = companion.current_engine().decide(["hello"], Caller(role="dev"))
        assert decision.targets == ("here",)
        assert decision.policy_digest == parse_policy(MINIMAL).digest
