"""Policy targets: local, other agents, cloud providers, their prices, URLs, keys, fallbacks."""

from __future__ import annotations

import pytest

from common.policy.document import (
    PolicyError,
    check_policy,
    parse_policy,
)
from tests.policy_documents import (
    CLOUD,
    MINIMAL,
    line_of,
    problem_at,
    problems,
)

# -- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", ["price_per_1k_input", "price_per_1k_output", "base_url"])
def test_cloud_targets_need_prices_and_a_base_url(missing: str) -> None:
    text = "\n".join(line for line in CLOUD.splitlines() if missing not in line) + "\n"
    problem = problem_at(text, "targets.cloud")
    assert f"missing required key '{missing}'" in problem.message
    assert problem.line == line_of(text, "type: cloud")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://api.example.com/v1", "is not an http:// or https:// URL"),
        ("api.example.com/v1", "is not an http:// or https:// URL"),
        ("https://", "is not an http:// or https:// URL"),
        ("https://host:99999/v1", "is not an http:// or https:// URL"),
        ("https://user:pw@api.example.com/v1", "user name or password"),
    ],
)
def test_base_urls_must_be_http_or_https(url: str, expected: str) -> None:
    text = CLOUD.replace("https://api.example.com/v1", url)
    problem = problem_at(text, "targets.cloud.base_url")
    assert expected in problem.message
    assert problem.line == line_of(text, "base_url")


def test_plain_http_to_another_host_is_a_warning() -> None:
    text = CLOUD.replace("https://api.example.com", "http://gateway.internal")
    (warning,) = check_policy(text).warnings
    assert warning.path == "targets.cloud.base_url"
    assert "unencrypted" in warning.message
    assert (
        check_policy(CLOUD.replace("https://api.example.com", "http://127.0.0.1:8080")).warnings
        == ()
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price_per_1k_input", "-0.1"),
        ("price_per_1k_output", "-1"),
    ],
)
def test_negative_prices_are_refused(field: str, value: str) -> None:
    text = CLOUD.replace(f"{field}: 0.", f"{field}: {value}  # 0.")
    assert "below the minimum of 0" in problem_at(text, f"targets.cloud.{field}").message


def test_options_of_other_target_types_are_named() -> None:
    text = MINIMAL.replace("model: smol}", "model: smol, price_per_1k_input: 1}")
    problem = problem_at(text, "targets.here.price_per_1k_input")
    assert problem.message == "applies to cloud targets, not local"


def test_site_agent_and_cloud_targets_must_state_their_ceiling() -> None:
    text = MINIMAL.replace(
        "model: smol}", "model: smol}\n  hq: {type: site_agent, agent: hq-1, model: big}"
    )
    assert "missing required key 'max_level'" in problem_at(text, "targets.hq").message


def test_api_keys_are_referenced_never_inlined_nor_echoed() -> None:
    secret = "sk-live-0123456789abcdef"
    text = CLOUD.replace(
        "    max_level: internal\nroutes",
        f"    api_key_ref: {secret}\n    max_level: internal\nroutes",
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert secret not in str(caught.value)
    assert "env:VARIABLE" in caught.value.problems[0].message
    ok = text.replace(secret, "env:CLOUD_KEY")
    assert parse_policy(ok).target("cloud").api_key_ref == "env:CLOUD_KEY"  # type: ignore[union-attr]


def test_fallback_cycles_are_reported_with_the_loop() -> None:
    text = """\
version: 1
roles: {dev: {max_level: internal, targets: ["*"]}}
targets:
  a: {type: local, model: m, fallback: [b]}
  b: {type: local, model: m, fallback: [c]}
  c: {type: local, model: m, fallback: [a]}
  d: {type: local, model: m, fallback: [d]}
routes: [{name: r, targets: [a]}]
"""
    found = problems(text)
    assert [(p.path, p.line, p.message) for p in found] == [
        ("targets.c.fallback[0]", 6, "fallback cycle: a → b → c → a"),
        ("targets.d.fallback[0]", 7, "fallback cycle: d → d"),
    ]


def test_a_fallback_to_a_lower_ceiling_is_neither_error_nor_warning() -> None:
    text = CLOUD.replace("model: smol}", "model: smol, fallback: [cloud]}")
    checked = check_policy(text)
    assert checked.warnings == ()
    assert checked.policy.fallback_chain("here") == ("cloud",)
