"""Routing policy documents: the example, the canonical form and digest, loading, reporting."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.errors import InvalidArgument
from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.document import (
    MAX_DOCUMENT_BYTES,
    PolicyError,
    PolicyProblem,
    check_policy,
    load_policy,
    parse_policy,
    policy_to_dict,
)
from common.policy.policy_model import (
    DEFAULT_LEVELS,
    AlertAction,
    BuiltinDetector,
    CloudTarget,
    FallbackOn,
    KeywordDetector,
    LocalTarget,
    NotifyKind,
    OverBudget,
    RegexDetector,
    SiteAgentTarget,
)
from tests.policy_documents import (
    CLOUD,
    EXAMPLE,
    MINIMAL,
    line_of,
    problem_at,
    problems,
)

# -- the example and the canonical form --------------------------------------------------------


def test_the_example_parses_with_no_warnings() -> None:
    checked = check_policy(EXAMPLE.read_text(), source=str(EXAMPLE))
    assert checked.warnings == ()
    policy = checked.policy
    assert policy.levels == DEFAULT_LEVELS
    assert {role.name: role.max_level for role in policy.roles} == {
        "admin": "restricted",
        "analyst": "confidential",
        "developer": "confidential",
    }
    kinds = {type(target) for target in policy.targets}
    assert kinds == {LocalTarget, SiteAgentTarget, CloudTarget}
    clouds = [target for target in policy.targets if isinstance(target, CloudTarget)]
    assert len(clouds) == 2
    assert all(c.price_per_1k_input > 0 and c.max_level == "internal" for c in clouds)
    builtins = {d.builtin for d in policy.detectors if isinstance(d, BuiltinDetector)}
    assert builtins == set(BUILTIN_DETECTOR_KINDS)
    assert any(isinstance(d, KeywordDetector) for d in policy.detectors)
    assert any(isinstance(d, RegexDetector) for d in policy.detectors)
    assert [rule.action for rule in policy.alerts.rules] == [
        AlertAction.ROUTE_AWAY,
        AlertAction.SWITCH_TO_LOCAL,
        AlertAction.ENABLE_FALLBACK,
    ]
    assert policy.budgets.for_team("support").over_budget is OverBudget.LOCAL  # type: ignore[union-attr]
    assert policy.budgets.for_team("unknown-team").name == "default"  # type: ignore[union-attr]
    assert policy.ledger.store_prompts is False


def test_the_example_keeps_each_role_as_described() -> None:
    policy = load_policy(EXAMPLE)

    def reachable(role: str, level: str) -> set[str]:
        route = policy.first_route(level, role)
        assert route is not None
        ceiling = policy.rank(level)
        return {
            name
            for name in policy.candidates(route)
            if policy.role(role).may_use(name)  # type: ignore[union-attr]
            and policy.rank(policy.target(name).max_level) >= ceiling
        }

    on_premises = {t.name for t in policy.targets if t.on_premises}
    for level in ("public", "internal"):
        assert reachable("developer", level) - on_premises  # a cloud provider
        assert reachable("analyst", level) <= on_premises
    for role in ("developer", "analyst", "admin"):
        assert reachable(role, "confidential") <= on_premises
    assert reachable("admin", "restricted") == {"local-smol"}
    assert policy.rank(policy.role("analyst").max_level) < policy.rank("restricted")  # type: ignore[union-attr]


def test_canonical_form_round_trips_through_json() -> None:
    policy = load_policy(EXAMPLE)
    again = parse_policy(json.dumps(policy_to_dict(policy)))
    assert again == policy
    assert again.digest == policy.digest
    assert len(policy.digest) == 64


def test_the_digest_ignores_layout_and_mapping_order_but_not_content() -> None:
    policy = parse_policy(CLOUD)
    reordered = CLOUD.replace("  here: {type: local, model: smol}\n  cloud:", "  cloud:").replace(
        "routes:", "  here: {model: smol, type: local}\nroutes:"
    )
    assert parse_policy(reordered).digest == policy.digest
    as_json = json.dumps(yaml.safe_load(CLOUD), indent=4)
    assert parse_policy(as_json).digest == policy.digest
    assert parse_policy(CLOUD.replace("0.2", "0.25")).digest != policy.digest


def test_defaults_are_spelled_out() -> None:
    policy = parse_policy(MINIMAL)
    assert policy.levels == DEFAULT_LEVELS
    assert policy.default_level == "public"
    assert policy.fallback_on == tuple(FallbackOn)
    assert [channel.kind for channel in policy.alerts.notify] == [NotifyKind.LOG]
    assert policy.target("here").max_level == "restricted"  # a local target: the top
    assert policy.role("dev").min_level == "public"  # type: ignore[union-attr]
    assert policy.role("nobody") is None
    cloud = parse_policy(CLOUD).target("cloud")
    assert isinstance(cloud, CloudTarget)
    assert cloud.redact is True
    assert cloud.timeout_s == 60.0
    assert policy_to_dict(policy)["targets"]["here"]["type"] == "local"


def test_fallback_chains_are_depth_first_and_each_target_once() -> None:
    policy = load_policy(EXAMPLE)
    assert policy.fallback_chain("cloud-large") == ("cloud-mini", "local-smol", "site-big")
    route = policy.first_route("public", "developer")
    assert route is not None
    assert policy.candidates(route) == ("cloud-mini", "cloud-large", "local-smol", "site-big")


def test_json_documents_parse_and_report_lines() -> None:
    document = json.dumps(yaml.safe_load(CLOUD), indent=2)
    assert parse_policy(document) == parse_policy(CLOUD)
    broken = document.replace('"model": "mini"', '"model": "mini",,')
    problem = problems(broken)[0]
    assert problem.line == line_of(broken, '"mini",,')
    assert "not valid JSON" in problem.message
    typo = document.replace('"max_level": "internal",', '"max_levle": "internal",', 1)
    found = problem_at(typo, "roles.dev.max_levle")
    assert found.line == line_of(typo, "max_levle")
    assert "did you mean 'max_level'" in found.message


def test_load_policy_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(MINIMAL)
    assert load_policy(path) == parse_policy(MINIMAL)
    path.write_bytes(b"#" * (MAX_DOCUMENT_BYTES + 10))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert f"{path}: the file has more than 1048576 bytes" in str(caught.value)


def test_policy_error_is_an_invalid_argument_with_every_problem_in_order() -> None:
    text = MINIMAL.replace("internal", "secret").replace("smol}", "smol, colour: red}")
    with pytest.raises(InvalidArgument) as caught:
        parse_policy(text, source="p.yaml")
    error = caught.value
    assert isinstance(error, PolicyError)
    assert [(p.path, p.line) for p in error.problems] == [
        ("roles.dev.max_level", 3),
        ("targets.here.colour", 5),
    ]
    assert "p.yaml:3:" in str(error)
    assert "p.yaml:5:" in str(error)


def test_a_large_valid_policy_validates_well_under_a_second() -> None:
    pattern = "'ACME-{i}-[A-Z]{{2}}\\d{{4,6}}(?:-[a-z]+)*'"
    detectors = "".join(
        f"  - {{name: re{i}, regex: {pattern.format(i=i)}, level: internal}}\n" for i in range(60)
    )
    targets = "".join(
        f"  t{i}: {{type: local, model: m{i}, fallback: [t{i + 1}]}}\n" for i in range(63)
    )
    text = f"""\
