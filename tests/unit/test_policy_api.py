"""REST routes of the routing policy over the real app and database (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.testing import TestClient

from common.policy.document import MAX_DOCUMENT_BYTES, parse_policy
from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.services import ControlPlaneServices
from tests.policy_documents import EXAMPLE, MINIMAL, line_of

API = "/api/v1"
TEXT = {"Content-Type": "application/yaml"}
UNKNOWN_LEVEL = MINIMAL.replace("max_level: internal", "max_level: secretish")
CARD = "4111 1111 1111 1111"


@dataclass
class Api:
    client: TestClient[Any]
    services: ControlPlaneServices
    keys: dict[Role, str]

    def call(self, method: str, path: str, role: Role = Role.ADMIN, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kw.pop("headers", {})}
        return self.client.request(method, f"{API}{path}", headers=headers, **kw)

    def apply(self, document: str | bytes, role: Role = Role.ADMIN, **kw: Any) -> Any:
        return self.call("PUT", "/policy", role, content=document, headers=TEXT, **kw)

    def explain(self, body: Any, role: Role = Role.VIEWER) -> Any:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.call("POST", "/policy/explain", role, content=content)


@pytest.fixture
def api(database: Database) -> Iterator[Api]:
    services = ControlPlaneServices.build(database)
    keys = {role: services.api_keys.create(f"{role.value}-user", role)[0] for role in Role}
    with TestClient(create_app(services, max_request_bytes=16 * 1024)) as client:
        yield Api(client, services, keys)


def test_apply_show_and_list_versions(api: Api) -> None:
    assert api.call("GET", "/policy").status_code == 404
    # Larger than the app's 16 KiB limit for other routes: the policy routes take 1 MiB.
    example = EXAMPLE.read_text(encoding="utf-8") + "# " + "x" * 20_000 + "\n"
    first = api.apply(MINIMAL)
    assert first.status_code == 201, first.text
    assert first.json()["version"] == 1
    assert first.json()["created"] is True
    assert first.json()["digest"] == parse_policy(MINIMAL).digest
    second = api.apply(example, params={"source": "routing-policy.yaml"})
    assert (second.status_code, second.json()["version"]) == (201, 2)
    again = api.apply(example)
    assert (again.status_code, again.json()["version"], again.json()["created"]) == (200, 2, False)
    live = api.call("GET", "/policy", Role.VIEWER).json()
    assert (live["version"], live["document"], live["created_by"]) == (2, example, "admin-user")
    listed = api.call("GET", "/policy/versions", Role.OPERATOR).json()["versions"]
    assert [(v["version"], "document" in v) for v in listed] == [(2, False), (1, False)]
    assert api.call("GET", "/policy/versions/1").json()["document"] == MINIMAL
    assert api.call("GET", "/policy/versions/9").status_code == 404
    assert api.call("GET", "/policy/versions/0").status_code == 400
    assert api.call("GET", "/policy/versions/x").status_code in (400, 404)
    assert api.call("GET", "/policy/versions", params={"limit": 0}).status_code == 400


def test_only_an_admin_applies_and_denials_are_audited(api: Api) -> None:
    for role in (Role.OPERATOR, Role.VIEWER, Role.ANALYST):
        response = api.apply(MINIMAL, role)
        assert response.status_code == 403, role
    assert api.call("GET", "/policy").status_code == 404
    denied = [e for e in api.services.audit.list() if e.outcome == "denied"]
    assert {e.action for e in denied} == {"policy.apply"}
    assert api.client.put(f"{API}/policy", content=MINIMAL).status_code == 401


def test_validate_answers_warnings_or_problems_with_places(api: Api) -> None:
    ok = api.call("POST", "/policy/validate", Role.VIEWER, content=MINIMAL)
    assert ok.status_code == 200
    assert ok.json() == {"valid": True, "digest": parse_policy(MINIMAL).digest, "warnings": []}
    bad = api.call(
        "POST", "/policy/validate", Role.VIEWER, content=UNKNOWN_LEVEL, params={"source": "p.yaml"}
    )
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert error["code"] == "invalid_policy"
    [problem] = [p for p in error["problems"] if "secretish" in p["message"]]
    assert problem["path"] == "roles.dev.max_level"
    assert problem["line"] == line_of(UNKNOWN_LEVEL, "secretish")
    assert problem["column"] > 0
    assert "p.yaml:" in error["message"]
    assert api.call("GET", "/policy").status_code == 404  # validating applies nothing


@pytest.mark.parametrize(
    "document",
    [
        UNKNOWN_LEVEL,
        b"",
        b"\xff\xfe\x00junk",
        b"{" * 5000,
        b"version: 1\nroles: &a [*a, *a, *a]\n",
        "version: 1\n" + "\n".join(f"k{i}: [" + "x, " * 50 + "]" for i in range(2000)),
    ],
)
def test_an_invalid_apply_is_422_and_the_live_policy_stays(api: Api, document: Any) -> None:
    assert api.apply(MINIMAL).status_code == 201
    response = api.apply(document)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["problems"]
    live = api.call("GET", "/policy").json()
    assert (live["version"], live["document"]) == (1, MINIMAL)


def test_bodies_are_bounded(api: Api) -> None:
    too_big = b"# " + b"x" * MAX_DOCUMENT_BYTES
    assert api.apply(too_big).status_code == 413
    assert api.call("POST", "/policy/validate", content=too_big).status_code == 413
    # Exactly at the limit is read, and refused for what it is (a comment is no policy).
    at_limit = b"#" + b"x" * (MAX_DOCUMENT_BYTES - 1)
    response = api.call("POST", "/policy/validate", content=at_limit)
    assert response.status_code == 422
    huge = {"prompt": "a" * (1024 * 1024 + 1), "role": "dev"}
    response = api.explain(huge)
    assert response.status_code == 400
    assert "more than 1048576 bytes" in response.json()["error"]["message"]
    assert api.explain(b"x" * (5 * 1024 * 1024)).status_code == 413


def test_explain_the_live_policy(api: Api) -> None:
    api.apply(EXAMPLE.read_text(encoding="utf-8"))
    prompt = f"Refund card {CARD} please"
    response = api.explain({"prompt": prompt, "role": "developer", "team": "support"})
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["policy"] == {"version": 1, "draft": False}
    assert view["level"] == "confidential"
    [finding] = view["findings"]
    assert finding == {
        "part": 0,
        "detector": "payment-cards",
        "kind": "payment_card",
        "level": "confidential",
        "start": prompt.index(CARD),
        "end": prompt.index(CARD) + len(CARD),
    }
    assert CARD not in response.text  # positions, never the value
    assert view["route"] == "confidential-on-premises"
    assert view["targets"] == ["site-big", "local-smol"]
    assert view["refusal"] == ""
    assert [c["target"] for c in view["candidates"]] == ["site-big", "local-smol"]
    # Messages: each content is one part; a declared level raises.
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    view = api.explain({"messages": messages, "role": "admin", "declared_level": "restricted"})
    assert view.json()["level"] == "restricted"
    assert view.json()["targets"] == ["local-smol"]
    public = api.explain({"prompt": "hello", "role": "developer"}).json()
    assert public["route"] == "developers-to-cloud"
    assert public["targets"][0] == "cloud-mini"
    refused = api.explain({"prompt": "hello", "role": "intruder"}).json()
    assert refused["refusal"]
    assert refused["targets"] == []


def test_explain_a_draft_without_a_live_policy(api: Api) -> None:
    view = api.explain({"prompt": "hello", "role": "dev", "document": MINIMAL}).json()
    assert view["policy"] == {"version": None, "draft": True}
    assert (view["route"], view["targets"]) == ("all", ["here"])
    no_policy = api.explain({"prompt": "hello", "role": "dev"}).json()
    assert no_policy["policy"] == {"version": None, "draft": False}
    assert no_policy["targets"] == []
    assert "no policy" in " ".join(no_policy["reasons"])
    invalid = api.explain({"prompt": "hello", "role": "dev", "document": UNKNOWN_LEVEL})
    assert invalid.status_code == 422
    assert invalid.json()["error"]["problems"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty"),
        (b"[1]", "JSON object"),
        (b"{" * 100_000, "not valid JSON"),
        ({"role": "dev"}, "exactly one of 'prompt' and 'messages'"),
        ({"prompt": "a", "messages": [], "role": "dev"}, "exactly one"),
        ({"prompt": 5, "role": "dev"}, "'prompt' must be a string"),
        ({"prompt": "a"}, "'role' is required"),
        ({"prompt": "a", "role": ""}, "must not be empty"),
        ({"prompt": "a", "role": "x" * 64}, "longer than 63"),
        ({"prompt": "a", "role": "dev\x1b[31m"}, "control characters"),
        ({"prompt": "a", "role": "dev", "team": 3}, "'team' must be a string"),
        ({"prompt": "a", "role": "dev", "evil": 1}, "unknown field 'evil'"),
        ({"messages": "hi", "role": "dev"}, "non-empty array"),
        ({"messages": [{"content": 1}], "role": "dev"}, "'messages[0].content'"),
        ({"messages": [{"content": ""}] * 1001, "role": "dev"}, "more than 1000"),
        ({"prompt": "a", "role": "dev", "document": {"version": 1}}, "'document' must be"),
        ({"prompt": "a", "role": "dev", "model": "m" * 201}, "longer than 200"),
    ],
)
def test_explain_refuses_malformed_requests(api: Api, body: Any, message: str) -> None:
    response = api.explain(body)
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]["message"]


def test_explain_classifies_hostile_prompts_safely(api: Api) -> None:
    api.apply(EXAMPLE.read_text(encoding="utf-8"))
    spaced = "card: ４１１１ １１１１ １１１１ １１１１"  # full-width digits
    junk = "".join(chr(c) for c in range(1, 0x3000, 7)) + "\ud800"
    for prompt in (spaced, junk, "EMP-123456 " * 20_000):
        response = api.explain({"prompt": prompt, "role": "developer"})
        assert response.status_code == 200, response.text
        view = response.json()
        assert view["level"] in ("internal", "confidential", "restricted", "public")
        for candidate in view["candidates"]:
            if candidate["target"].startswith("cloud") and view["level"] != "public":
                assert view["level"] == "internal" or not candidate["allowed"]
    assert api.explain({"prompt": spaced, "role": "developer"}).json()["level"] == "confidential"
    unknown_declared = api.explain({"prompt": "a", "role": "developer", "declared_level": "top"})
    assert unknown_declared.status_code == 200
    assert "declared level" in unknown_declared.json()["refusal"]
