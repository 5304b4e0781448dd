"""Forwarding a request to other agents' OpenAI endpoints: the gateway's local targets and the
agents' `site_agent` targets. The caller's own key goes along, with the decided level, a
local-only restriction and a forwarded mark (a forwarded request is never forwarded again)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any

from common.inference import GenerationEvent
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.dispatch import Outcome, TargetFailure
from common.policy.gate_streams import cloud_events
from common.policy.policy_model import CloudTarget

log = logging.getLogger(__name__)

DECLARED_LEVEL_HEADER = "x-outpost-data-level"
LOCAL_ONLY_HEADER = "x-outpost-local-only"
FORWARDED_HEADER = "x-outpost-forwarded"
# Another agent is tried when one answers with these (unreachable, busy, loading).
_NEXT_AGENT = (Outcome.ERROR, Outcome.TIMEOUT, Outcome.BUDGET)


@dataclass(frozen=True)
class ServingAgent:
    agent_id: str
    address: str  # HOST:PORT of the agent's OpenAI HTTP port


def forwarding_headers(authorization: str | None, level: str) -> dict[str, str]:
    """What a forwarded request carries: the caller's key, its level, local only, forwarded."""
    headers = {DECLARED_LEVEL_HEADER: level, LOCAL_ONLY_HEADER: "true", FORWARDED_HEADER: "true"}
    if authorization is not None:
        headers["authorization"] = authorization
    return headers


async def forward_to_agents(
    client: CloudClient,
    agents: tuple[ServingAgent, ...],
    alias: str,
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: Mapping[str, str],
    timeout_s: float,
) -> AsyncGenerator[GenerationEvent, None]:
    """The events of the first agent that answers; TargetFailure when none does."""
    failures: list[str] = []
    for agent in agents:
        target = CloudTarget(
            name=f"agent {agent.agent_id}",
            model=alias,
            max_level="",
            base_url=f"http://{agent.address}/v1",
            price_per_1k_input=0.0,
            price_per_1k_output=0.0,
            redact=False,
            timeout_s=timeout_s,
        )
        events = cloud_events(client, target, endpoint, body, headers)
        try:
            first = await anext(events)
        except TargetFailure as failure:
            await events.aclose()
            if failure.outcome not in _NEXT_AGENT:
                raise
            log.info("gateway: agent %s did not answer: %s", agent.agent_id, failure.reason)
            failures.append(f"agent {agent.agent_id}: {failure.reason}")
            continue
        except StopAsyncIteration:
            raise TargetFailure(Outcome.ERROR, f"agent {agent.agent_id} sent nothing") from None
        yield first
        async for event in events:
            yield event
        return
    reason = "; ".join(failures) or "no connected agent serves it and takes forwarded requests"
    raise TargetFailure(Outcome.ERROR, f"model {alias!r}: {reason}")
