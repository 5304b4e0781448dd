"""The routing policy at an OpenAI-compatible endpoint: who calls, at what level, which target.

Shared by the agent's endpoints and the control plane's gateway. With a policy in force every
request needs an inference key (`Authorization: Bearer ...`, or the gRPC metadata
`authorization`); the caller may declare a data level (HTTP header `X-Outpost-Data-Level`, gRPC
metadata `x-outpost-data-level`), which can raise the detected level but never lower it, and may
ask for on-premises targets only (`X-Outpost-Local-Only: true`; the gateway sends it with every
request it forwards to an agent). `PolicyEngine.decide` classifies the prompt and lists the
targets; `dispatch_stream` tries them in order: a `local` target runs through `start_local` (the
agent's own model, or the gateway's forwarding to an agent serving it), a `cloud` target through
the OpenAI-compatible client, a `site_agent` target is forwarded to that agent of the site
(common/policy/forwarding.py; a request that was forwarded already is not forwarded again).
Each routed request is reserved on its team's and key's budgets first
(common/policy/request_budgets.py) and settled when it ends; firing alert rules restrict
routing (common/policy/request_alerts.py); every routed request, answered, refused or failed,
gives one ledger row to `ledger`. A refusal is 403, a missing or unknown key
401, a budget that rejects 429, no target answering 503 with every attempt's reason.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from common.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from common.inference import ChatRequest, CompletionRequest, EventStream, Finished, GenerationEvent
from common.policy.cloud_client import CloudClient, Endpoint
from common.policy.dispatch import (
    AttemptRecord,
    DispatchFailed,
    Outcome,
    TargetFailure,
    dispatch_stream,
)
from common.policy.forwarding import (
    DECLARED_LEVEL_HEADER,
    FORWARDED_HEADER,
    LOCAL_ONLY_HEADER,
    ServingAgent,
    forward_to_agents,
    forwarding_headers,
)
from common.policy.gate_streams import (
    SettlingStream,
    StartLocal,
    cloud_events,
    local_events,
    sampling_body,
)
from common.policy.ledger_record import LedgerRecord, ledger_record
from common.policy.policy_model import CloudTarget, LocalTarget, Policy, SiteAgentTarget, Target
from common.policy.request_alerts import RequestAlerts
from common.policy.request_budgets import Held, RequestBudgets
from common.policy.routing import Caller, Decision, PolicyEngine, Restrictions

__all__ = ["NO_CREDENTIALS", "Credentials", "PolicyGate", "StartLocal"]

log = logging.getLogger(__name__)

MAX_CREDENTIAL_CHARS = 4096
LedgerSink = Callable[[LedgerRecord], None]


@dataclass(frozen=True)
class Credentials:
    """What a request says about its caller, as received (unchecked)."""

    authorization: str | None = None
    declared_level: str | None = None
    local_only: bool = False  # the caller restricts itself to on-premises targets
    forwarded: bool = False  # forwarded by the gateway or another agent: not forwarded again


NO_CREDENTIALS = Credentials()
Authenticate = Callable[[str | None], Caller | None]
# The agents of this agent's site a `site_agent` target's `agent` (an id or a name) names.
FindSiteAgents = Callable[[str], Awaitable[tuple[ServingAgent, ...]]]


def credentials_from(header: Callable[[str], str | None]) -> Credentials:
    """A request's credentials from its HTTP headers or gRPC metadata (`header` looks up a
    lowercase name). `X-Outpost-Local-Only` and `X-Outpost-Forwarded` are flags: "true", "1"
    or "yes" set them."""

    def flag(name: str) -> bool:
        value = header(name)
        return value is not None and value.strip().lower() in {"true", "1", "yes"}

    return Credentials(
        header("authorization"),
        header(DECLARED_LEVEL_HEADER),
        flag(LOCAL_ONLY_HEADER),
        flag(FORWARDED_HEADER),
    )


@dataclass
class _Request:
    """One routed request while it is handled: what its ledger row is made of."""

    caller: Caller
    parts: tuple[str, ...]
    at: datetime
    started: float
    request_id: str = ""


class PolicyGate:
    def __init__(
        self,
        engine: Callable[[], PolicyEngine],
        authenticate: Authenticate,
        cloud: CloudClient,
        budgets: RequestBudgets | None = None,
        *,
        alerts: RequestAlerts | None = None,
        ledger: LedgerSink | None = None,
        site_agents: FindSiteAgents | None = None,
        local_targets_forwarded: bool = False,
    ) -> None:
        """`ledger` is called once per routed request, on the event loop: it must not block.
        `site_agents` resolves `site_agent` targets (None: such targets fail, and fall back).
        `local_targets_forwarded`: `start_local` forwards to an agent (the gateway), so a row a
        local target answered is marked `forwarded`, like one a site_agent target answered."""
        self._engine = engine
        self._authenticate = authenticate
        self._cloud = cloud
        self._budgets = budgets or RequestBudgets()
        self.alerts = alerts or RequestAlerts()
        self._ledger = ledger
        self._site_agents = site_agents
        self._local_targets_forwarded = local_targets_forwarded

    def engine(self) -> PolicyEngine:
        """The policy in force now (`PolicyEngine(None)`: none)."""
        return self._engine()

    def evaluate_alerts(self) -> None:
        """Measures the alert rules of the policy in force (called every few seconds)."""
        self.alerts.evaluate(self._engine().policy)

    async def completion(
        self,
        engine: PolicyEngine,
        request: CompletionRequest,
        credentials: Credentials,
        start_local: StartLocal,
        max_tokens: int,
    ) -> EventStream:
        """The events of whichever target answers `request` under the policy; `max_tokens`:
        the request's, resolved (for its budget reservation)."""
        body = {"prompt": request.prompt, **sampling_body(request.sampling)}
        return await self._run(
            engine,
            request.model,
            (request.prompt,),
            credentials,
            start_local,
            Endpoint.COMPLETIONS,
            lambda parts: {**body, "prompt": parts[0]},
            max_tokens,
        )

    async def chat(
        self,
        engine: PolicyEngine,
        request: ChatRequest,
        credentials: Credentials,
        start_local: StartLocal,
        max_tokens: int,
    ) -> EventStream:
        roles = [m.role for m in request.messages]
        sampling = sampling_body(request.sampling)

        def cloud_body(parts: tuple[str, ...]) -> dict[str, Any]:
            messages = [{"role": r, "content": c} for r, c in zip(roles, parts, strict=True)]
            return {"messages": messages, **sampling}

        return await self._run(
            engine,
            request.model,
            tuple(m.content for m in request.messages),
            credentials,
            start_local,
            Endpoint.CHAT,
            cloud_body,
            max_tokens,
        )

    async def _run(
        self,
        engine: PolicyEngine,
        model: str,
        parts: tuple[str, ...],
        credentials: Credentials,
        start_local: StartLocal,
        endpoint: Endpoint,
        cloud_body: Callable[[tuple[str, ...]], dict[str, Any]],
        max_tokens: int,
    ) -> EventStream:
        caller = self._caller(credentials)
        policy = engine.policy
        assert policy is not None  # the gate runs only with a policy in force
        handled = _Request(caller, parts, datetime.now(UTC), time.monotonic(), uuid.uuid4().hex)
        restrictions = _merged(
            self.alerts.restrictions(policy, caller),
            Restrictions(local_only="the caller asked for local targets only")
            if credentials.local_only
            else Restrictions(),
        )
        decision = engine.decide(parts, caller, requested=model, restrictions=restrictions)
        if decision.refusal:
            self._record(policy, handled, decision)
            raise PermissionDenied(f"the routing policy refuses this request: {decision.refusal}")
        try:
            admission = self._budgets.admit(policy, caller, decision.targets, parts, max_tokens)
        except ResourceExhausted as exc:
            self._record(policy, handled, decision, refusal=str(exc))
            raise
        if admission.restrictions.local_only:  # over a budget whose over_budget is "local"
            restrictions = _merged(restrictions, admission.restrictions)
            decision = engine.decide(parts, caller, requested=model, restrictions=restrictions)
        held = Held(admission.reservation, handled.started)
        if decision.refusal:
            self._settle(policy, held, None, None)
            self._record(policy, handled, decision)
            raise PermissionDenied(f"the routing policy refuses this request: {decision.refusal}")

        def open_stream(target: Target, sent: tuple[str, ...]) -> Any:
            if isinstance(target, LocalTarget):
                return local_events(start_local, target.model, sent, decision.level)
            if isinstance(target, CloudTarget):
                return cloud_events(self._cloud, target, endpoint, cloud_body(sent))
            headers = forwarding_headers(credentials.authorization, decision.level)
            return self._site_agent_events(target, credentials, endpoint, cloud_body(sent), headers)

        try:
            stream = await dispatch_stream(
                decision,
                policy,
                open_stream,
                parts=parts,
                enable_fallback=self.alerts.fallback_enabled(policy, decision.targets),
            )
        except BaseException as exc:
            self._settle(policy, held, None, None)
            if not isinstance(exc, DispatchFailed):
                raise
            self._record(policy, handled, decision, attempts=exc.attempts)
            if exc.outcome is Outcome.REJECTED:
                raise InvalidArgument(str(exc)) from exc
            raise Unavailable(f"no target of the routing policy answered: {exc}") from exc
        log.info(
            "routed %s request of role %s to %s (route %s; %d attempt(s))",
            decision.level,
            caller.role,
            stream.target.name,
            decision.route,
            len(stream.attempts),
        )

        def settle(finished: Finished | None) -> None:
            cost = self._settle(policy, held, stream.target.name, finished)
            self._record(policy, handled, decision, stream.attempts, stream.target, finished, cost)

        return SettlingStream(stream, settle)

    async def _site_agent_events(
        self,
        target: SiteAgentTarget,
        credentials: Credentials,
        endpoint: Endpoint,
        body: dict[str, Any],
        headers: dict[str, str],
    ) -> AsyncGenerator[GenerationEvent, None]:
        """The answer of the site's agent the target names, with the caller's key."""
        if credentials.forwarded:
            raise TargetFailure(Outcome.ERROR, "a forwarded request is not forwarded again")
        if self._site_agents is None:
            raise TargetFailure(Outcome.ERROR, "this endpoint does not forward to site agents")
        agents = await self._site_agents(target.agent)
        if not agents:
            raise TargetFailure(
                Outcome.ERROR, f"agent {target.agent!r} is not known, connected or forwardable"
            )
        events = forward_to_agents(
            self._cloud, agents, target.model, endpoint, body, headers, target.timeout_s
        )
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()

    def _settle(
        self, policy: Policy, held: Held, target: str | None, finished: Finished | None
    ) -> int:
        """Settles the reservation; the request's cost in nanos."""
        usage = finished.usage if finished is not None else None
        return self._budgets.settle(
            policy,
            held.reservation,
            target,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            busy_seconds=time.monotonic() - held.started,
        )

    def _record(
        self,
        policy: Policy,
        request: _Request,
        decision: Decision,
        attempts: Sequence[AttemptRecord] = (),
        answered_by: Target | None = None,
        finished: Finished | None = None,
        cost_nanos: int = 0,
        refusal: str = "",
    ) -> None:
        """The request's ledger row to the sink and its outcome to the alert rules; the row is
        `forwarded` when the target that answered did so by forwarding to another agent."""
        forwarded = isinstance(answered_by, SiteAgentTarget) or (
            self._local_targets_forwarded and isinstance(answered_by, LocalTarget)
        )
        try:
            record = ledger_record(
                at=request.at,
                request_id=request.request_id,
                caller=request.caller,
                decision=decision,
                attempts=attempts,
                answered_by=answered_by.name if answered_by is not None else None,
                refusal=refusal,
                prompt_tokens=finished.usage.prompt_tokens if finished else 0,
                completion_tokens=finished.usage.completion_tokens if finished else 0,
                latency_ms=max(time.monotonic() - request.started, 0.0) * 1000,
                cost_nanos=cost_nanos,
                policy=policy,
                parts=request.parts,
                forwarded=forwarded,
            )
            self.alerts.observe(policy, record)
            if self._ledger is not None:
                self._ledger(record)
        except Exception:  # recording never fails a request that was served
            log.exception("ledger: recording request %s failed", request.request_id)

    def _caller(self, credentials: Credentials) -> Caller:
        authorization = credentials.authorization
        if authorization is not None and len(authorization) > MAX_CREDENTIAL_CHARS:
            raise Unauthenticated("the Authorization value is too long")
        caller = self._authenticate(authorization)
        if caller is None:
            raise Unauthenticated(
                "a routing policy is in force: send a valid inference key "
                "(Authorization: Bearer <key>)"
            )
        declared = credentials.declared_level
        if declared is not None:
            declared = declared.strip()[:64]
        return replace(caller, declared_level=declared or None)


def _merged(first: Restrictions, second: Restrictions) -> Restrictions:
    local_only = "; ".join(r for r in (first.local_only, second.local_only) if r)
    return Restrictions(local_only=local_only, avoid=first.avoid | second.avoid)
