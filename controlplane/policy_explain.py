"""Explaining a routing decision on a sample prompt: the request read strictly, the answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument
from common.policy.document import PolicyProblem
from common.policy.routing import Caller, Decision, PolicyEngine

MAX_PROMPT_BYTES = 1024 * 1024  # all parts together, UTF-8
MAX_MESSAGES = 1000
MAX_NAME_CHARS = 63  # role, team, declared level: names of the policy
MAX_MODEL_CHARS = 200
# A draft document (1 MiB) and prompts (1 MiB), with room for JSON escapes.
MAX_EXPLAIN_BODY_BYTES = 4 * 1024 * 1024
EXPLAIN_FIELDS = {"prompt", "messages", "role", "team", "declared_level", "model", "document"}


@dataclass(frozen=True)
class ExplainRequest:
    parts: tuple[str, ...]  # the prompt, or each message's content
    caller: Caller
    model: str = ""  # the model the caller asks for ("" none)
    document: str | None = None  # a draft policy; None: the live one


def _text(value: object, field: str, limit: int, *, empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"'{field}' must be a string")
    if len(value) > limit:
        raise InvalidArgument(f"'{field}' is longer than {limit} characters")
    if not value and not empty:
        raise InvalidArgument(f"'{field}' must not be empty")
    if not value.isprintable():
        raise InvalidArgument(f"'{field}' must not contain control characters")
    return value


def _optional(document: dict[str, Any], field: str, limit: int) -> str:
    value = document.get(field)
    return "" if value is None else _text(value, field, limit, empty=True)


def _parts(document: dict[str, Any]) -> tuple[str, ...]:
    if ("prompt" in document) == ("messages" in document):
        raise InvalidArgument("give exactly one of 'prompt' and 'messages'")
    if "prompt" in document:
        if not isinstance(document["prompt"], str):
            raise InvalidArgument("'prompt' must be a string")
        parts: tuple[str, ...] = (document["prompt"],)
    else:
        messages = document["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidArgument("'messages' must be a non-empty array")
        if len(messages) > MAX_MESSAGES:
            raise InvalidArgument(f"'messages' has more than {MAX_MESSAGES} entries")
        contents = []
        for index, message in enumerate(messages):
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, str):
                raise InvalidArgument(f"'messages[{index}].content' must be a string")
            contents.append(content)
        parts = tuple(contents)
    size = sum(len(p.encode("utf-8", "surrogatepass")) for p in parts)
    if size > MAX_PROMPT_BYTES:
        raise InvalidArgument(f"the prompt has more than {MAX_PROMPT_BYTES} bytes")
    return parts


def read_explain_request(document: dict[str, Any]) -> ExplainRequest:
    """The request `POST /policy/explain` takes; InvalidArgument naming the field."""
    unknown = sorted(set(document) - EXPLAIN_FIELDS)
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise InvalidArgument(
            f"unknown field {shown}; allowed: {', '.join(sorted(EXPLAIN_FIELDS))}"
        )
    if "role" not in document:
        raise InvalidArgument("'role' is required")
    declared = document.get("declared_level")
    draft = document.get("document")
    if draft is not None and not isinstance(draft, str):
        raise InvalidArgument("'document' must be a string: the policy's YAML or JSON text")
    return ExplainRequest(
        parts=_parts(document),
        caller=Caller(
            role=_text(document["role"], "role", MAX_NAME_CHARS),
            team=_optional(document, "team", MAX_NAME_CHARS),
            declared_level=None
            if declared is None
            else _text(declared, "declared_level", MAX_NAME_CHARS),
        ),
        model=_optional(document, "model", MAX_MODEL_CHARS),
        document=draft,
    )


def explain(engine: PolicyEngine, request: ExplainRequest) -> Decision:
    return engine.decide(request.parts, request.caller, requested=request.model)


def decision_view(decision: Decision) -> dict[str, Any]:
    """The decision as JSON: where each detector matched, never the text it matched."""
    classification = decision.classification
    return {
        "level": classification.level,
        "reasons": list(classification.reasons),
        "findings": [
            {
                "part": item.part,
                "detector": item.finding.detector,
                "kind": item.finding.kind,
                "level": item.finding.level,
                "start": item.finding.start,
                "end": item.finding.end,
            }
            for item in classification.findings
        ],
        "failures": [
            {"detector": failure.detector, "reason": failure.reason}
            for failure in classification.failures
        ],
        "route": decision.route,
        "candidates": [
            {"target": c.target, "allowed": c.allowed, "reason": c.reason}
            for c in decision.candidates
        ],
        "targets": list(decision.targets),
        "refusal": decision.refusal,
        "policy_digest": decision.policy_digest,
    }


def problem_view(problem: PolicyProblem) -> dict[str, Any]:
    return {
        "path": problem.path,
        "line": problem.line,
        "column": problem.column,
        "message": problem.message,
    }


def explanation_text(view: dict[str, Any]) -> list[str]:
    """The lines `outpost policy explain` prints for a decision view."""
    lines = [f"level:    {view['level'] or '-'}"]
    lines += [f"  because {reason}" for reason in view["reasons"]]
    for finding in view["findings"]:
        lines.append(
            f"  {finding['detector']} ({finding['kind']}, {finding['level']}) in part "
            f"{finding['part']} at {finding['start']}-{finding['end']}"
        )
    lines += [f"  detector {f['detector']} failed: {f['reason']}" for f in view["failures"]]
    lines.append(f"route:    {view['route'] or '-'}")
    for candidate in view["candidates"]:
        mark = "use " if candidate["allowed"] else "skip"
        lines.append(f"  {mark} {candidate['target']}: {candidate['reason']}")
    if view["refusal"]:
        lines.append(f"refused:  {view['refusal']}")
    else:
        lines.append(f"targets:  {', '.join(view['targets'])}")
    return lines
