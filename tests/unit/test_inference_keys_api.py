"""REST routes of inference keys over the real app and database (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.policy.document import parse_policy
from controlplane.auth import Role, hash_key
from controlplane.inference_keys import INFERENCE_KEY_PATTERN
from tests.policy_documents import MINIMAL
from tests.unit.test_controlplane_api import Api, api, enroll, error

__all__ = ["api"]  # the fixture, shared

BODY = {"name": "search-app", "role": "developer", "team": "search"}


def create(api: Api, body: object = BODY, role: Role = Role.ADMIN) -> Any:
    return api.call("POST", "/inference-keys", role, content=json.dumps(body).encode())


def test_an_admin_creates_a_key_shown_once(api: Api) -> None:
    response = create(api)
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {
        "id",
        "key",
        "name",
        "prefix",
        "role",
        "team",
        "created_at",
        "created_by",
        "revoked_at",
        "warnings",
    }
    assert INFERENCE_KEY_PATTERN.fullmatch(body["key"])
    assert (body["role"], body["team"], body["prefix"]) == ("developer", "search", body["key"][:8])
    assert body["created_by"] == "admin-user"
    assert len(body["warnings"]) == 1  # no policy applied yet
    assert "no routing policy" in body["warnings"][0]
    listed = api.call("GET", "/inference-keys", Role.VIEWER).json()["inference_keys"]
    assert [k["id"] for k in listed] == [body["id"]]
    assert "key" not in listed[0]
    assert body["key"] not in json.dumps(listed)
    assert hash_key(body["key"]) not in json.dumps(listed)


def test_a_role_the_live_policy_has_gives_no_warning(api: Api) -> None:
    api.services.policies.apply(MINIMAL, actor="t")

    role = parse_policy(MINIMAL).roles[0].name
    body = create(api, {**BODY, "role": role}).json()
    assert body["warnings"] == []


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.ANALYST, Role.VIEWER])
def test_only_admins_create_and_revoke(api: Api, role: Role) -> None:
    assert "admin" in error(create(api, role=role), 403)
    key_id = create(api).json()["id"]
    assert error(api.call("DELETE", f"/inference-keys/{key_id}", role), 403)
    assert api.call("GET", "/inference-keys", role).status_code == 200


def test_revoke_hides_the_key_and_pushes_the_set(api: Api) -> None:
    agent = enroll(api.services)
    key_id = create(api).json()["id"]
    keys = api.services.desired.current(agent).inference_keys
    assert keys is not None
    assert [k.key_id for k in keys] == [str(key_id)]
    assert api.call("DELETE", f"/inference-keys/{key_id}").status_code == 204
    assert api.services.desired.current(agent).inference_keys == ()
    assert api.call("GET", "/inference-keys").json() == {"inference_keys": []}
    revoked = api.call("GET", "/inference-keys?include_revoked=true").json()["inference_keys"]
    assert revoked[0]["revoked_at"] is not None
    assert api.call("DELETE", f"/inference-keys/{key_id}").status_code == 204  # idempotent
    assert "no inference key" in error(api.call("DELETE", f"/inference-keys/{key_id + 9}"), 404)
    for bad in ("0", "-1", "abc", str(2**63), "1.5"):
        assert api.call("DELETE", f"/inference-keys/{bad}").status_code in (400, 404)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "a", "role": "r"},
        {**BODY, "extra": 1},
        {**BODY, "name": ""},
        {**BODY, "role": "a" * 64},
        {**BODY, "team": "has space"},
        {**BODY, "team": ["search"]},
        {**BODY, "role": None},
        {**BODY, "name": 7},
        [BODY],
        "text",
    ],
)
def test_malformed_bodies_are_400_and_create_nothing(api: Api, body: object) -> None:
    assert error(create(api, body), 400)
    assert api.services.inference_keys.list(include_revoked=True) == []


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b"[" * 10_000, b'{"name": "a"'])
def test_unparseable_bodies_are_400(api: Api, raw: bytes) -> None:
    response = api.call("POST", "/inference-keys", content=raw)
    assert error(response, 400)
    assert api.services.inference_keys.list(include_revoked=True) == []


def test_an_oversized_body_is_413(api: Api) -> None:
    huge = json.dumps({**BODY, "name": "a" * 100_000}).encode()
    assert error(api.call("POST", "/inference-keys", content=huge), 413)
    assert api.services.inference_keys.list(include_revoked=True) == []
