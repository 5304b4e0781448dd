"""The usage ledger end to end: a managed agent's routed requests become rows on the control
plane (records and spend reports); rows made while it is down arrive after it returns, none
twice; a restarted agent's budgets still count the day's spend."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.controlplane_harness import (
    RunningControlPlane,
    apply_policy,
    connected_agent,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_inference_key_distribution import create, desired_generation
from tests.integration.test_managed_policy_enforcement import chat

pytestmark = pytest.mark.model

# The team "metered" may spend what one request may cost at most (reserved before it runs:
# 1 per second of the target's 60 s timeout): its first request fits, and nothing after it.
POLICY = """
version: 1
detectors:
  - {name: cards, builtin: payment_card, level: confidential}
roles:
  support-agent: {max_level: confidential, targets: [home]}
targets:
  home: {type: local, model: smol, max_level: restricted, cost_per_hour: 3600, timeout_s: 60}
routes:
  - {name: everything-home, targets: [home]}
budgets:
  teams:
    metered: {spend_per_day: 60}
"""
CARD = "my card is 4111 1111 1111 1111, count: 1, 2,"


def records(cp: RunningControlPlane, **params: Any) -> list[dict[str, Any]]:
    with cp.api() as api:
        response = api.get("/usage/records", params={"since": "2000-01-01", **params})
    assert response.status_code == 200, response.text
    return list(response.json()["records"])


def test_rows_reach_the_control_plane_once_also_after_an_outage(
    tmp_path: Path, demo_model: Path
) -> None:
    settings = controlplane_settings(tmp_path / "cp", None)
    with RunningControlPlane(settings) as cp:
        enroll_port = cp.ports.grpc
        with connected_agent(cp, tmp_path / "agent", demo_model) as (running, companion, agent_id):
            apply_policy(cp, POLICY)
            key = create(cp, "helpdesk", "support-agent", "support")
            metered = create(cp, "meter", "support-agent", "metered")
            companion.wait_applied(desired_generation(cp, agent_id))
            wait_until(lambda: _answers(running.http_base, key["key"]), "smol answers", 180)

            assert chat(running.http_base, key["key"], CARD)
            assert chat(running.http_base, metered["key"], "1, 2,")
            with pytest.raises(openai.RateLimitError, match="over its daily budget"):
                chat(running.http_base, metered["key"], "1, 2,")
            wait_until(lambda: len(records(cp)) >= 4, "the rows reach the control plane")
            rows = records(cp)
            card = next(r for r in rows if r["level"] == "confidential")
            assert (card["source"], card["team"], card["route"], card["target"]) == (
                agent_id, "support", "everything-home", "home",
            )  # fmt: skip
            assert card["outcome"] == "ok"
            assert card["detectors"] == ["cards"]
            assert card["prompt_tokens"] > 0
            assert card["completion_tokens"] > 0
            assert "prompt" not in card
            refused = [r for r in rows if r["outcome"] == "refused"]
            assert [(r["team"], r["target"]) for r in refused] == [("metered", None)]
            with cp.api() as api:
                query = {"since": "2000-01-01", "group_by": "team,route"}
                spend = api.get("/usage/spend", params=query).json()
            by_team = {g["team"]: g for g in spend["groups"]}
            assert by_team["metered"]["requests"] == 2
            assert by_team["metered"]["refused"] == 1
            ok_rows = [r for r in rows if r["outcome"] == "ok" and r["team"] == "support"]
            assert by_team["support"]["prompt_tokens"] == sum(r["prompt_tokens"] for r in ok_rows)
            assert spend["total"]["cost"] == _decimal_sum(r["cost"] for r in rows)

            # The control plane goes away; the agent keeps serving and keeps its rows.
            wait_until(lambda: len(companion.usage) == 0, "every row so far is acked")
            cp.__exit__(None, None, None)
            wait_until(lambda: not companion.link.connected.is_set(), "the agent notices")
            for _ in range(2):
                assert chat(running.http_base, key["key"], "1, 2, 3,")
            wait_until(lambda: len(companion.usage) == 2, "the outage's rows are on disk")
            last_seq = companion.usage.next_seq - 1
            with RunningControlPlane(replace(settings, grpc_port=enroll_port)) as cp2:
                wait_until(
                    lambda: len(records(cp2, source=agent_id)) >= last_seq,
                    "the rows made during the outage arrive",
                )
                seqs = sorted(r["seq"] for r in records(cp2, source=agent_id))
                assert seqs == list(range(1, last_seq + 1))  # no gap, none twice
                wait_until(lambda: len(companion.usage) == 0, "the agent forgets acked rows")

    # A restart (control plane down): the metered team's spend today is remembered.
    again, companion = managed_agent(tmp_path / "agent")
    with again:
        again.wait_until_serving()
        wait_until(lambda: _answers(again.http_base, key["key"]), "smol answers again", 180)
        with pytest.raises(openai.RateLimitError, match="over its daily budget"):
            chat(again.http_base, metered["key"], "1, 2,")


def _answers(base: str, key: str) -> bool:
    try:
        return bool(chat(base, key, "1, 2,"))
    except openai.APIError:
        return False


def _decimal_sum(values: Any) -> str:
    from decimal import Decimal

    return f"{sum((Decimal(v) for v in values), Decimal(0)):f}"
