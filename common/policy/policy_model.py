"""The routing policy as immutable values, its canonical dict form and its sha256 digest."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from enum import Enum, StrEnum
from functools import cached_property
from typing import Any, ClassVar, Literal

DEFAULT_LEVELS: tuple[str, ...] = ("public", "internal", "confidential", "restricted")
ALL_TARGETS = "*"  # a role whose targets are ("*",) may use every target
DEFAULT_BUDGET = "default"  # the budget entry for teams / API keys without their own


class TargetType(StrEnum):
    LOCAL = "local"  # a model on the agent that handles the request
    SITE_AGENT = "site_agent"  # a model on another agent of the fleet
    CLOUD = "cloud"  # an OpenAI-compatible provider outside the organisation


class FallbackOn(StrEnum):
    ERROR = "error"  # connection failure, 5xx, a broken answer
    TIMEOUT = "timeout"  # no complete answer within the target's timeout_s
    BUDGET = "budget"  # a budget (or the provider's quota, HTTP 429) rules the target out


class OverBudget(StrEnum):
    REJECT = "reject"  # the request is refused with 429
    LOCAL = "local"  # the request may use only on-premises targets


class AlertMetric(StrEnum):
    LATENCY_MS = "latency_ms"  # 95th percentile request latency over the window
    ERROR_RATE = "error_rate"  # failed / all requests over the window, a fraction 0..1
    DAILY_COST = "daily_cost"  # spend since 00:00 UTC
    MONTHLY_COST = "monthly_cost"  # spend since the first of the month, UTC
    REQUESTS_PER_MINUTE = "requests_per_minute"
    TOKENS_PER_MINUTE = "tokens_per_minute"


class AlertOp(StrEnum):
    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="

    def holds(self, value: float, threshold: float) -> bool:
        if self is AlertOp.GT:
            return value > threshold
        if self is AlertOp.GE:
            return value >= threshold
        if self is AlertOp.LT:
            return value < threshold
        return value <= threshold


class AlertScope(StrEnum):
    TARGET = "target"  # measured per target
    TEAM = "team"  # measured per team
    API_KEY = "api_key"  # measured per API key
    ALL = "all"  # measured over all requests


class AlertAction(StrEnum):
    NOTIFY = "notify"  # only notify
    ROUTE_AWAY = "route_away"  # skip the target (as if it had failed) while firing
    SWITCH_TO_LOCAL = "switch_to_local"  # the scope may use only on-premises targets
    ENABLE_FALLBACK = "enable_fallback"  # fall back on every failure kind while firing


class NotifyKind(StrEnum):
    LOG = "log"
    WEBHOOK = "webhook"


@dataclass(frozen=True, slots=True, kw_only=True)
class DetectorBase:
    name: str
    level: str  # a request it matches is at least at this level


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltinDetector(DetectorBase):
    builtin: str  # one of common.policy.detector_kinds.BUILTIN_DETECTOR_KINDS


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordDetector(DetectorBase):
    keywords: tuple[str, ...]
    case_sensitive: bool = False
    whole_word: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class RegexDetector(DetectorBase):
    regex: str  # `regex` package syntax (VERSION0), searched in the request text


Detector = BuiltinDetector | KeywordDetector | RegexDetector


@dataclass(frozen=True, slots=True, kw_only=True)
class Role:
    name: str
    max_level: str  # requests classified above this are refused
    min_level: str  # every request of this role is at least at this level
    targets: tuple[str, ...]  # the targets it may use, sorted; (ALL_TARGETS,) for all

    def may_use(self, target: str) -> bool:
        return self.targets == (ALL_TARGETS,) or target in self.targets


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetBase:
    type: ClassVar[TargetType]
    name: str
    model: str
    max_level: str  # the highest level of data it may receive, also in a fallback
    fallback: tuple[str, ...] = ()  # tried in order, depth first, when it fails
    timeout_s: float = 60.0

    @property
    def on_premises(self) -> bool:
        return self.type is not TargetType.CLOUD


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalTarget(TargetBase):
    type: ClassVar[TargetType] = TargetType.LOCAL
    cost_per_hour: float = 0.0
    power_watts: float = 0.0
    energy_price_per_kwh: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteAgentTarget(TargetBase):
    type: ClassVar[TargetType] = TargetType.SITE_AGENT
    agent: str  # the agent's id or name
    cost_per_hour: float = 0.0
    power_watts: float = 0.0
    energy_price_per_kwh: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class CloudTarget(TargetBase):
    type: ClassVar[TargetType] = TargetType.CLOUD
    base_url: str
    price_per_1k_input: float
    price_per_1k_output: float
    api_key_ref: str | None = None  # "env:NAME" or "file:/absolute/path"
    redact: bool = True  # mask detector matches before sending


Target = LocalTarget | SiteAgentTarget | CloudTarget


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    name: str
    targets: tuple[str, ...]
    levels: tuple[str, ...] | None = None  # None: every level
    roles: tuple[str, ...] | None = None  # None: every role

    def matches(self, level: str, role: str) -> bool:
        return (self.levels is None or level in self.levels) and (
            self.roles is None or role in self.roles
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Budget:
    name: str  # a team, an API key's user, or DEFAULT_BUDGET
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    spend_per_day: float | None = None
    spend_per_month: float | None = None
    over_budget: OverBudget = OverBudget.REJECT


@dataclass(frozen=True, slots=True, kw_only=True)
class Budgets:
    teams: tuple[Budget, ...] = ()
    api_keys: tuple[Budget, ...] = ()

    def for_team(self, team: str) -> Budget | None:
        return _own_or_default(self.teams, team)

    def for_api_key(self, user: str) -> Budget | None:
        return _own_or_default(self.api_keys, user)


def _own_or_default(budgets: tuple[Budget, ...], name: str) -> Budget | None:
    by_name = {budget.name: budget for budget in budgets}
    return by_name.get(name, by_name.get(DEFAULT_BUDGET))


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyChannel:
    kind: NotifyKind
    url: str | None = None  # for WEBHOOK


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertRule:
    name: str
    metric: AlertMetric
    threshold: float | Literal["budget"]  # "budget": the scope's spend_per_day / _month
    scope: AlertScope
    op: AlertOp = AlertOp.GT
    window_s: int | None = None  # None for daily_cost / monthly_cost (the calendar period)
    action: AlertAction = AlertAction.NOTIFY
    notify: tuple[NotifyChannel, ...] | None = None  # None: Alerts.notify


@dataclass(frozen=True, slots=True, kw_only=True)
class Alerts:
    rules: tuple[AlertRule, ...] = ()
    notify: tuple[NotifyChannel, ...] = (NotifyChannel(kind=NotifyKind.LOG),)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ledger:
    store_prompts: bool = False


@dataclass(frozen=True, kw_only=True)
class Policy:
    """A validated policy; roles, targets and budgets sorted by name, lists as written."""

    version: int = 1
    levels: tuple[str, ...] = DEFAULT_LEVELS  # low to high
    default_level: str = DEFAULT_LEVELS[0]
    detectors: tuple[Detector, ...] = ()
    roles: tuple[Role, ...]
    targets: tuple[Target, ...]
    routes: tuple[Route, ...]  # first match wins
    fallback_on: tuple[FallbackOn, ...] = tuple(FallbackOn)
    budgets: Budgets = Budgets()
    alerts: Alerts = Alerts()
    ledger: Ledger = Ledger()

    def rank(self, level: str) -> int:
        """0 for the lowest level; ValueError for a name that is not a level."""
        return self.levels.index(level)

    def role(self, name: str) -> Role | None:
        return self._roles.get(name)

    def target(self, name: str) -> Target:
        return self._targets[name]

    def first_route(self, level: str, role: str) -> Route | None:
        return next((route for route in self.routes if route.matches(level, role)), None)

    def fallback_chain(self, target: str) -> tuple[str, ...]:
        """The targets tried after `target` fails: its fallbacks, depth first, each once."""
        chain: list[str] = []
        self._extend_chain(target, chain, {target})
        return tuple(chain)

    def candidates(self, route: Route) -> tuple[str, ...]:
        """The route's targets in order, then each one's fallback chain; each target once."""
        order = dict.fromkeys(route.targets)
        for target in route.targets:
            order.update(dict.fromkeys(self.fallback_chain(target)))
        return tuple(order)

    def _extend_chain(self, target: str, chain: list[str], seen: set[str]) -> None:
        for name in self._targets[target].fallback:
            if name not in seen:  # the document has no cycles; stay safe anyway
                seen.add(name)
                chain.append(name)
                self._extend_chain(name, chain, seen)

    @cached_property
    def _roles(self) -> dict[str, Role]:
        return {role.name: role for role in self.roles}

    @cached_property
    def _targets(self) -> dict[str, Target]:
        return {target.name: target for target in self.targets}

    @cached_property
    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON: equal policies, equal digests."""
        return hashlib.sha256(canonical_json(self).encode("utf-8")).hexdigest()


