"""The `targets` section: local models, other agents, cloud providers and their fallback chains."""

from __future__ import annotations

import re

from common.policy.document_fields import Fields, Path
from common.policy.document_syntax import Node, show
from common.policy.policy_model import (
    CloudTarget,
    LocalTarget,
    SiteAgentTarget,
    Target,
    TargetType,
)

MAX_TARGETS = 64
MAX_FALLBACKS = 8
MAX_MODEL_CHARS = 200
MAX_PRICE = 1e6  # per hour or per 1k tokens, in the organisation's currency
DEFAULT_TIMEOUT_S = 60.0
TIMEOUT_RANGE_S = (0.1, 600.0)

_COMMON = ("type", "model", "max_level", "fallback", "timeout_s")
_ON_PREMISES = ("cost_per_hour", "power_watts", "energy_price_per_kwh")
_CLOUD = ("base_url", "api_key_ref", "price_per_1k_input", "price_per_1k_output", "redact")
TARGET_KEYS: dict[TargetType, tuple[str, ...]] = {
    TargetType.LOCAL: (*_COMMON, *_ON_PREMISES),
    TargetType.SITE_AGENT: (*_COMMON, "agent", *_ON_PREMISES),
    TargetType.CLOUD: (*_COMMON, *_CLOUD),
}
# max_level may be left out only where the data stays on this machine.
TARGET_REQUIRED: dict[TargetType, tuple[str, ...]] = {
    TargetType.LOCAL: ("model",),
    TargetType.SITE_AGENT: ("model", "agent", "max_level"),
    TargetType.CLOUD: (
        "model",
        "base_url",
        "max_level",
        "price_per_1k_input",
        "price_per_1k_output",
    ),
}
_ALL_KEYS = tuple(dict.fromkeys(key for keys in TARGET_KEYS.values() for key in keys))
_MODEL = re.compile(r"[^\s\x00-\x1f\x7f]+")
_KEY_REF = re.compile(r"env:[A-Za-z_][A-Za-z0-9_]{0,127}|file:/[^\x00-\x1f]{1,255}")


def read_targets(f: Fields, nodes: dict[str, Node]) -> tuple[Target, ...]:
    """Every target (sorted by name); fallbacks name known targets and never loop."""
    targets = [target for name, node in nodes.items() if (target := _target(f, name, node))]
    check_fallback_cycles(f, nodes, targets)
    return tuple(sorted(targets, key=lambda target: target.name))


def _target(f: Fields, name: str, node: Node) -> Target | None:
    path: Path = ("targets", name)
    entries = f.mapping(node, path, _ALL_KEYS, ("type",))
    if entries is None:
        return None
    types = [t.value for t in TargetType]
    kind = f.get(entries, "type", path, lambda n, p: f.choice(n, p, types, "target type"))
    if kind is None:
        return None
    target_type = TargetType(kind)
    for key in entries:
        if key not in TARGET_KEYS[target_type]:
            owners = " and ".join(t.value for t, keys in TARGET_KEYS.items() if key in keys)
            f.error(f.key_node(node, key), (*path, key), f"applies to {owners} targets, not {kind}")
    for key in TARGET_REQUIRED[target_type]:
        if key not in entries:
            f.error(node, path, f"missing required key {show(key)} (a {kind} target needs it)")

    def amount(key: str) -> float:
        read = lambda n, p: f.number(n, p, minimum=0.0, maximum=MAX_PRICE)  # noqa: E731
        return f.get(entries, key, path, read) or 0.0

    model = f.get(entries, "model", path, lambda n, p: _model(f, n, p)) or ""
    max_level = f.get(entries, "max_level", path, f.level) or f.levels[-1]
    fallback = f.get(entries, "fallback", path, lambda n, p: _fallback(f, n, p)) or ()
    low, high = TIMEOUT_RANGE_S
    timeout = f.get(
        entries, "timeout_s", path, lambda n, p: f.number(n, p, minimum=low, maximum=high)
    )
    timeout_s = timeout or DEFAULT_TIMEOUT_S
    if target_type is TargetType.CLOUD:
        return CloudTarget(
            name=name,
            model=model,
            max_level=max_level,
            fallback=fallback,
            timeout_s=timeout_s,
            base_url=f.get(entries, "base_url", path, f.url) or "",
            api_key_ref=f.get(entries, "api_key_ref", path, lambda n, p: _key_ref(f, n, p)),
            price_per_1k_input=amount("price_per_1k_input"),
            price_per_1k_output=amount("price_per_1k_output"),
            redact=f.get(entries, "redact", path, f.flag) is not False,
        )
    if target_type is TargetType.LOCAL:
        return LocalTarget(
            name=name,
            model=model,
            max_level=max_level,
            fallback=fallback,
            timeout_s=timeout_s,
            cost_per_hour=amount("cost_per_hour"),
            power_watts=amount("power_watts"),
            energy_price_per_kwh=amount("energy_price_per_kwh"),
        )
    return SiteAgentTarget(
        name=name,
        model=model,
        max_level=max_level,
        fallback=fallback,
        timeout_s=timeout_s,
        agent=f.get(entries, "agent", path, lambda n, p: f.name(n, p, "agent")) or "",
        cost_per_hour=amount("cost_per_hour"),
        power_watts=amount("power_watts"),
        energy_price_per_kwh=amount("energy_price_per_kwh"),
    )


def _model(f: Fields, node: Node, path: Path) -> str | None:
    model = f.text(node, path, max_chars=MAX_MODEL_CHARS)
    if model is not None and not _MODEL.fullmatch(model):
        f.error(node, path, f"model name {show(model)} must not contain blanks")
        return None
    return model


def _fallback(f: Fields, node: Node, path: Path) -> tuple[str, ...] | None:
    return f.references(node, path, f.targets, "target", max_items=MAX_FALLBACKS, min_items=0)


def _key_ref(f: Fields, node: Node, path: Path) -> str | None:
    """Where the key is, never the key: the value is not quoted back in the error."""
    if isinstance(node.value, str) and _KEY_REF.fullmatch(node.value):
        return node.value
    f.error(
        node,
        path,
        "must be env:VARIABLE or file:/absolute/path, never the key itself "
        "(the policy is sent to every agent)",
    )
    return None


def check_fallback_cycles(f: Fields, nodes: dict[str, Node], targets: list[Target]) -> None:
    """Reports each loop of fallbacks ("a → b → a") at the entry that closes it."""
    chains = {target.name: target.fallback for target in targets}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in chains:
        if start in state:
            continue
        path = [start]
        state[start] = 1
        stack = [iter(enumerate(chains[start]))]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
                state[path.pop()] = 2
                continue
            index, name = step
            if state.get(name) == 1:
                loop = " → ".join([*path[path.index(name) :], name])
                _report_cycle(f, nodes[path[-1]], path[-1], index, loop)
            elif name not in state and name in chains:
                state[name] = 1
                path.append(name)
                stack.append(iter(enumerate(chains[name])))


def _report_cycle(f: Fields, target: Node, name: str, index: int, loop: str) -> None:
    entries = target.value
    assert isinstance(entries, dict)
    fallback = entries["fallback"].value
    assert isinstance(fallback, list)
    f.error(fallback[index], ("targets", name, "fallback", index), f"fallback cycle: {loop}")
