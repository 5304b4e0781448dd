"""PolicyEngine: classification and routing on the example policy; fail closed everywhere."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

from common.policy.detectors import Finding, PreparedText
from common.policy.document import load_policy, parse_policy
from common.policy.policy_model import Policy
from common.policy.routing import (
    LOCAL_ONLY_WITHOUT_POLICY,
    Caller,
    PolicyEngine,
    Restrictions,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-policy.yaml"
CARD = "4111 1111 1111 1111"
SSN = "123-45-6789"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


@pytest.fixture(scope="module")
def engine(policy: Policy) -> PolicyEngine:
    return PolicyEngine(policy)


def test_public_text_from_a_developer_goes_to_the_cloud_then_falls_back_home(
    engine: PolicyEngine,
) -> None:
    decision = engine.decide(["Summarise the history of Rome."], Caller("developer"))
    assert (decision.level, decision.route, decision.refusal) == (
        "public",
        "developers-to-cloud",
        "",
    )
    assert decision.targets == ("cloud-mini", "cloud-large", "local-smol", "site-big")
    assert engine.policy is not None
    assert decision.policy_digest == engine.policy.digest


def test_a_card_number_keeps_the_request_on_premises(engine: PolicyEngine) -> None:
    decision = engine.decide([f"Refund card {CARD} please"], Caller("developer"))
    assert decision.level == "confidential"
    assert decision.route == "confidential-on-premises"
    assert decision.targets == ("site-big", "local-smol")
    (found,) = decision.classification.findings
    assert (found.part, found.finding.detector) == (0, "payment-cards")
    assert (found.finding.start, found.finding.end) == (12, 12 + len(CARD))


def test_the_developer_may_not_send_restricted_data(engine: PolicyEngine) -> None:
    decision = engine.decide(["hello", f"my SSN is {SSN}"], Caller("developer"))
    assert decision.level == "restricted"
    assert decision.targets == ()
    assert "role developer may not send restricted data" in decision.refusal


def test_restricted_data_from_an_admin_stays_on_this_machine_also_in_the_fallback(
    engine: PolicyEngine,
) -> None:
    decision = engine.decide([f"SSN {SSN}"], Caller("admin"))
    assert decision.route == "restricted-stays-here"
    assert decision.targets == ("local-smol",)
    skipped = {c.target: c.reason for c in decision.candidates if not c.allowed}
    assert skipped == {"site-big": "restricted data is above its ceiling confidential"}


def test_a_declared_level_raises_but_never_lowers(engine: PolicyEngine) -> None:
    raised = engine.decide(["nothing special"], Caller("analyst", declared_level="confidential"))
    assert raised.level == "confidential"
    lowered = engine.decide([f"card {CARD}"], Caller("admin", declared_level="public"))
    assert lowered.level == "confidential"
    unknown = engine.decide(["x"], Caller("admin", declared_level="secret-ish"))
    assert "declared level 'secret-ish' is not one of" in unknown.refusal
    assert unknown.targets == ()


def test_an_unknown_role_is_refused(engine: PolicyEngine) -> None:
    decision = engine.decide(["hello"], Caller("intern"))
    assert decision.refusal == "role 'intern' is not in the policy"


def test_a_requested_target_goes_first_but_only_within_the_ceiling(engine: PolicyEngine) -> None:
    public = engine.decide(["hello"], Caller("admin"), requested="cloud-large")
    assert public.targets[0] == "cloud-large"
    confidential = engine.decide([f"card {CARD}"], Caller("admin"), requested="cloud-large")
    # cloud-large's own fallback chain (cloud-mini, then local-smol) first, then the route's.
    assert confidential.targets == ("local-smol", "site-big")
    skipped = [c.target for c in confidential.candidates if not c.allowed]
    assert skipped == ["cloud-large", "cloud-mini"]


def test_restrictions_keep_requests_local_and_route_away(engine: PolicyEngine) -> None:
    local = engine.decide(
        ["hello"], Caller("developer"), restrictions=Restrictions(local_only="team over budget")
    )
    assert local.targets == ("local-smol", "site-big")
    reasons = {c.target: c.reason for c in local.candidates}
    assert reasons["cloud-mini"] == "off-premises; team over budget"
    away = engine.decide(
        ["hello"], Caller("developer"), restrictions=Restrictions(avoid=frozenset({"cloud-mini"}))
    )
    assert away.targets == ("cloud-large", "local-smol", "site-big")


class Exploding:
    name = "exploding"
    level = "internal"

    def find(self, text: PreparedText) -> Iterable[Finding]:
        raise RuntimeError("boom")


def test_a_failing_detector_makes_the_request_the_highest_level(engine: PolicyEngine) -> None:
    broken = PolicyEngine(engine.policy)
    broken._detectors = (*broken._detectors, Exploding())
    decision = broken.decide(["a harmless question"], Caller("admin"))
    assert decision.level == "restricted"
    assert decision.targets == ("local-smol",)
    assert "detector exploding failed: treated as restricted" in decision.classification.reasons
    assert broken.decide(["a harmless question"], Caller("developer")).targets == ()


def test_without_a_policy_only_local_models_answer() -> None:
    engine = PolicyEngine(None)
    kept = engine.decide(["hello"], Caller("developer"), requested="smol", local_models={"smol"})
    assert kept.targets == ("smol",)
    refused = engine.decide(["hi"], Caller("developer"), requested="gpt-x", local_models={"smol"})
    assert refused.targets == ()
    assert refused.refusal.startswith(LOCAL_ONLY_WITHOUT_POLICY)


def test_no_matching_route_is_a_refusal() -> None:
    policy = parse_policy(
        """
        version: 1
        roles: {user: {max_level: restricted, targets: ["*"]}}
        targets: {home: {type: local, model: smol, max_level: restricted}}
        routes: [{name: only-public, levels: [public], targets: [home]}]
        """
    )
    caller = Caller("user", declared_level="confidential")
    decision = PolicyEngine(policy).decide(["hello"], caller)
    assert decision.level == "confidential"
    assert decision.refusal == "no route takes confidential data from role user"
