"""Policy text: hostile YAML, malformed JSON, binary junk, sizes, and what errors quote."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from common.policy.document import (
    MAX_DOCUMENT_BYTES,
    PolicyError,
    parse_policy,
)
from tests.policy_documents import (
    CLOUD,
    MINIMAL,
    problem_at,
    problems,
    with_extra,
)

# -- hostile and malformed documents -------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("", "empty"),
        ("   \n# only a comment\n", "empty"),
        ("---\n", "empty"),
        ("- version: 1\n", "must be a mapping, not a list"),
        ("[1, 2]", "must be a mapping, not a list"),
        ("just text", "must be a mapping, not a string"),
        ("a: 1\n---\nb: 2\n", "one YAML document"),
        ("a: &x [1]\nb: *x\n", "anchors"),
        (
            "a: !!python/object/apply:os.system [echo hi]\n",
            "tags are not allowed (found '!!python/object/apply:os.system')",
        ),
        ("a: !custom 1\n", "tags are not allowed"),
        ("a: b: c\n", "not valid YAML"),
        ("a:\n\tb: 1\n", "not valid YAML"),
        ('{"a": 1', "the document ends early: the '{' on line 1 is never closed"),
        ('{"a": NaN}', "expected a value"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        ('{"a": ' + "[" * 30 + "]" * 30 + "}", "nested deeper than 10"),
        ("a: " + "[" * 30 + "]" * 30, "nested deeper than 10"),
        ("a: " + "9" * 50, "number too long"),
    ],
)
def test_malformed_documents_are_refused(document: str, expected: str) -> None:
    (problem,) = problems(document)
    assert expected in problem.message


def test_billion_laughs_are_refused_at_the_first_anchor() -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 10):
        previous, name = chr(ord("a") + index - 1), chr(ord("a") + index)
        lines.append(f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    started = time.perf_counter()
    (problem,) = problems("\n".join(lines))
    assert time.perf_counter() - started < 1
    assert (problem.line, problem.column) == (1, 4)


@pytest.mark.parametrize(
    ("data", "expected", "line"),
    [
        (b"version: 1\n\xff\xfe junk\n", "not UTF-8", 2),
        (b"version: 1\nname: \x00\x01\x02\n", "U+0000 is not allowed", 2),
        (bytes(range(256)), "not UTF-8", 2),
        (bytes(range(128)), "U+0000 is not allowed", 1),
        (b"\x7fELF\x02\x01\x01", "U+007F is not allowed", 1),
    ],
)
def test_binary_junk_is_refused_with_its_place(data: bytes, expected: str, line: int) -> None:
    (problem,) = problems(data)
    assert expected in problem.message
    assert problem.line == line


def test_a_utf8_bom_is_accepted() -> None:
    assert parse_policy(b"\xef\xbb\xbf" + MINIMAL.encode()) == parse_policy(MINIMAL)


def test_sizes_are_bounded() -> None:
    (problem,) = problems("#" * (MAX_DOCUMENT_BYTES + 1))
    assert "at most 1048576" in problem.message
    many_items = "a: [" + ",".join(["1"] * 50_001) + "]"
    assert "more than 50000 values" in problems(many_items)[0].message
    detectors = "".join(f"  - {{name: d{i}, builtin: email, level: internal}}\n" for i in range(65))
    assert "at most 64" in problem_at(with_extra("detectors:\n" + detectors), "detectors").message
    keywords = "[" + ", ".join(f"k{i}" for i in range(1001)) + "]"
    text = with_extra(f"detectors:\n  - {{name: d, keywords: {keywords}, level: internal}}\n")
    assert "at most 1000" in problem_at(text, "detectors[0].keywords").message
    long_word = with_extra(
        f"detectors:\n  - {{name: d, keywords: [{'k' * 201}], level: internal}}\n"
    )
    assert "at most 200" in problem_at(long_word, "detectors[0].keywords[0]").message
    long_name = MINIMAL.replace("name: all", "name: " + "r" * 64)
    assert "must be 1 to 63" in problem_at(long_name, "routes[0].name").message


def test_errors_never_echo_huge_values() -> None:
    huge = "x" * 100_000
    for text in (
        MINIMAL.replace("{max_level: internal,", f"{{max_level: {huge},"),
        MINIMAL.replace("routes:", f"{huge}: 1\nroutes:"),
        MINIMAL.replace("model: smol}", f"model: smol, type: {huge}}}").replace(
            "{type: local, ", "{"
        ),
    ):
        with pytest.raises(PolicyError) as caught:
            parse_policy(text)
        assert len(str(caught.value)) < 1000


def test_many_problems_are_reported_at_once() -> None:
    text = "version: 1\n" + "".join(f"unknown{i}: 1\n" for i in range(80))
    with pytest.raises(PolicyError) as caught:
        parse_policy(text)
    assert len(caught.value.problems) == 80 + 3  # and roles, targets, routes are missing
    assert "... and 33 more" in str(caught.value)


def test_duplicate_keys_are_refused_in_yaml_and_json() -> None:
    text = MINIMAL.replace("routes:", "  here: {type: local, model: other}\nroutes:")
    (problem,) = problems(text)
    assert problem.message == "duplicate key 'here' (first on line 5)"
    assert problem.line == 6
    as_json = '{"version": 1,\n "version": 1}'
    assert problems(as_json)[0].message == "duplicate key 'version' (first on line 1)"


def test_yes_and_no_are_strings_not_booleans() -> None:
    text = CLOUD.replace(
        "max_level: internal\nroutes", "max_level: internal\n    redact: yes\nroutes"
    )
    assert (
        "expected true or false, got a string" in problem_at(text, "targets.cloud.redact").message
    )
    levels = with_extra("levels: [no, yes]\ndefault_level: no\n").replace("internal", "yes")
    assert parse_policy(levels).levels == ("no", "yes")


def test_yaml_flow_style_at_the_top_is_yaml_not_json() -> None:
    flow = "{version: 1, roles: {dev: {max_level: internal, targets: [here]}},\n"
    flow += " targets: {here: {type: local, model: smol}}, routes: [{name: all, targets: [here]}]}"
    assert parse_policy(flow) == parse_policy(MINIMAL)
    assert parse_policy(json.dumps(yaml.safe_load(MINIMAL))) == parse_policy(MINIMAL)
    assert "not valid JSON" in problems('{"version": 1,, "x": 2}')[0].message
