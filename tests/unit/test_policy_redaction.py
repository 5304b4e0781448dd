"""Masking detector findings before a cloud call: spans, merging, base64 runs, failing closed."""

from __future__ import annotations

import base64
import random

import pytest

from common.policy.detectors import DetectorFailure, Finding
from common.policy.policy_model import (
    BuiltinDetector,
    LocalTarget,
    Policy,
    Role,
    Route,
)
from common.policy.redaction import RedactionError, mask, redact
from common.policy.routing import Caller, Classification, PartFinding, PolicyEngine
from tests.sensitive_corpus import aws_key_id, private_key_pem, valid_card

KINDS = ("payment_card", "iban", "us_ssn", "email", "private_key", "cloud_access_key", "secret")


def engine() -> PolicyEngine:
    policy = Policy(
        detectors=tuple(
            BuiltinDetector(name=kind.replace("_", "-"), level="confidential", builtin=kind)
            for kind in KINDS
        ),
        roles=(Role(name="dev", max_level="restricted", min_level="public", targets=("*",)),),
        targets=(LocalTarget(name="here", model="smol", max_level="restricted"),),
        routes=(Route(name="all", targets=("here",)),),
    )
    return PolicyEngine(policy)


def classified(*parts: str) -> Classification:
    return engine().classify(parts, Caller(role="dev"))


def found(part: int, start: int, end: int, detector: str = "d") -> PartFinding:
    return PartFinding(part, Finding(detector, "regex", "confidential", start, end))


def by_hand(*findings: PartFinding) -> Classification:
    return Classification("confidential", findings, (), ())


def test_a_detected_card_is_masked_and_the_rest_kept() -> None:
    card = valid_card(random.Random(1))
    text = f"Please charge {card} today."
    result = redact([text, "no secrets here"], classified(text, "no secrets here"))
    assert result.parts == ("Please charge [REDACTED:payment-card] today.", "no secrets here")
    assert result.masked == 1


def test_several_findings_in_several_parts_are_each_masked() -> None:
    card = valid_card(random.Random(2))
    parts = [f"card {card} and mail bob@example.com", "key AKIAIOSFODNN7EXAMPLE ok"]
    result = redact(parts, classified(*parts))
    assert card not in result.parts[0]
    assert "bob@example.com" not in result.parts[0]
    assert result.parts[0].startswith("card [REDACTED:payment-card] and mail [REDACTED:")
    assert "AKIAIOSFODNN7EXAMPLE" not in result.parts[1]
    assert result.parts[1].endswith(" ok")


def test_overlapping_and_adjacent_spans_become_one_mask_named_after_each_detector() -> None:
    text = "01 34 67 9a cd"
    findings = by_hand(found(0, 3, 6, "b"), found(0, 1, 4, "a"), found(0, 6, 8, "c"))
    assert redact([text], findings).parts == ("0[REDACTED:a,b,c] 9a cd",)


def test_spans_apart_are_replaced_with_their_offsets_kept() -> None:
    text = "aa XX bb YYYY cc"
    findings = by_hand(found(0, 9, 13, "y"), found(0, 3, 5, "x"))
    result = redact([text], findings)
    assert result.parts == ("aa [REDACTED:x] bb [REDACTED:y] cc",)
    assert result.masked == 2


def test_a_span_inside_a_base64_run_masks_the_whole_run() -> None:
    secret = base64.b64encode(b"password=hunter2-and-more-text").decode()
    text = f"config: {secret} end"
    start = text.index(secret) + 4  # a finding that covers only part of the run
    result = redact([text], by_hand(found(0, start, start + 8, "b64")))
    assert result.parts == ("config: [REDACTED:b64] end",)


def test_a_wrapped_base64_block_is_masked_over_all_its_lines() -> None:
    pem = private_key_pem(random.Random(3))
    body_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    body = "\n".join(body_lines)
    text = f"here:\n{body}\nthanks"
    middle = text.index(body_lines[1])
    result = redact([text], by_hand(found(0, middle, middle + 10, "key")))
    assert result.parts == ("here:\n[REDACTED:key]\nthanks",)


def test_a_real_base64_key_finding_leaves_nothing_of_the_run() -> None:
    key = aws_key_id(random.Random(4))
    encoded = base64.b64encode(f"aws key {key}".encode()).decode()
    text = f"decode this {encoded} please"
    classification = classified(text)
    assert classification.findings, "the detectors find the key inside base64"
    result = redact([text], classification)
    assert encoded not in result.parts[0]
    assert not any(piece in result.parts[0] for piece in (encoded[:8], encoded[-8:]))
    assert result.parts[0].startswith("decode this [REDACTED:")
    assert result.parts[0].endswith("] please")


def test_no_findings_leaves_the_parts_as_they_are() -> None:
    parts = ["hello", "world"]
    result = redact(parts, by_hand())
    assert result.parts == ("hello", "world")
    assert result.masked == 0


@pytest.mark.parametrize(
    ("finding", "message"),
    [
        (found(1, 0, 2), "names part 1, but the request has 1"),
        (found(-1, 0, 2), "names part -1"),
        (found(0, 3, 99), "outside part 0 of 5 characters"),
        (found(0, -1, 2), "spans -1..2"),
        (found(0, 3, 3), "spans 3..3"),
        (found(0, 4, 2), "spans 4..2"),
    ],
)
def test_a_finding_that_does_not_fit_its_part_fails_closed(
    finding: PartFinding, message: str
) -> None:
    with pytest.raises(RedactionError, match=message) as caught:
        redact(["hello"], by_hand(finding))
    assert "hello" not in str(caught.value)


def test_a_failed_detector_makes_redaction_impossible() -> None:
    classification = Classification(
        "restricted", (), (DetectorFailure("cards", "timed out after 50 ms"),), ()
    )
    with pytest.raises(RedactionError, match="detector cards failed"):
        redact(["4111 1111 1111 1111"], classification)


def test_the_mask_lists_at_most_four_detectors() -> None:
    assert mask(["b", "a", "a"]) == "[REDACTED:a,b]"
    assert mask(["f", "e", "d", "c", "b", "a"]) == "[REDACTED:a,b,c,d,+2]"


def test_many_findings_in_a_large_part_are_masked_quickly_and_exactly() -> None:
    unit = "x x x x x SECRET "
    text = unit * 20_000  # 340 KB, 20,000 findings
    findings = by_hand(*(found(0, i * 17 + 10, i * 17 + 16, "s") for i in range(20_000)))
    result = redact([text], findings)
    assert "SECRET" not in result.parts[0]
    assert result.masked == 20_000
    assert result.parts[0] == "x x x x x [REDACTED:s] " * 20_000


def test_hostile_text_around_a_finding_is_kept_verbatim() -> None:
    text = "\x00\ud800\u202e[REDACTED:fake]\ufeffTOKEN\U0001f600"
    start = text.index("TOKEN")
    result = redact([text], by_hand(found(0, start, start + 5, "t")))
    assert result.parts == ("\x00\ud800\u202e[REDACTED:fake]\ufeff[REDACTED:t]\U0001f600",)
