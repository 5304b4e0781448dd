"""Policy documents and helpers the routing policy tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.policy.document import PolicyError, PolicyProblem, parse_policy

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "routing-policy.yaml"

MINIMAL = """\
version: 1
roles:
  dev: {max_level: internal, targets: [here]}
targets:
  here: {type: local, model: smol}
routes:
  - {name: all, targets: [here]}
"""

CLOUD = """\
version: 1
roles:
  dev: {max_level: internal, targets: ["*"]}
targets:
  here: {type: local, model: smol}
  cloud:
    type: cloud
    base_url: https://api.example.com/v1
    model: mini
    price_per_1k_input: 0.1
    price_per_1k_output: 0.2
    max_level: internal
routes:
  - {name: all, targets: [cloud, here]}
"""


def problems(text: str | bytes) -> list[PolicyProblem]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, source="test.yaml")
    return caught.value.problems


def problem_at(text: str | bytes, path: str) -> PolicyProblem:
    """The one problem reported for `path` (the document may have others elsewhere)."""
    found = [problem for problem in problems(text) if problem.path == path]
    assert len(found) == 1, problems(text)
    return found[0]


def line_of(text: str, marker: str) -> int:
    return next(number for number, line in enumerate(text.splitlines(), 1) if marker in line)


def with_extra(extra: str, base: str = MINIMAL) -> str:
    return base + extra
