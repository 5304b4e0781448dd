"""Routing policy documents (YAML or JSON) to a validated Policy, or a PolicyError that says why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.document_budgets import read_alerts, read_budgets
from common.policy.document_fields import Fields
from common.policy.document_fields import Path as FieldPath
from common.policy.document_syntax import (
    MAX_DOCUMENT_BYTES,
    Node,
    PolicyError,
    PolicyProblem,
    read_tree,
    show,
)
from common.policy.document_targets import MAX_TARGETS, read_targets
from common.policy.policy_model import (
    ALL_TARGETS,
    Alerts,
    Budgets,
    BuiltinDetector,
    Detector,
    FallbackOn,
    KeywordDetector,
    Ledger,
    Policy,
    RegexDetector,
    Role,
    Route,
    policy_to_dict,
)
from common.policy.regex_safety import MAX_PATTERN_CHARS, check_pattern

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "CheckedPolicy",
    "Policy",
    "PolicyError",
    "PolicyProblem",
    "check_policy",
    "load_policy",
    "parse_policy",
    "policy_to_dict",
]

MIN_LEVELS, MAX_LEVELS = 2, 16
MAX_DETECTORS, MAX_KEYWORDS, MAX_KEYWORD_CHARS = 64, 1000, 200
MAX_ROLES, MAX_ROUTES, MAX_ROUTE_TARGETS = 64, 128, 16
REQUIRED_KEYS = ("version", "roles", "targets", "routes")
OPTIONAL_KEYS = ("levels", "default_level", "detectors", "fallback_on", "budgets", "alerts")
TOP_KEYS = (*REQUIRED_KEYS, *OPTIONAL_KEYS, "ledger")
DETECTOR_KINDS = ("builtin", "keywords", "regex")
DETECTOR_KEYS = ("name", "level", *DETECTOR_KINDS, "case_sensitive", "whole_word")


@dataclass(frozen=True, slots=True)
class CheckedPolicy:
    """A valid policy, and what it allows that is probably not meant (e.g. unused routes)."""

    policy: Policy
    warnings: tuple[PolicyProblem, ...]


def check_policy(text: str | bytes, *, source: str = "policy") -> CheckedPolicy:
    """The policy and its warnings, or PolicyError naming every problem's path, line, column."""
    f = Fields()
    policy = _read_policy(f, read_tree(text, source))
    if f.problems or policy is None:
        raise PolicyError(source, f.problems)
    warnings = sorted(f.warnings, key=lambda w: (w.line, w.column, w.path))
    return CheckedPolicy(policy, tuple(warnings))


def parse_policy(text: str | bytes, *, source: str = "policy") -> Policy:
    """A document as a Policy: JSON when its first non-blank character is { or [, else YAML."""
    return check_policy(text, source=source).policy


def load_policy(path: Path) -> Policy:
    """The policy in a file; at most MAX_DOCUMENT_BYTES + 1 are read (OSError as it comes)."""
    with path.open("rb") as file:
        data = file.read(MAX_DOCUMENT_BYTES + 1)
    if len(data) > MAX_DOCUMENT_BYTES:
        message = f"the file has more than {MAX_DOCUMENT_BYTES} bytes"
        raise PolicyError(str(path), [PolicyProblem("", 0, 0, message)])
    return parse_policy(data, source=str(path))


def _read_policy(f: Fields, root: Node) -> Policy | None:
    top = f.mapping(root, (), TOP_KEYS, REQUIRED_KEYS)
    if top is None:
        return None
    f.get(top, "version", (), lambda n, p: _version(f, n, p))
    if "levels" in top:
        _levels(f, top["levels"])
    default_level = f.get(top, "default_level", (), f.level) or f.levels[0]
    target_nodes = f.get(
        top, "targets", (), lambda n, p: f.named(n, p, "target", max_items=MAX_TARGETS, min_items=1)
    )
    role_nodes = f.get(
        top, "roles", (), lambda n, p: f.named(n, p, "role", max_items=MAX_ROLES, min_items=1)
    )
    f.targets, f.roles = list(target_nodes or ()), list(role_nodes or ())
    detectors = f.get(top, "detectors", (), lambda n, p: _detectors(f, n, p))
    targets = read_targets(f, target_nodes or {})
    roles = [_role(f, name, node, default_level) for name, node in (role_nodes or {}).items()]
    routes = f.get(top, "routes", (), lambda n, p: _routes(f, n, p))
    fallback_on = f.get(top, "fallback_on", (), lambda n, p: _fallback_on(f, n, p))
    budgets = f.get(top, "budgets", (), lambda n, p: read_budgets(f, n, p)) or Budgets()
    alerts = f.get(top, "alerts", (), lambda n, p: read_alerts(f, n, p, budgets))
    ledger = f.get(top, "ledger", (), lambda n, p: _ledger(f, n, p))
    if f.problems:
        return None
    policy = Policy(
        levels=f.levels,
        default_level=default_level,
        detectors=detectors or (),
        roles=tuple(sorted((role for role in roles if role), key=lambda role: role.name)),
        targets=targets,
        routes=routes or (),
        fallback_on=tuple(FallbackOn) if fallback_on is None else fallback_on,
        budgets=budgets,
        alerts=alerts or Alerts(),
        ledger=ledger or Ledger(),
    )
    _warn_unreachable(f, policy, top["routes"], role_nodes or {})
    return policy


