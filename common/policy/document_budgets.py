"""The `budgets` and `alerts` sections: rate and spend limits, and what a crossed threshold does."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, TypeVar

from common.policy.document_fields import Fields, Path, listing
from common.policy.document_syntax import Node, show
from common.policy.policy_model import (
    AlertAction,
    AlertMetric,
    AlertOp,
    AlertRule,
    Alerts,
    AlertScope,
    Budget,
    Budgets,
    NotifyChannel,
    NotifyKind,
    OverBudget,
)

MAX_BUDGETS = 1000  # per section
MAX_ALERTS = 64
MAX_NOTIFY = 8
MAX_COUNT = 10**12
MAX_AMOUNT = 1e9
WINDOW_RANGE_S = (10, 86_400)
DEFAULT_WINDOW_S = 300
BUDGET_LIMITS = ("requests_per_minute", "tokens_per_minute", "spend_per_day", "spend_per_month")
ALERT_KEYS = ("name", "metric", "op", "threshold", "window_s", "scope", "action", "notify")
BUDGET_THRESHOLD: Literal["budget"] = "budget"
_CALENDAR_METRICS = {
    AlertMetric.DAILY_COST: "spend_per_day",
    AlertMetric.MONTHLY_COST: "spend_per_month",
}
_TARGET_METRICS = (AlertMetric.LATENCY_MS, AlertMetric.ERROR_RATE)
SCOPES_FOR_ACTION: dict[AlertAction, tuple[AlertScope, ...]] = {
    AlertAction.NOTIFY: tuple(AlertScope),
    AlertAction.ROUTE_AWAY: (AlertScope.TARGET,),
    AlertAction.ENABLE_FALLBACK: (AlertScope.TARGET, AlertScope.ALL),
    AlertAction.SWITCH_TO_LOCAL: (AlertScope.TEAM, AlertScope.API_KEY, AlertScope.ALL),
}
E = TypeVar("E", bound=StrEnum)


def read_budgets(f: Fields, node: Node, path: Path) -> Budgets:
    entries = f.mapping(node, path, ("teams", "api_keys")) or {}
    sections: dict[str, tuple[Budget, ...]] = {}
    for section, what in (("teams", "team"), ("api_keys", "API key user")):

        def named(n: Node, p: Path, what: str = what) -> dict[str, Node] | None:
            return f.named(n, p, what, max_items=MAX_BUDGETS)

        budgets = f.get(entries, section, path, named) or {}
        read = [_budget(f, name, item, (*path, section, name)) for name, item in budgets.items()]
        sections[section] = tuple(sorted(read, key=lambda budget: budget.name))
    return Budgets(teams=sections["teams"], api_keys=sections["api_keys"])


def _budget(f: Fields, name: str, node: Node, path: Path) -> Budget:
    entries = f.mapping(node, path, (*BUDGET_LIMITS, "over_budget")) or {}
    if isinstance(node.value, dict) and not any(limit in entries for limit in BUDGET_LIMITS):
        f.error(node, path, f"a budget needs at least one of {listing(BUDGET_LIMITS)}")

    def count(n: Node, p: Path) -> int | None:
        return f.integer(n, p, minimum=0, maximum=MAX_COUNT)

    def amount(n: Node, p: Path) -> float | None:
        return f.number(n, p, minimum=0.0, maximum=MAX_AMOUNT)

    return Budget(
        name=name,
        requests_per_minute=f.get(entries, "requests_per_minute", path, count),
        tokens_per_minute=f.get(entries, "tokens_per_minute", path, count),
        spend_per_day=f.get(entries, "spend_per_day", path, amount),
        spend_per_month=f.get(entries, "spend_per_month", path, amount),
        over_budget=_choice(f, entries, "over_budget", path, OverBudget) or OverBudget.REJECT,
    )


def _choice(f: Fields, entries: dict[str, Node], key: str, path: Path, enum: type[E]) -> E | None:
    def read(n: Node, p: Path) -> str | None:
        return f.choice(n, p, [member.value for member in enum], key.replace("_", " "))

    value = f.get(entries, key, path, read)
    return None if value is None else enum(value)


def read_alerts(f: Fields, node: Node, path: Path, budgets: Budgets) -> Alerts:
    entries = f.mapping(node, path, ("notify", "rules")) or {}
    notify = f.get(entries, "notify", path, lambda n, p: read_channels(f, n, p))
    items = f.get(entries, "rules", path, lambda n, p: f.sequence(n, p, max_items=MAX_ALERTS))
    seen: dict[str, int] = {}
    rules = [
        rule
        for index, item in enumerate(items or ())
        if (rule := _alert(f, item, (*path, "rules", index), seen, budgets)) is not None
    ]
    return Alerts(rules=tuple(rules), notify=Alerts().notify if notify is None else notify)


def read_channels(f: Fields, node: Node, path: Path) -> tuple[NotifyChannel, ...] | None:
    """`log` and `{webhook: URL}` items, each once."""
    channels: list[NotifyChannel] = []
    for index, item in enumerate(f.sequence(node, path, max_items=MAX_NOTIFY) or ()):
        at = (*path, index)
        if item.value == NotifyKind.LOG.value:
            channel = NotifyChannel(kind=NotifyKind.LOG)
        elif isinstance(item.value, dict):
            entries = f.mapping(item, at, ("webhook",), ("webhook",)) or {}
            url = f.get(entries, "webhook", at, f.url) or ""
            channel = NotifyChannel(kind=NotifyKind.WEBHOOK, url=url)
        else:
            f.error(item, at, f"unknown channel {show(item.value)}: use log or {{webhook: URL}}")
            continue
        if channel in channels:
            f.error(item, at, "this channel is listed twice")
        channels.append(channel)
    return tuple(channels)


def _alert(
    f: Fields, node: Node, path: Path, seen: dict[str, int], budgets: Budgets
) -> AlertRule | None:
    entries = f.mapping(node, path, ALERT_KEYS, ("name", "metric", "threshold"))
    if entries is None:
        return None
    name = f.unique_name(entries, path, seen, "alert")
    metric = _choice(f, entries, "metric", path, AlertMetric) or AlertMetric.LATENCY_MS
    default_scope = AlertScope.TARGET if metric in _TARGET_METRICS else AlertScope.TEAM
    scope = _choice(f, entries, "scope", path, AlertScope) or default_scope
    action = _choice(f, entries, "action", path, AlertAction) or AlertAction.NOTIFY
    if scope not in SCOPES_FOR_ACTION[action]:
        allowed = " or ".join(s.value for s in SCOPES_FOR_ACTION[action])
        at = entries.get("scope") or entries["action"]
        f.error(at, (*path, "scope"), f"{action.value} needs scope {allowed}, not {scope.value}")
    if "window_s" in entries and metric in _CALENDAR_METRICS:
        message = f"does not apply to {metric.value}: the calendar day or month is the window"
        f.error(f.key_node(node, "window_s"), (*path, "window_s"), message)
    low, high = WINDOW_RANGE_S

    def window(n: Node, p: Path) -> int | None:
        return f.integer(n, p, minimum=low, maximum=high)

    def notify(n: Node, p: Path) -> tuple[NotifyChannel, ...] | None:
        return read_channels(f, n, p)

    threshold: float | Literal["budget"] = 0.0
    if "threshold" in entries:
        where = (*path, "threshold")
        threshold = _threshold(f, entries["threshold"], where, metric, scope, budgets)
    window_s = None
    if metric not in _CALENDAR_METRICS:
        window_s = f.get(entries, "window_s", path, window) or DEFAULT_WINDOW_S
    return AlertRule(
        name=name,
        metric=metric,
        threshold=threshold,
        scope=scope,
        op=_choice(f, entries, "op", path, AlertOp) or AlertOp.GT,
        window_s=window_s,
        action=action,
        notify=f.get(entries, "notify", path, notify),
    )


def _threshold(
    f: Fields, node: Node, path: Path, metric: AlertMetric, scope: AlertScope, budgets: Budgets
) -> float | Literal["budget"]:
    """A number (error_rate: a fraction) or "budget": the scope's own spend limit."""
    if node.value != BUDGET_THRESHOLD:
        number = node.value
        fraction = metric is AlertMetric.ERROR_RATE and not isinstance(number, bool)
        if fraction and isinstance(number, int | float) and number > 1:
            f.error(node, path, f"{number} is above 1: error_rate is a fraction, 0.05 means 5 %")
            return 0.0
        value = f.number(node, path, minimum=0.0, maximum=MAX_AMOUNT)
        return 0.0 if value is None else value
    limit = _CALENDAR_METRICS.get(metric)
    section = {AlertScope.TEAM: budgets.teams, AlertScope.API_KEY: budgets.api_keys}.get(scope)
    if limit is None:
        f.error(node, path, "'budget' applies only to daily_cost and monthly_cost")
    elif section is None:
        f.error(node, path, f"'budget' needs scope team or api_key, not {scope.value}")
    elif not any(getattr(budget, limit) is not None for budget in section):
        where = "budgets.teams" if scope is AlertScope.TEAM else "budgets.api_keys"
        f.error(node, path, f"'budget' needs {limit} in {where}, and no budget there sets it")
    return BUDGET_THRESHOLD
