"""A managed agent enforces what its control plane sends: the policy and the inference keys."""

from __future__ import annotations

from pathlib import Path

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

pytestmark = pytest.mark.model

POLICY = """
version: 1
detectors:
  - {name: cards, builtin: payment_card, level: confidential}
roles:
  support-agent: {max_level: confidential, targets: [home]}
targets:
  home: {type: local, model: smol, max_level: restricted}
routes:
  - {name: everything-home, targets: [home]}
"""


def chat(base: str, key: str, text: str, model: str = "auto", level: str = "") -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": text}],
        max_tokens=4,
        temperature=0,
        extra_headers={"X-Outpost-Data-Level": level} if level else None,
    )
    return answer.choices[0].message.content or ""


def test_policy_and_keys_from_the_control_plane_guard_the_agents_endpoints(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with (
        RunningControlPlane(settings) as cp,
        connected_agent(cp, tmp_path / "agent", demo_model) as agent,
    ):
        base = agent.running.http_base
        # No policy yet: the agent answers anyone, from its own models by alias.
        wait_until(lambda: _answers(base, "no-key"), "the agent serves smol", timeout=120)
        apply_policy(cp, POLICY)
        key = create(cp, "helpdesk", "support-agent", "support")
        agent.companion.wait_applied(desired_generation(cp, agent.agent_id))

        with pytest.raises(openai.AuthenticationError):
            chat(base, "no-key", "1, 2, 3,")
        assert chat(base, key["key"], "1, 2, 3,")  # the local model answers
        with pytest.raises(openai.PermissionDeniedError, match="may not send restricted"):
            chat(base, key["key"], "hello", level="restricted")


def _answers(base: str, key: str) -> bool:
    try:
        return bool(chat(base, key, "1, 2,", model="smol"))
    except openai.APIError:
        return False