def _version(f: Fields, node: Node, path: FieldPath) -> int | None:
    version = f.integer(node, path, minimum=1, maximum=1_000_000)
    if version is not None and version != 1:
        f.error(node, path, f"unsupported version {version}: this build reads version 1")
    return version


def _levels(f: Fields, node: Node) -> None:
    """Sets f.levels; after a problem, level names elsewhere go unchecked."""
    f.levels_known = False
    items = f.sequence(node, ("levels",), max_items=MAX_LEVELS, min_items=MIN_LEVELS)
    if items is None:
        return
    names: dict[str, int] = {}
    for index, item in enumerate(items):
        name = f.name(item, ("levels", index), "level")
        if name is not None and name in names:
            f.error(item, ("levels", index), f"{show(name)} is listed twice")
        elif name is not None:
            names[name] = index
    if len(names) == len(items):
        f.levels, f.levels_known = tuple(names), True


def _detectors(f: Fields, node: Node, path: FieldPath) -> tuple[Detector, ...]:
    detectors: list[Detector] = []
    seen: dict[str, int] = {}
    builtins: dict[str, str] = {}  # kind -> detector
    for index, item in enumerate(f.sequence(node, path, max_items=MAX_DETECTORS) or ()):
        at = (*path, index)
        entries = f.mapping(item, at, DETECTOR_KEYS, ("name", "level"))
        if entries is None:
            continue
        name = f.unique_name(entries, at, seen, "detector")
        level = f.get(entries, "level", at, f.level) or ""
        kinds = [kind for kind in DETECTOR_KINDS if kind in entries]
        if len(kinds) != 1:
            found = f" (it has {' and '.join(kinds)})" if kinds else ""
            f.error(item, at, f"a detector needs exactly one of builtin, keywords, regex{found}")
            continue
        for option in ("case_sensitive", "whole_word"):
            if option in entries and kinds != ["keywords"]:
                f.error(f.key_node(item, option), (*at, option), "applies to keywords only")
        if kinds == ["builtin"]:
            kind = (
                f.get(
                    entries,
                    "builtin",
                    at,
                    lambda n, p: f.choice(n, p, BUILTIN_DETECTOR_KINDS, "built-in detector"),
                )
                or ""
            )
            if kind in builtins:
                message = f"{kind} is already detected by {show(builtins[kind])}"
                f.error(entries["builtin"], (*at, "builtin"), message)
            builtins.setdefault(kind, name)
            detectors.append(BuiltinDetector(name=name, level=level, builtin=kind))
        elif kinds == ["regex"]:
            pattern = f.get(entries, "regex", at, lambda n, p: _pattern(f, n, p)) or ""
            detectors.append(RegexDetector(name=name, level=level, regex=pattern))
        else:
            case_sensitive = f.get(entries, "case_sensitive", at, f.flag) or False
            whole_word = f.get(entries, "whole_word", at, f.flag) is not False
            keywords = _keywords(f, entries["keywords"], (*at, "keywords"), case_sensitive)
            detectors.append(
                KeywordDetector(
                    name=name,
                    level=level,
                    keywords=keywords,
                    case_sensitive=case_sensitive,
                    whole_word=whole_word,
                )
            )
    return tuple(detectors)


def _pattern(f: Fields, node: Node, path: FieldPath) -> str | None:
    pattern = f.text(node, path, max_chars=MAX_PATTERN_CHARS)
    problem = None if pattern is None else check_pattern(pattern)
    if problem is not None:
        f.error(node, path, f"the pattern {problem}")
    return pattern


def _keywords(f: Fields, node: Node, path: FieldPath, case_sensitive: bool) -> tuple[str, ...]:
    items = f.sequence(node, path, max_items=MAX_KEYWORDS, min_items=1) or []
    seen: set[str] = set()
    for index, item in enumerate(items):
        word = f.text(item, (*path, index), max_chars=MAX_KEYWORD_CHARS)
        if word is None:
            continue
        folded = word if case_sensitive else word.casefold()
        if word != word.strip():
            f.error(item, (*path, index), "must not begin or end with blanks")
        elif folded in seen:
            f.error(item, (*path, index), f"{show(word)} is listed twice")
        seen.add(folded)
    return tuple(item.value for item in items if isinstance(item.value, str))


