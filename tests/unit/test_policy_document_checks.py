"""Policy fields: unknown levels, targets, roles and keys; types, names, detectors, routes."""

from __future__ import annotations

import pytest

from common.policy.document import (
    check_policy,
    parse_policy,
)
from common.policy.policy_model import (
    KeywordDetector,
)
from tests.policy_documents import (
    CLOUD,
    MINIMAL,
    line_of,
    problem_at,
    problems,
    with_extra,
)

# -- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ("default_level: secret\n", "default_level"),
        ("detectors:\n  - {name: c, builtin: email, level: secret}\n", "detectors[0].level"),
        ("levels: [low, high]\ndefault_level: medium\n", "default_level"),
    ],
)
def test_unknown_levels_are_refused(extra: str, path: str) -> None:
    text = with_extra(extra)
    problem = problem_at(text, path)
    assert "unknown level" in problem.message
    assert problem.line == line_of(text, "secret" if "secret" in extra else "medium")


@pytest.mark.parametrize(
    ("old", "new", "path"),
    [
        ("{max_level: internal,", "{max_level: secret,", "roles.dev.max_level"),
        (
            "{max_level: internal,",
            "{min_level: secret, max_level: internal,",
            "roles.dev.min_level",
        ),
        ("model: smol}", "model: smol, max_level: top}", "targets.here.max_level"),
        (
            "{name: all, targets",
            "{name: all, levels: [public, secret], targets",
            "routes[0].levels[1]",
        ),
    ],
)
def test_unknown_levels_in_roles_targets_and_routes(old: str, new: str, path: str) -> None:
    text = MINIMAL.replace(old, new)
    problem = problem_at(text, path)
    assert "unknown level" in problem.message
    assert "public, internal, confidential, restricted" in problem.message


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("targets: [here]}", "targets: [hre]}", "roles.dev.targets[0]", "did you mean 'here'"),
        (
            "all, targets: [here]}",
            "all, targets: [there]}",
            "routes[0].targets[0]",
            "unknown target",
        ),
        ("{name: all,", "{name: all, roles: [devs],", "routes[0].roles[0]", "did you mean 'dev'"),
        (
            "model: smol}",
            "model: smol, fallback: [elsewhere]}",
            "targets.here.fallback[0]",
            "unknown target",
        ),
        ("{type: local,", "{type: lokal,", "targets.here.type", "did you mean 'local'"),
    ],
)
def test_unknown_targets_roles_and_kinds(old: str, new: str, path: str, expected: str) -> None:
    text = MINIMAL.replace(old, new)
    assert new in text
    assert expected in problem_at(text, path).message


def test_unknown_builtin_detector_kinds_are_refused() -> None:
    text = with_extra("detectors:\n  - {name: c, builtin: payment_cards, level: internal}\n")
    problem = problem_at(text, "detectors[0].builtin")
    assert "did you mean 'payment_card'" in problem.message
    assert problem.line == 9


# -- names, keys and types -----------------------------------------------------------------


def test_duplicate_names_are_refused() -> None:
    text = with_extra(
        "detectors:\n"
        "  - {name: x, builtin: email, level: internal}\n"
        "  - {name: x, keywords: [k], level: internal}\n"
        "alerts:\n"
        "  rules:\n"
        "    - {name: a, metric: latency_ms, threshold: 1}\n"
        "    - {name: a, metric: latency_ms, threshold: 2}\n",
        MINIMAL + "  - {name: all, targets: [here]}\n",
    )
    found = {p.path: p for p in problems(text)}
    assert "duplicate route name 'all' (first on line 7)" in found["routes[1].name"].message
    assert "duplicate detector name 'x'" in found["detectors[1].name"].message
    assert "duplicate alert name 'a'" in found["alerts.rules[1].name"].message


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("routes:", "route:", "route", "did you mean 'routes'"),
        (
            "{max_level: internal,",
            "{max_levle: internal,",
            "roles.dev.max_levle",
            "did you mean 'max_level'",
        ),
        (
            "model: smol}",
            "model: smol, timeout: 3}",
            "targets.here.timeout",
            "did you mean 'timeout_s'",
        ),
        (
            "model: smol}",
            "model: smol, colour: red}",
            "targets.here.colour",
            "known keys: type, model",
        ),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    old: str, new: str, path: str, expected: str
) -> None:
    text = MINIMAL.replace(old, new)
    problem = problem_at(text, path)
    assert expected in problem.message
    assert problem.line == line_of(text, new)


@pytest.mark.parametrize(
    ("old", "new", "path", "expected"),
    [
        ("version: 1", "version: '1'", "version", "expected a whole number, got a string"),
        ("version: 1", "version: 2", "version", "unsupported version 2"),
        (
            "model: smol}",
            "model: smol, timeout_s: fast}",
            "targets.here.timeout_s",
            "expected a number",
        ),
        (
            "model: smol}",
            "model: smol, timeout_s: 0}",
            "targets.here.timeout_s",
            "below the minimum",
        ),
        (
            "model: smol}",
            "model: smol, cost_per_hour: true}",
            "targets.here.cost_per_hour",
            "got a boolean",
        ),
        ("model: smol}", "model: [smol]}", "targets.here.model", "expected a string, got a list"),
        ("model: smol}", "model: two words}", "targets.here.model", "must not contain blanks"),
        (
            "targets: [here]}",
            "targets: here}",
            "roles.dev.targets",
            "expected a list, got a string",
        ),
        ("{name: all, targets", "{name: 7, targets", "routes[0].name", "expected a string"),
        ("model: smol}", "model: smol, timeout_s: 1.5e400}", "targets.here.timeout_s", "finite"),
    ],
)
def test_wrong_types_are_refused(old: str, new: str, path: str, expected: str) -> None:
    text = MINIMAL.replace(old, new)
    assert new in text
    assert expected in problem_at(text, path).message


