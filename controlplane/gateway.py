"""The control plane's OpenAI-compatible gateway: the same policy gate as the agents, in front
of the fleet's agents and the policy's cloud providers.

Requests need an inference key and are classified and routed by the live policy
(common/policy/gate.py). A `local` target is served by a connected agent that serves that
model alias and takes forwarded requests (its `inference_address`): the request goes to that
agent's OpenAI endpoint with the caller's own key, the decided level as
`X-Outpost-Data-Level` and `X-Outpost-Local-Only: true`, so the agent enforces the same policy
again and can only answer with its own models. Agents are tried most recently seen first; one
that cannot be reached, is busy or loading gives way to the next, and when none answers the
policy's fallbacks apply. Without a policy the gateway answers 503: it routes nothing unchecked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from common.errors import InvalidArgument, Unavailable
from common.inference import (
    ChatRequest,
    CompletionRequest,
    EventStream,
    ModelInfo,
    check_messages,
    check_prompt,
)
from common.inference_key_grants import caller_for
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.forwarding import ServingAgent, forward_to_agents, forwarding_headers
from common.policy.gate import Authenticate, Credentials, FindSiteAgents, PolicyGate
from common.policy.gate_streams import sampling_body
from common.policy.policy_model import LocalTarget, SiteAgentTarget, Target
from common.policy.routing import Caller, PolicyEngine
from controlplane.gateway_admission import InFlightLimit
from controlplane.gateway_state import GatewaySnapshot, GatewayState

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256  # reserved on budgets when a request names none (agents default lower)
MAX_TOKENS_LIMIT = 32_768


class Gateway:
    """The InferenceFront of the control plane's `/v1/...` routes."""

    def __init__(
        self,
        state: GatewayState,
        cloud: CloudClient,
        gate_for: Callable[[Callable[[], PolicyEngine], Authenticate, FindSiteAgents], PolicyGate],
    ) -> None:
        """`gate_for(engine, authenticate, site_agents)` builds the policy gate (with the
        gateway's budgets, alerts and ledger sink) over this gateway's view of the policy, the
        keys and the agents."""
        self._state = state
        self._cloud = cloud
        self.limit = InFlightLimit()
        self.gate = gate_for(self._engine, self._authenticate, self._find_site_agents)

    def _engine(self) -> PolicyEngine:
        snapshot = self._state.latest()
        return snapshot.engine if snapshot is not None else PolicyEngine(None)

    def _authenticate(self, authorization: str | None) -> Caller | None:
        snapshot = self._state.latest()
        return caller_for(authorization, snapshot.keys) if snapshot is not None else None

    async def _find_site_agents(self, agent: str) -> tuple[ServingAgent, ...]:
        """A `site_agent` target's agent by id or name, if it is connected and forwardable."""
        snapshot = self._state.latest()
        return snapshot.agents.get(agent, ()) if snapshot is not None else ()

    def models(self) -> list[ModelInfo]:
        """The live policy's targets by name: cloud ones, `local` ones when an agent serves the
        model now, `site_agent` ones when their agent is connected and takes requests."""
        snapshot = self._state.fresh() or self._state.load()  # on a worker thread
        policy = snapshot.engine.policy
        if policy is None:
            return []
        return [
            ModelInfo(
                alias=target.name,
                sha256="",
                architecture="",
                context_length=0,
                size_bytes=0,
                ready=_available(snapshot, target),
            )
            for target in policy.targets
        ]

    async def start_completion(
        self, request: CompletionRequest, credentials: Credentials
    ) -> EventStream:
        check_prompt(request.prompt)
        snapshot = await self._routable()
        body = {"prompt": request.prompt, **sampling_body(request.sampling)}

        async def start_local(alias: str, parts: tuple[str, ...], level: str) -> EventStream:
            sent = {**body, "model": alias, "prompt": parts[0]}
            return self._forward(snapshot, alias, Endpoint.COMPLETIONS, sent, credentials, level)

        max_tokens = _max_tokens(request.sampling.max_tokens)
        return await self.limit.run(
            lambda: self.gate.completion(
                snapshot.engine, request, credentials, start_local, max_tokens
            )
        )

    async def start_chat(self, request: ChatRequest, credentials: Credentials) -> EventStream:
        check_messages(request.messages)
        snapshot = await self._routable()
        roles = [m.role for m in request.messages]
        sampling = sampling_body(request.sampling)

        async def start_local(alias: str, parts: tuple[str, ...], level: str) -> EventStream:
            messages = [{"role": r, "content": c} for r, c in zip(roles, parts, strict=True)]
            sent = {**sampling, "model": alias, "messages": messages}
            return self._forward(snapshot, alias, Endpoint.CHAT, sent, credentials, level)

        max_tokens = _max_tokens(request.sampling.max_tokens)
        return await self.limit.run(
            lambda: self.gate.chat(snapshot.engine, request, credentials, start_local, max_tokens)
        )

    async def _routable(self) -> GatewaySnapshot:
        snapshot = await self._state.current()
        if snapshot.engine.policy is None:
            raise Unavailable(
                "no routing policy is applied: the gateway routes requests only under one "
                "(outpost policy apply FILE)"
            )
        return snapshot

    def _forward(
        self,
        snapshot: GatewaySnapshot,
        alias: str,
        endpoint: Endpoint,
        body: dict[str, Any],
        credentials: Credentials,
        level: str,
    ) -> EventStream:
        agents = snapshot.serving.get(alias, ())
        headers = forwarding_headers(credentials.authorization, level)
        timeout_s = _local_timeout(snapshot, alias)
        return forward_to_agents(self._cloud, agents, alias, endpoint, body, headers, timeout_s)


def _available(snapshot: GatewaySnapshot, target: Target) -> bool:
    if isinstance(target, LocalTarget):
        return bool(snapshot.serving.get(target.model))
    if isinstance(target, SiteAgentTarget):
        return bool(snapshot.agents.get(target.agent))
    return True


def _local_timeout(snapshot: GatewaySnapshot, alias: str) -> float:
    policy = snapshot.engine.policy
    timeouts = [
        t.timeout_s
        for t in (policy.targets if policy is not None else ())
        if isinstance(t, LocalTarget) and t.model == alias
    ]
    return max(timeouts, default=60.0)


def _max_tokens(requested: int | None) -> int:
    if requested is None:
        return DEFAULT_MAX_TOKENS
    if not 1 <= requested <= MAX_TOKENS_LIMIT:
        raise InvalidArgument(f"max_tokens must be between 1 and {MAX_TOKENS_LIMIT}")
    return requested