def canonical_json(policy: Policy) -> str:
    """The canonical form as compact JSON with sorted keys: what the digest covers."""
    return json.dumps(
        policy_to_dict(policy),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """Every setting spelled out (defaults too); parsing it gives an equal Policy."""
    return {
        "version": policy.version,
        "levels": list(policy.levels),
        "default_level": policy.default_level,
        "detectors": [_plain(detector) for detector in policy.detectors],
        "roles": _named(policy.roles),
        "targets": {t.name: {"type": t.type.value, **_plain(t, "name")} for t in policy.targets},
        "routes": [_plain(route) for route in policy.routes],
        "fallback_on": [reason.value for reason in policy.fallback_on],
        "budgets": {
            "teams": _named(policy.budgets.teams),
            "api_keys": _named(policy.budgets.api_keys),
        },
        "alerts": {
            "notify": [_channel(channel) for channel in policy.alerts.notify],
            "rules": [_plain(rule) for rule in policy.alerts.rules],
        },
        "ledger": _plain(policy.ledger),
    }


def _named(items: tuple[Role, ...] | tuple[Budget, ...]) -> dict[str, Any]:
    return {item.name: _plain(item, "name") for item in items}


def _channel(channel: NotifyChannel) -> Any:
    return channel.kind.value if channel.url is None else {channel.kind.value: channel.url}


def _plain(value: Any, leave_out: str = "") -> Any:
    if isinstance(value, NotifyChannel):
        return _channel(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if hasattr(value, "__dataclass_fields__"):
        return {
            f.name: _plain(getattr(value, f.name))
            for f in fields(value)
            if f.name != leave_out and getattr(value, f.name) is not None
        }
    return value