def _role(f: Fields, name: str, node: Node, default_level: str) -> Role | None:
    path: FieldPath = ("roles", name)
    entries = f.mapping(node, path, ("max_level", "min_level", "targets"), ("max_level", "targets"))
    if entries is None:
        return None
    max_level = f.get(entries, "max_level", path, f.level) or ""
    min_level = f.get(entries, "min_level", path, f.level) or default_level
    targets = f.get(entries, "targets", path, lambda n, p: _role_targets(f, n, p)) or ()
    levels = f.levels
    ordered = f.levels_known and {min_level, max_level} <= set(levels)
    if ordered and levels.index(min_level) > levels.index(max_level):
        where = "min_level" if "min_level" in entries else "default_level"
        message = f"{where} {min_level} is above max_level {max_level}: all would be refused"
        f.error(node, path, message)
    return Role(name=name, max_level=max_level, min_level=min_level, targets=targets)


def _role_targets(f: Fields, node: Node, path: FieldPath) -> tuple[str, ...] | None:
    if isinstance(node.value, list) and any(item.value == ALL_TARGETS for item in node.value):
        if len(node.value) == 1:
            return (ALL_TARGETS,)
        f.error(node, path, "'*' (every target) cannot be combined with target names")
        return None
    names = f.references(node, path, f.targets, "target", max_items=MAX_TARGETS)
    return None if names is None else tuple(sorted(names))


def _routes(f: Fields, node: Node, path: FieldPath) -> tuple[Route, ...]:
    routes: list[Route] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(f.sequence(node, path, max_items=MAX_ROUTES, min_items=1) or ()):
        at = (*path, index)
        entries = f.mapping(item, at, ("name", "levels", "roles", "targets"), ("name", "targets"))
        if entries is None:
            continue
        roles = f.get(
            entries,
            "roles",
            at,
            lambda n, p: f.references(n, p, f.roles, "role", max_items=MAX_ROLES),
        )
        targets = f.get(
            entries,
            "targets",
            at,
            lambda n, p: f.references(n, p, f.targets, "target", max_items=MAX_ROUTE_TARGETS),
        )
        route = Route(
            name=f.unique_name(entries, at, seen, "route"),
            targets=targets or (),
            levels=f.get(entries, "levels", at, f.level_set),
            roles=None if roles is None else tuple(sorted(roles)),
        )
        routes.append(route)
    return tuple(routes)


def _fallback_on(f: Fields, node: Node, path: FieldPath) -> tuple[FallbackOn, ...] | None:
    kinds = [reason.value for reason in FallbackOn]
    names = f.references(node, path, kinds, "failure kind", max_items=len(kinds), min_items=0)
    return None if names is None else tuple(r for r in FallbackOn if r.value in names)


def _ledger(f: Fields, node: Node, path: FieldPath) -> Ledger:
    entries = f.mapping(node, path, ("store_prompts",)) or {}
    return Ledger(store_prompts=f.get(entries, "store_prompts", path, f.flag) or False)


def _warn_unreachable(f: Fields, policy: Policy, routes: Node, roles: dict[str, Node]) -> None:
    """Routes no (role, level) reaches first, and role levels every request of is refused."""
    route_nodes = routes.value
    assert isinstance(route_nodes, list)
    used: set[int] = set()
    for role in policy.roles:
        lowest, highest = policy.rank(role.min_level), policy.rank(role.max_level)
        unrouted: list[str] = []
        for level in policy.levels[lowest : highest + 1]:
            index = next(
                (i for i, r in enumerate(policy.routes) if r.matches(level, role.name)), None
            )
            if index is None:
                unrouted.append(level)
                continue
            used.add(index)
            route = policy.routes[index]
            if not any(
                role.may_use(name)
                and policy.rank(policy.target(name).max_level) >= policy.rank(level)
                for name in policy.candidates(route)
            ):
                f.warn(
                    roles[role.name],
                    ("roles", role.name),
                    f"its {level} requests take route {show(route.name)}, where no target it "
                    f"may use accepts {level}: they are refused",
                )
        if unrouted:
            f.warn(
                roles[role.name],
                ("roles", role.name),
                f"no route matches its {', '.join(unrouted)} requests: they are refused",
            )
    for index, route in enumerate(policy.routes):
        if index not in used:
            f.warn(
                route_nodes[index],
                ("routes", index),
                f"route {show(route.name)} is never used: earlier routes take every request "
                "it matches, or no role may send the levels it matches",
            )
