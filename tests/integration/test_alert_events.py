"""Alert events end to end: a rule that fires on a managed agent and on the gateway is recorded
by the control plane (`/api/v1/alerts/events`, `/api/v1/alerts/firing`), the agent's once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from tests.controlplane_harness import (
    RunningControlPlane,
    apply_policy,
    connected_agent,
    controlplane_settings,
    wait_until,
)
from tests.integration.test_inference_key_distribution import create, desired_generation
from tests.integration.test_managed_policy_enforcement import chat
from tests.recording_openai_server import Behaviour, RecordingOpenAI

pytestmark = pytest.mark.model

# The cloud answers 500 to everything: each request falls back to "home"; after 10 in the
# window the error rate is 1 and the rule fires (the agent evaluates every 5 s).
POLICY = """
version: 1
roles:
  dev: {max_level: internal, targets: ["*"]}
targets:
  home: {type: local, model: smol, max_level: internal}
  cloud: {type: cloud, base_url: "%s", model: mini, max_level: internal,
          price_per_1k_input: 0.1, price_per_1k_output: 0.2}
routes:
  - {name: all, targets: [cloud, home]}
alerts:
  rules:
    - {name: cloud-down, metric: error_rate, op: ">", threshold: 0.05, scope: target,
       window_s: 300, action: route_away}
"""


def get(cp: RunningControlPlane, path: str, **params: Any) -> Any:
    with cp.api() as api:
        response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def firing(cp: RunningControlPlane) -> list[tuple[str, str, str]]:
    return [(f["source"], f["rule"], f["key"]) for f in get(cp, "/alerts/firing")["firing"]]


def test_firings_on_the_agent_and_the_gateway_are_recorded_centrally(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RecordingOpenAI() as cloud, RunningControlPlane(settings) as cp:
        cloud.behave(Behaviour.FAIL_500)
        with connected_agent(
            cp, tmp_path / "agent", demo_model, inference_address="127.0.0.1:0"
        ) as (running, companion, agent_id):
            apply_policy(cp, POLICY % cloud.base_url)
            key = create(cp, "dev", "dev", "platform")["key"]
            companion.wait_applied(desired_generation(cp, agent_id))
            gateway = f"http://127.0.0.1:{cp.ports.http}"
            # Not by asking: a request that fails while smol loads would count against "home".
            wait_until(lambda: _home_ready(gateway, key), "the agent serves smol", 180)
            assert firing(cp) == []

            for _ in range(10):  # the rule needs 10 requests in its window
                assert chat(running.http_base, key, "1, 2,")
            wait_until(
                lambda: (agent_id, "cloud-down", "cloud") in firing(cp),
                "the agent's firing reaches the control plane",
            )
            (event,) = get(cp, "/alerts/events", source=agent_id)["events"]
            assert (event["seq"], event["state"], event["action"]) == (1, "firing", "route_away")
            assert (event["scope"], event["metric"], event["op"]) == ("target", "error_rate", ">")
            assert event["value"] == 1.0
            assert event["threshold"] == 0.05
            wait_until(lambda: len(companion.alert_events) == 0, "the agent forgets acked events")
            tried = len(cloud.received)
            assert chat(running.http_base, key, "1, 2,")  # routed away: the cloud is skipped
            assert len(cloud.received) == tried

            for _ in range(10):
                assert chat(gateway, key, "1, 2,")
            wait_until(
                lambda: ("gateway", "cloud-down", "cloud") in firing(cp),
                "the gateway's own firing is recorded",
            )
            assert get(cp, "/alerts/events", source="gateway", state="firing")["events"]
            assert get(cp, "/alerts/events", state="cleared")["events"] == []
            assert len(get(cp, "/alerts/events", source=agent_id)["events"]) == 1  # once


def _home_ready(gateway: str, key: str) -> bool:
    models = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0).models.list()
    return any(m.id == "home" and getattr(m, "ready", False) for m in models.data)
