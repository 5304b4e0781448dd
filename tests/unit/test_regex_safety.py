"""Detector patterns: what compiles, what can backtrack without end, and how fast the check is."""

from __future__ import annotations

import time

import pytest
import regex

from common.policy.regex_safety import MAX_PATTERN_CHARS, check_pattern

CATASTROPHIC = [
    r"(a+)+$",
    r"(a|aa)*b",
    r"(\w+\s?)*$",
    r"^(a+)+b",
    r"(x+x+)+y",
    r"(a|a)*$",
    r"(\d+)*\w$",
    r"(?:a*)*$",
    r"(a*)*b",
    r"(\s*\w+)*$",
    r"(.*a){20}",
    r"(\w{1,10})+$",
    r"(?:\w+\s?){0,50}$",
    r"(?i)(A|a)+$",
    r"(?:[a-z]+|[0-9a-f]+)+!",
    r"EMP-(?:\d+)+X",
    r"(?P<x>a+)+$",
    r"(?>(a+)+)$",  # treated as a plain group: refused rather than reasoned about
    # the OWASP e-mail pattern
    r"^([a-zA-Z0-9])(([\-.]|[_]+)?([a-zA-Z0-9]+))*(@){1}[a-z0-9]+[.]{1}"
    r"(([a-z]{2,3})|([a-z]{2,3}[.]{1}[a-z]{2,3}))$",
]

ORDINARY = [
    r"EMP-\d{6}",
    r"\bEMP-\d{6}\b",
    r"\b[A-Z]{2}\d{2}(?:\s?[A-Z0-9]{4}){2,7}\b",
    r"(?i)project[\s_-]+(falcon|nightjar)",
    r"[\w.+-]+@[\w-]+(\.[\w-]+)+",
    r"(?:\d{1,3}\.){3}\d{1,3}",
    r"sk-[A-Za-z0-9]{32,}",
    r"(?:[A-Z][a-z]+ ){2,}[A-Z][a-z]+",
    r"\d+(?:,\d{3})*(?:\.\d+)?",
    r"(?m)^\s*#.*$",
    r"(?i)\bconfidential\b",
    r"\bACME-(?:PRJ|INT)-\d{4,6}\b",
    r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)",
    r"(?P<year>\d{4})-(?P=year)",
    r"\p{Lu}{2}\d+",
    r"[^\s@]+@[^\s@]+\.[^\s@]+",
    r"(?:foo|bar)+baz",
    r"\x41\u0042\N{LATIN SMALL LETTER A}",
    r"[[:alpha:]]+\d",
    r"\bpassword\s*[:=]\s*\S+",
    r"(?s)BEGIN.*?END",
    r"[a-z]{2,63}\.example\.com",
    r"(?:https?://)?(?:[\w-]+\.)+[a-z]{2,}(?:/\S*)?",
    r"(?#a comment)x[{}]y\{2\}",
]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_patterns_are_refused(pattern: str) -> None:
    problem = check_pattern(pattern)
    assert problem is not None
    assert "catastrophic" in problem


@pytest.mark.parametrize("pattern", ORDINARY)
def test_ordinary_patterns_pass(pattern: str) -> None:
    assert check_pattern(pattern) is None


def test_the_structural_check_names_the_spot() -> None:
    problem = check_pattern(r"ID-(\d+)+$")
    assert problem is not None
    assert "offset 4" in problem
    assert "'\\\\d+)+$'" in problem


def test_a_slow_pattern_the_structure_allows_is_caught_by_the_timed_probe() -> None:
    # Unrolled exactly ({8}), this is polynomial rather than exponential: the probe finds it.
    problem = check_pattern(r"(.*a){8}$")
    assert problem is not None
    assert "crafted" in problem


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("(", "does not compile"),
        ("[a-", "does not compile"),
        ("a{2,1}", "does not compile"),
        ("", "must not be empty"),
        ("a" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS}"),
        ("a|", "empty text"),
        (r"\b", "empty text"),
        ("x*", "empty text"),
        ("(?=x)", "empty text"),
        ("(?:secret){e<=1}", "fuzzy"),
        ("(?x) a b ", "verbose"),
        ("(?V1)[[a-z]--[aeiou]]", "VERSION1"),
        ("(?R)", "not allowed"),
        ("(a)(?1)", "not allowed"),
    ],
)
def test_refused_with_a_reason(pattern: str, expected: str) -> None:
    problem = check_pattern(pattern)
    assert problem is not None
    assert expected in problem


def test_the_check_is_fast_for_ordinary_patterns() -> None:
    check_pattern.cache_clear()
    started = time.perf_counter()
    for pattern in ORDINARY:
        check_pattern(pattern)
    assert time.perf_counter() - started < 1.0


def test_refused_patterns_really_are_slow_with_the_re_style_matcher() -> None:
    # The `regex` package defuses some nested quantifiers itself; Python's re does not,
    # so the structural refusal is not a false alarm.
    import re

    started = time.perf_counter()
    re.search(r"(a+)+$", "a" * 22 + "!")
    assert time.perf_counter() - started > 0.01


def test_accepted_patterns_compile_with_regex() -> None:
    for pattern in ORDINARY:
        regex.compile(pattern)


def test_patterns_too_large_to_analyse_are_refused() -> None:
    problem = check_pattern("(?:(?:[a-z]{8}-){8}:){8}")  # 8 * 8 * 9 character matchers
    assert problem is not None
    assert "too complex to check" in problem