version: 1
detectors:
{detectors}roles:
  dev: {{max_level: restricted, targets: ["*"]}}
targets:
{targets}  t63: {{type: local, model: m}}
routes:
  - {{name: all, targets: [t0]}}
"""
    started = time.perf_counter()
    policy = parse_policy(text)
    assert time.perf_counter() - started < 1.0
    assert len(policy.fallback_chain("t0")) == 63


# -- properties ----------------------------------------------------------------------------

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(text: str | bytes) -> list[PolicyProblem] | None:
    """None for a valid policy, else the problems; no other exception may come out."""
    try:
        parse_policy(text)
    except PolicyError as error:
        return error.problems
    return None


@_SETTINGS
@given(st.text(max_size=400))
def test_any_text_gives_a_policy_or_a_policy_error(text: str) -> None:
    assert outcome(text) != []


@_SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes_give_a_policy_or_a_policy_error(data: bytes) -> None:
    assert outcome(data) != []


@_SETTINGS
@given(
    st.lists(st.sampled_from(MINIMAL.splitlines()), max_size=8),
    st.sampled_from(["", "{", "[", ":", "- ", "&a ", "*a", "!!str ", '"', "'", "\t", "~"]),
)
def test_mangled_policies_give_a_policy_or_a_policy_error(lines: list[str], junk: str) -> None:
    text = "\n".join(junk + line if i % 2 else line for i, line in enumerate(lines))
    assert all(problem.message for problem in outcome(text) or [])


@_SETTINGS
@given(
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    st.integers(min_value=0, max_value=10**9),
    st.sampled_from(["reject", "local"]),
    st.permutations(["error", "timeout", "budget"]),
)
def test_canonical_form_round_trips(price: float, rpm: int, over: str, reasons: list[str]) -> None:
    document = yaml.safe_load(CLOUD)
    document["targets"]["cloud"]["price_per_1k_input"] = price
    document["budgets"] = {"teams": {"t": {"requests_per_minute": rpm, "over_budget": over}}}
    document["fallback_on"] = reasons[:2]
    policy = parse_policy(json.dumps(document))
    canonical = json.dumps(policy_to_dict(policy))
    assert parse_policy(canonical) == policy
    assert parse_policy(yaml.safe_dump(policy_to_dict(policy))) == policy
    assert parse_policy(canonical).digest == policy.digest
