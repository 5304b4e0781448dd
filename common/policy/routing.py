"""The policy decision shared by agent and gateway: classify a request, then choose its targets.

`PolicyEngine.decide` is pure and fast (no I/O): it raises a request's level from the caller's
role and declared level and from every detector finding, refuses what the role may not send,
and lists the targets the request may try, in order, each with the reason it was kept or
skipped. Fail closed (design principle 4): a detector that fails makes the request the highest
level; data never goes to a target whose ceiling is below its level, also not as a fallback;
without a policy only on-premises models are used.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from common.policy.detectors import (
    Detector,
    DetectorFailure,
    Finding,
    builtin_detector,
    keyword_detector,
    regex_detector,
    scan,
)
from common.policy.policy_model import (
    BuiltinDetector,
    KeywordDetector,
    Policy,
    Role,
    Target,
)


@dataclass(frozen=True)
class Caller:
    """Who sends a request: from the API key, plus the level the caller declares (optional)."""

    role: str
    team: str = ""
    key_id: str = ""
    declared_level: str | None = None


@dataclass(frozen=True)
class PartFinding:
    """A detector finding in one part of a request (a chat message, or the prompt: part 0)."""

    part: int
    finding: Finding


@dataclass(frozen=True)
class Classification:
    level: str
    findings: tuple[PartFinding, ...]
    failures: tuple[DetectorFailure, ...]
    reasons: tuple[str, ...]  # why the level is what it is, in order


@dataclass(frozen=True)
class Candidate:
    target: str
    allowed: bool
    reason: str  # why it may be tried, or why it is skipped


@dataclass(frozen=True)
class Restrictions:
    """What the live state imposes on a decision: budgets spent, alerts firing."""

    local_only: str = ""  # non-empty: only on-premises targets, and why
    avoid: frozenset[str] = frozenset()  # targets routed away from (alerts firing)


NO_RESTRICTIONS = Restrictions()


@dataclass(frozen=True)
class Decision:
    classification: Classification
    route: str | None
    candidates: tuple[Candidate, ...]
    refusal: str = ""  # non-empty: the request is refused, and why
    policy_digest: str = ""  # "" when no policy is loaded

    @property
    def level(self) -> str:
        return self.classification.level

    @property
    def targets(self) -> tuple[str, ...]:
        """The targets to try, in order."""
        return tuple(c.target for c in self.candidates if c.allowed)


# Route name, candidates and refusal of one (level, role, requested, restrictions).
_Routed = tuple[str | None, tuple[Candidate, ...], str]
MAX_CACHED_ROUTINGS = 4096  # distinct (level, role, requested, restrictions) kept per policy


class PolicyRefused(Exception):
    """The policy refuses a request (a role above its level, no route, no allowed target)."""


@dataclass
class PolicyEngine:
    """One loaded policy, its detectors built once. `policy` None: no policy has arrived yet;
    requests then go to on-premises models only (`LOCAL_ONLY_WITHOUT_POLICY`)."""

    policy: Policy | None
    _detectors: tuple[Detector, ...] = field(init=False, default=())
    _routed: dict[tuple[str, str, str, Restrictions], _Routed] = field(
        init=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if self.policy is not None:
            self._detectors = tuple(_build(d) for d in self.policy.detectors)

    def classify(self, parts: Sequence[str], caller: Caller) -> Classification:
        """The request's level: the highest of the policy's default, the role's minimum, the
        declared level and every finding; the highest level of all if a detector failed."""
        policy = self.policy
        if policy is None:
            return Classification("", (), (), ("no policy: on-premises models only",))
        level = policy.default_level
        reasons = [f"default level {level}"]
        role = policy.role(caller.role)
        if role is not None and policy.rank(role.min_level) > policy.rank(level):
            level = role.min_level
            reasons.append(f"role {role.name} sends {level} at least")
        declared = caller.declared_level
        if declared is not None:
            if declared not in policy.levels:
                raise PolicyRefused(
                    f"declared level {declared[:64]!r} is not one of {', '.join(policy.levels)}"
                )
            if policy.rank(declared) > policy.rank(level):
                level = declared
                reasons.append(f"declared {declared}")
        findings: list[PartFinding] = []
        failures: list[DetectorFailure] = []
        for index, text in enumerate(parts):
            result = scan(text, self._detectors)
            findings += [PartFinding(index, f) for f in result.findings]
            failures += result.failures
        for item in findings:
            if policy.rank(item.finding.level) > policy.rank(level):
                level = item.finding.level
                reasons.append(f"detector {item.finding.detector} found {item.finding.kind}")
        if failures:
            level = policy.levels[-1]
            names = ", ".join(sorted({f.detector for f in failures}))
            reasons.append(f"detector {names} failed: treated as {level}")
        return Classification(level, tuple(findings), tuple(failures), tuple(reasons))

    def decide(
        self,
        parts: Sequence[str],
        caller: Caller,
        *,
        requested: str = "",
        restrictions: Restrictions = NO_RESTRICTIONS,
        local_models: Collection[str] = (),
    ) -> Decision:
        """Classifies and routes. `requested`: the model the caller asked for; a policy target
        of that name goes first. Without a policy, `requested` must be one of `local_models`.
        Never raises for a refusal: the Decision carries it."""
        try:
            classification = self.classify(parts, caller)
        except PolicyRefused as exc:
            empty = Classification("", (), (), ())
            return Decision(empty, None, (), refusal=str(exc), policy_digest=self._digest())
        policy = self.policy
        if policy is None:
            return _without_policy(classification, requested, local_models)
        key = (classification.level, caller.role, requested, restrictions)
        routed = self._routed.get(key)
        if routed is None:
            routed = self._route(policy, *key)
            if len(self._routed) >= MAX_CACHED_ROUTINGS:
                self._routed.clear()
            self._routed[key] = routed
        route, candidates, refusal = routed
        return Decision(classification, route, candidates, refusal, policy.digest)

    @staticmethod
    def _route(
        policy: Policy, level: str, role_name: str, requested: str, restrictions: Restrictions
    ) -> _Routed:
        """Route, candidates and refusal for a level and role: the same for every request of
        that level and role, so `decide` keeps them (the text's scan is what varies)."""
        role = policy.role(role_name)
        refusal = _role_refusal(policy, role, role_name, level)
        if refusal:
            return None, (), refusal
        assert role is not None
        route = policy.first_route(level, role.name)
        if route is None:
            return None, (), f"no route takes {level} data from role {role.name}"
        order = policy.candidates(route)
        if requested and requested in {t.name for t in policy.targets}:
            first = (requested, *policy.fallback_chain(requested))
            order = tuple(dict.fromkeys((*first, *order)))
        candidates = tuple(
            _judge(policy, policy.target(name), role, level, restrictions) for name in order
        )
        if not any(c.allowed for c in candidates):
            skipped = "; ".join(f"{c.target}: {c.reason}" for c in candidates)
            return (
                route.name,
                candidates,
                (f"no target of route {route.name} may take this request ({skipped})"),
            )
        return route.name, candidates, ""

    def _digest(self) -> str:
        return self.policy.digest if self.policy is not None else ""


# Without a policy, the agent answers only from its own models.
LOCAL_ONLY_WITHOUT_POLICY = "no routing policy has been received: on-premises models only"


def _without_policy(
    classification: Classification, requested: str, local_models: Collection[str]
) -> Decision:
    if requested in local_models:
        kept = Candidate(requested, True, LOCAL_ONLY_WITHOUT_POLICY)
        return Decision(classification, None, (kept,))
    return Decision(
        classification,
        None,
        (),
        refusal=f"{LOCAL_ONLY_WITHOUT_POLICY}; {requested[:64]!r} is not one of them",
    )


def _role_refusal(policy: Policy, role: Role | None, name: str, level: str) -> str:
    if role is None:
        return f"role {name[:64]!r} is not in the policy"
    if policy.rank(level) > policy.rank(role.max_level):
        return f"role {role.name} may not send {level} data (its ceiling is {role.max_level})"
    return ""


def _judge(
    policy: Policy, target: Target, role: Role, level: str, restrictions: Restrictions
) -> Candidate:
    """Whether the request may go to `target`; the first rule that rules it out is the reason."""
    if policy.rank(level) > policy.rank(target.max_level):
        return Candidate(
            target.name, False, f"{level} data is above its ceiling {target.max_level}"
        )
    if not role.may_use(target.name):
        return Candidate(target.name, False, f"role {role.name} may not use it")
    if restrictions.local_only and not target.on_premises:
        return Candidate(target.name, False, f"off-premises; {restrictions.local_only}")
    if target.name in restrictions.avoid:
        return Candidate(target.name, False, "routed away from while an alert fires")
    return Candidate(target.name, True, f"{level} data within its ceiling {target.max_level}")


def _build(spec: object) -> Detector:
    if isinstance(spec, BuiltinDetector):
        return builtin_detector(spec.builtin, name=spec.name, level=spec.level)
    if isinstance(spec, KeywordDetector):
        return keyword_detector(
            spec.name, spec.keywords, level=spec.level, case_sensitive=spec.case_sensitive
        )
    name, level, pattern = (getattr(spec, a) for a in ("name", "level", "regex"))
    return regex_detector(name, pattern, level=level)
