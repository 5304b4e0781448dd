"""`site_agent` targets: an agent forwards to another agent of its site, also offline."""

from __future__ import annotations

import contextlib
from pathlib import Path

import openai
import pytest

from tests.agent_harness import RunningAgent
from tests.controlplane_harness import (
    ObservedManagedAgent,
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_inference_key_distribution import create, desired_generation

pytestmark = pytest.mark.model

PROMPT = "Count: 1, 2, 3,"


def policy(shelf_id: str) -> str:
    return f"""
version: 1
roles:
  staff: {{max_level: restricted, targets: ["*"]}}
targets:
  shelf: {{type: site_agent, agent: "{shelf_id}", model: smol, max_level: restricted}}
  home: {{type: local, model: smol, max_level: restricted}}
routes:
  - {{name: via-shelf, targets: [shelf, home]}}
"""


def chat(base: str, key: str, headers: dict[str, str] | None = None) -> str:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
    answer = client.chat.completions.create(
        model="auto",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=8,
        temperature=0,
        extra_headers=headers,
    )
    return answer.choices[0].message.content or ""


def test_an_agent_without_the_model_answers_through_its_sites_agent_also_offline(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with contextlib.ExitStack() as stack:
        cp = RunningControlPlane(settings)
        stack.enter_context(cp)
        agents: dict[str, tuple[RunningAgent, ObservedManagedAgent, str]] = {}
        for name in ("front", "shelf"):
            running, companion = managed_agent(
                tmp_path / name,
                cp.enroll_address,
                cp.create_token(site="shop"),
                cp.fingerprint,
                inference_address="127.0.0.1:0",
            )
            stack.enter_context(running)
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, f"{name} is connected")
            known = {agent_id for _, _, agent_id in agents.values()}
            with cp.api() as api:
                (agent_id,) = {a["id"] for a in api.get("/agents").json()["agents"]} - known
            agents[name] = (running, companion, agent_id)
        front, front_companion, front_id = agents["front"]
        shelf, shelf_companion, shelf_id = agents["shelf"]
        with cp.api() as api:
            cp.assign_demo_model(demo_model, shelf_id)
            applied = api.put(
                "/policy", content=policy(shelf_id), headers={"Content-Type": "application/yaml"}
            )
            assert applied.status_code == 201, applied.text
        key = create(cp, "till", "staff", "retail")["key"]
        shelf_companion.wait_applied(desired_generation(cp, shelf_id))
        front_companion.wait_applied(desired_generation(cp, front_id))
        local_only = {"X-Outpost-Local-Only": "true"}
        wait_until(lambda: _answers(shelf.http_base, key, local_only), "shelf serves smol", 120)

        expected = chat(shelf.http_base, key, local_only)  # the shelf's own model, directly
        assert expected
        assert chat(front.http_base, key) == expected  # front has no model: forwarded
        # The shelf's own request may not go round again: forwarded once, then its model.
        assert chat(shelf.http_base, key) == expected

        cp.__exit__(None, None, None)  # the control plane goes away; the agents stay
        assert chat(front.http_base, key) == expected  # forwarded with the address it knows


def _answers(base: str, key: str, headers: dict[str, str]) -> bool:
    try:
        return bool(chat(base, key, headers))
    except openai.APIError:
        return False