def test_names_must_be_identifiers() -> None:
    text = MINIMAL.replace("  here:", '  "bad name":').replace("[here]", '["bad name"]')
    problem = problem_at(text, "targets['bad name']")
    assert "must be 1 to 63 of A-Z a-z 0-9 . _ -" in problem.message


def test_role_levels_must_be_in_order() -> None:
    text = MINIMAL.replace("{max_level: internal,", "{max_level: internal, min_level: restricted,")
    assert (
        "min_level restricted is above max_level internal" in problem_at(text, "roles.dev").message
    )
    text = MINIMAL.replace("targets: [here]}", 'targets: [here, "*"]}', 1)
    assert "cannot be combined" in problem_at(text, "roles.dev.targets").message


def test_levels_are_two_to_sixteen_distinct_names() -> None:
    assert "needs at least 2 items" in problem_at(with_extra("levels: [only]\n"), "levels").message
    many = "levels: [" + ", ".join(f"l{i}" for i in range(17)) + "]\n"
    assert "at most 16" in problem_at(with_extra(many), "levels").message
    twice = with_extra("levels: [a, b, a]\n")
    assert "'a' is listed twice" in problem_at(twice, "levels[2]").message
    custom = with_extra("levels: [open, closed]\n").replace("internal", "closed")
    assert parse_policy(custom).rank("closed") == 1


# -- detectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("detector", "path", "expected"),
    [
        ("{name: d, level: internal}", "detectors[0]", "exactly one of builtin, keywords, regex"),
        (
            "{name: d, builtin: email, regex: x, level: internal}",
            "detectors[0]",
            "it has builtin and regex",
        ),
        (
            "{name: d, regex: 'x', case_sensitive: true, level: internal}",
            "detectors[0].case_sensitive",
            "keywords only",
        ),
        ("{name: d, keywords: [], level: internal}", "detectors[0].keywords", "must not be empty"),
        (
            "{name: d, keywords: [a, A], level: internal}",
            "detectors[0].keywords[1]",
            "listed twice",
        ),
        ("{name: d, keywords: [' a'], level: internal}", "detectors[0].keywords[0]", "blanks"),
        (
            "{name: d, regex: '(unclosed', level: internal}",
            "detectors[0].regex",
            "does not compile",
        ),
        ("{name: d, regex: '(a+)+$', level: internal}", "detectors[0].regex", "catastrophically"),
        ("{name: d, regex: '(a|aa)*b', level: internal}", "detectors[0].regex", "catastrophically"),
        (
            "{name: d, regex: '(\\w+\\s?)*$', level: internal}",
            "detectors[0].regex",
            "catastrophically",
        ),
        ("{name: d, regex: 'x*', level: internal}", "detectors[0].regex", "every request"),
    ],
)
def test_detectors_are_checked(detector: str, path: str, expected: str) -> None:
    text = with_extra(f"detectors:\n  - {detector}\n")
    problem = problem_at(text, path)
    assert expected in problem.message
    assert problem.line == 9


def test_keywords_keep_their_options() -> None:
    text = with_extra(
        "detectors:\n  - {name: d, keywords: [a, A], case_sensitive: true, level: internal}\n"
    )
    (detector,) = parse_policy(text).detectors
    assert detector == KeywordDetector(
        name="d", level="internal", keywords=("a", "A"), case_sensitive=True
    )


def test_a_builtin_kind_is_used_once() -> None:
    text = with_extra(
        "detectors:\n"
        "  - {name: a, builtin: email, level: internal}\n"
        "  - {name: b, builtin: email, level: confidential}\n"
    )
    assert "already detected by 'a'" in problem_at(text, "detectors[1].builtin").message


# -- routes --------------------------------------------------------------------------------


def test_a_shadowed_route_is_a_warning() -> None:
    text = MINIMAL + "  - {name: later, levels: [public], targets: [here]}\n"
    checked = check_policy(text)
    (warning,) = checked.warnings
    assert warning.path == "routes[1]"
    assert warning.line == 8
    assert "route 'later' is never used" in warning.message


def test_levels_no_route_serves_are_warnings_on_the_role() -> None:
    text = MINIMAL.replace("{name: all, targets", "{name: all, levels: [public], targets")
    (warning,) = check_policy(text).warnings
    assert warning.path == "roles.dev"
    assert "no route matches its internal requests" in warning.message


def test_a_route_whose_targets_refuse_the_level_is_a_warning() -> None:
    text = CLOUD.replace("targets: [cloud, here]", "targets: [cloud]").replace(
        "{max_level: internal, targets", "{max_level: confidential, targets"
    )
    (warning,) = check_policy(text).warnings
    assert warning.path == "roles.dev"
    assert "its confidential requests take route 'all'" in warning.message


def test_routes_need_targets_and_fallback_on_known_kinds() -> None:
    text = MINIMAL.replace("{name: all, targets: [here]}", "{name: all, targets: []}")
    assert "must not be empty" in problem_at(text, "routes[0].targets").message
    text = with_extra("fallback_on: [error, timout]\n")
    assert "did you mean 'timeout'" in problem_at(text, "fallback_on[1]").message
    assert parse_policy(with_extra("fallback_on: []\n")).fallback_on == ()
