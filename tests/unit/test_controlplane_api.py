"""The control plane's REST API over real services and a real database (SQLite, PostgreSQL)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from litestar.testing import TestClient

from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.services import ControlPlaneServices

MAX_REQUEST_BYTES = 16 * 1024
API = "/api/v1"


@dataclass(frozen=True)
class FakeCertificate:
    """What Fleet.enroll reads from an issued certificate."""

    serial: str = field(default_factory=lambda: uuid.uuid4().hex)
    not_before: datetime = field(default_factory=lambda: datetime.now(UTC))
    not_after: datetime = field(default_factory=lambda: datetime.now(UTC) + timedelta(days=30))
    pem: str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"


def enroll(
    services: ControlPlaneServices,
    name: str = "edge-1",
    site: str = "",
    labels: dict[str, str] | None = None,
) -> str:
    token, _ = services.tokens.create(
        site=site, labels=labels or {}, ttl=timedelta(hours=1), created_by="test"
    )
    agent_id = str(uuid.uuid4())
    with services.db.session() as session:
        grant = services.tokens.consume(session, token, agent_id=agent_id, now=datetime.now(UTC))
        services.fleet.enroll(
            session, agent_id=agent_id, name=name, grant=grant, certificate=FakeCertificate()
        )
    return agent_id


@dataclass
class Api:
    client: TestClient[Any]
    services: ControlPlaneServices
    keys: dict[Role, str]
    revoked: list[str]

    def call(self, method: str, path: str, role: Role | None = Role.ADMIN, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.keys[role]}"
        return self.client.request(method, f"{API}{path}", headers=headers, **kw)


@pytest.fixture
def api(database: Database) -> Iterator[Api]:
    services = ControlPlaneServices.build(database)
    keys = {role: services.api_keys.create(f"{role.value}-user", role)[0] for role in Role}
    revoked: list[str] = []
    app = create_app(services, max_request_bytes=MAX_REQUEST_BYTES, on_revoke=revoked.append)
    with TestClient(app) as client:
        yield Api(client, services, keys, revoked)


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    return str(body["error"]["message"])


# -- authentication and roles ---------------------------------------------------------------


def test_health_and_schema_need_no_key(api: Api) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    schema = api.client.get(f"{API}/schema/openapi.json")
    assert schema.status_code == 200
    assert f"{API}/agents/{{agent_id}}/desired-state/models" in schema.json()["paths"]


def test_schema_page_loads_nothing_from_outside(api: Api) -> None:
    page = api.client.get(f"{API}/schema")
    assert page.status_code == 200
    assert page.json()["info"]["title"] == "Outpost control plane"  # JSON, no HTML viewer
    assert "cdn." not in page.text


def test_missing_malformed_and_unknown_keys_are_401(api: Api) -> None:
    response = api.call("GET", "/agents", role=None)
    assert "API key is required" in error(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    unknown = "opk_" + "A" * 40
    for headers in (
        {"Authorization": f"Bearer {unknown}"},
        {"X-API-Key": unknown},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        assert error(api.call("GET", "/agents", role=None, headers=headers), 401)
    basic = {"Authorization": f"Basic {api.keys[Role.ADMIN]}"}
    assert "Bearer" in error(api.call("GET", "/agents", role=None, headers=basic), 401)


def test_x_api_key_header_is_accepted(api: Api) -> None:
    response = api.call("GET", "/agents", role=None, headers={"X-API-Key": api.keys[Role.VIEWER]})
    assert response.status_code == 200
    assert response.json() == {"agents": []}


def test_viewer_reads_but_cannot_change_and_the_denial_is_audited(api: Api) -> None:
    agent_id = enroll(api.services)
    assert api.call("GET", f"/agents/{agent_id}", role=Role.VIEWER).status_code == 200
    # Refused before the body is read: a malformed body still gets 403.
    response = api.call("PUT", f"/agents/{agent_id}/labels", role=Role.VIEWER, content=b"{")
    assert "viewer" in error(response, 403)
    denied = [e for e in api.services.audit.list() if e.outcome == "denied"]
    assert len(denied) == 1
    assert (denied[0].actor, denied[0].action) == ("viewer-user", "agent.set_labels")
    assert denied[0].target == f"agent:{agent_id}"
    assert api.services.fleet.get(agent_id).labels == {}


def test_operator_labels_and_assigns_but_cannot_create_tokens_or_revoke(api: Api) -> None:
    agent_id = enroll(api.services)
    response = api.call(
        "PUT", f"/agents/{agent_id}/labels", role=Role.OPERATOR, json={"labels": {"tier": "gold"}}
    )
    assert response.status_code == 200
    assert response.json()["labels"] == {"tier": "gold"}
    models = {"models": [{"alias": "m", "path": "/models/m.gguf"}]}
    put = api.call("PUT", f"/agents/{agent_id}/desired-state/models", Role.OPERATOR, json=models)
    assert put.status_code == 200
    error(api.call("POST", "/tokens", role=Role.OPERATOR, json={}), 403)
    error(api.call("POST", f"/agents/{agent_id}/revoke", role=Role.OPERATOR), 403)
    error(api.call("GET", "/audit", role=Role.OPERATOR), 403)
    error(api.call("PUT", f"/agents/{agent_id}/labels", Role.ANALYST, json={"labels": {}}), 403)
    actions = {e.action for e in api.services.audit.list() if e.outcome == "denied"}
    assert actions == {"token.create", "agent.revoke", "audit.list", "agent.set_labels"}
    assert api.services.fleet.get(agent_id).revoked_at is None


# -- join tokens ------------------------------------------------------------------------------


def test_admin_creates_a_token_shown_once(api: Api) -> None:
    body = {"site": "berlin-1", "labels": {"tier": "edge"}, "ttl_seconds": 3600}
    response = api.call("POST", "/tokens", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    token = created["token"]
    assert re.fullmatch(r"opj_[A-Za-z0-9_-]{32}", token)
    assert (created["site"], created["labels"]) == ("berlin-1", {"tier": "edge"})
    expires = datetime.fromisoformat(created["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    listing = api.call("GET", "/tokens", role=Role.VIEWER)
    assert listing.status_code == 200
    assert token not in listing.text
    [row] = listing.json()["tokens"]
    assert row["id"] == created["id"]
    assert "token" not in row
    # The token works once, for enrollment.
    with api.services.db.session() as session:
        grant = api.services.tokens.consume(
            session, token, agent_id=str(uuid.uuid4()), now=datetime.now(UTC)
        )
    assert grant.site == "berlin-1"


def test_token_defaults_and_revocation(api: Api) -> None:
    created = api.call("POST", "/tokens").json()  # no body at all: the defaults
    assert created["site"] == ""
    assert created["labels"] == {}
    assert api.call("DELETE", f"/tokens/{created['id']}").status_code == 204
    assert api.call("GET", "/tokens").json() == {"tokens": []}
    assert "no join token" in error(api.call("DELETE", f"/tokens/{created['id']}"), 404)
    error(api.call("DELETE", f"/tokens/{created['id']}", role=Role.OPERATOR), 403)


# -- agents -----------------------------------------------------------------------------------


def test_list_and_show_agents(api: Api) -> None:
    first = enroll(api.services, "edge-a", site="berlin", labels={"gpu": "none"})
    enroll(api.services, "edge-b", site="paris")
    agents = api.call("GET", "/agents").json()["agents"]
    assert [a["name"] for a in agents] == ["edge-a", "edge-b"]
    only = api.call("GET", "/agents", params={"site": "berlin"}).json()["agents"]
    assert [a["id"] for a in only] == [first]
    shown = api.call("GET", f"/agents/{first}").json()
    assert shown["labels"] == {"gpu": "none"}
    assert shown["state"] == "enrolled"
    assert set(shown) == {
        *("id", "name", "site", "labels", "state", "version", "hardware", "status"),
        *("observed_generation", "desired_generation", "enrolled_at", "last_seen_at"),
        *("capabilities", "revoked_at"),
    }
    assert shown["enrolled_at"].endswith("Z")
    assert shown["revoked_at"] is None


def test_unknown_agent_is_404(api: Api) -> None:
    missing = str(uuid.uuid4())
    for method, path, body in (
        ("GET", f"/agents/{missing}", None),
        ("GET", f"/agents/{missing}/desired-state", None),
        ("PUT", f"/agents/{missing}/labels", {"labels": {}}),
        ("PUT", f"/agents/{missing}/desired-state/models", {"models": []}),
        ("POST", f"/agents/{missing}/revoke", None),
    ):
        assert missing in error(api.call(method, path, json=body), 404)
    assert api.revoked == []


def test_desired_models_bump_the_generation(api: Api) -> None:
    agent_id = enroll(api.services, labels={"tier": "gold"})
    before = api.call("GET", f"/agents/{agent_id}/desired-state").json()
    models = [
        {"alias": "chat", "path": "/models/chat.gguf", "context_length": 2048, "gpu_layers": -1},
        {"alias": "small", "path": "/models/small.gguf", "queue_depth": 4},
    ]
    response = api.call("PUT", f"/agents/{agent_id}/desired-state/models", json={"models": models})
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["generation"] == before["generation"] + 1
    assert state["labels"] == {"tier": "gold"}
    assert state["models"][0] == {**models[0], "queue_depth": 16}
    assert state["models"][1] == {**models[1], "context_length": 4096, "gpu_layers": 0}
    assert api.call("GET", f"/agents/{agent_id}/desired-state").json() == state
    assert (
        api.call("GET", f"/agents/{agent_id}").json()["desired_generation"] == state["generation"]
    )
    assert api.services.desired.current(agent_id).generation == state["generation"]


def test_revoke_cuts_the_stream_and_freezes_the_agent(api: Api) -> None:
    agent_id = enroll(api.services)
    response = api.call("POST", f"/agents/{agent_id}/revoke")
    assert response.status_code == 200
    assert response.json()["state"] == "revoked"
    assert response.json()["revoked_at"]
    assert api.revoked == [agent_id]
    assert "revoked" in error(
        api.call("PUT", f"/agents/{agent_id}/labels", json={"labels": {"a": "b"}}), 409
    )
    models = {"models": [{"alias": "m", "path": "/m.gguf"}]}
    error(api.call("PUT", f"/agents/{agent_id}/desired-state/models", json=models), 409)
    assert api.call("POST", f"/agents/{agent_id}/revoke").status_code == 200  # idempotent


def test_audit_lists_newest_first_with_paging(api: Api) -> None:
    agent_id = enroll(api.services)
    api.call("PUT", f"/agents/{agent_id}/labels", json={"labels": {"a": "b"}})
    events = api.call("GET", "/audit", params={"limit": 2}).json()
    assert events["limit"] == 2
    assert len(events["events"]) == 2
    assert events["events"][0]["action"] == "agent.set_labels"
    assert events["events"][0]["actor"] == "admin-user"
    later = api.call("GET", "/audit", params={"limit": 2, "offset": 2}).json()["events"]
    assert {e["id"] for e in later}.isdisjoint(e["id"] for e in events["events"])
    assert "'limit'" in error(api.call("GET", "/audit", params={"limit": "many"}), 400)
    assert "limit" in error(api.call("GET", "/audit", params={"limit": 0}), 400)
    assert "offset" in error(api.call("GET", "/audit", params={"offset": -1}), 400)


# -- malformed and hostile input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"", "empty"),
        (b"[]", "JSON object"),
        (b'"labels"', "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_00 + b"]" * 100_00, None),  # deep nesting; over the size limit is fine too
        (b'{"labels": "tier=gold"}', "'labels' must be an object"),
        (b'{"labels": {"tier": 5}}', "'labels'"),
        (b'{"labels": {"tier": "gold"}, "extra": 1}', "'extra'"),
        (b'{"labels": null}', "'labels' must be an object"),
        (b"{}", "'labels' is required"),
    ],
)
def test_malformed_label_bodies_are_400(api: Api, body: bytes, message: str | None) -> None:
    agent_id = enroll(api.services)
    response = api.call("PUT", f"/agents/{agent_id}/labels", content=body)
    assert response.status_code in (400, 413), response.text
    if message is not None:
        assert message in error(response, 400)


@pytest.mark.parametrize(
    ("models", "field"),
    [
        ("m", "'models' must be an array"),
        ([5], "'models[0]' must be an object"),
        ([{"alias": "m"}], "'models[0].path' is required"),
        ([{"alias": "m", "path": "/m", "context_length": "big"}], "'models[0].context_length'"),
        ([{"alias": "m", "path": "/m", "gpu_layers": 1.5}], "'models[0].gpu_layers'"),
        ([{"alias": "m", "path": "/m", "queue_depth": True}], "'models[0].queue_depth'"),
        ([{"alias": "m", "path": "/m", "context_length": 10**30}], "'models[0].context_length'"),
        ([{"alias": "m", "path": "/m", "color": "red"}], "'models[0].color'"),
        ([{"alias": 7, "path": "/m"}], "'models[0].alias'"),
        ([{"alias": "a b", "path": "/m"}], "'models[0].alias'"),
        ([{"alias": "m", "path": "relative.gguf"}], "'models[0].path'"),
        ([{"alias": "m", "path": "/m\n.gguf"}], "'models[0].path'"),
        ([{"alias": "m", "path": "/a"}, {"alias": "m", "path": "/b"}], "twice"),
    ],
)
def test_invalid_models_are_400_naming_the_field(api: Api, models: object, field: str) -> None:
    agent_id = enroll(api.services)
    path = f"/agents/{agent_id}/desired-state/models"
    assert field in error(api.call("PUT", path, json={"models": models}), 400)
    assert api.services.desired.current(agent_id).generation == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ttl_seconds": "1h"}, "'ttl_seconds'"),
        ({"ttl_seconds": 1}, "'ttl_seconds'"),
        ({"ttl_seconds": 10**40}, "'ttl_seconds'"),
        ({"site": ["berlin"]}, "'site'"),
        ({"site": "berlin; DROP TABLE agents"}, "'site'"),
        ({"labels": {"k": "v"}, "token": "opj_mine"}, "'token'"),
    ],
)
def test_invalid_token_requests_are_400(api: Api, body: dict[str, Any], field: str) -> None:
    assert field in error(api.call("POST", "/tokens", json=body), 400)
    assert api.services.tokens.list() == []


def test_oversized_body_is_413(api: Api) -> None:
    agent_id = enroll(api.services)
    labels = {f"k{i}": "v" * 60 for i in range(400)}
    response = api.call("PUT", f"/agents/{agent_id}/labels", json={"labels": labels})
    assert "too large" in error(response, 413)


@pytest.mark.parametrize(
    "value",
    ["x" * 10_000, "line\nbreak", "'; DROP TABLE agents; --", "\u202egnp.exe", "nul\x00"],
)
def test_hostile_label_values_are_refused(api: Api, value: str) -> None:
    agent_id = enroll(api.services)
    response = api.call("PUT", f"/agents/{agent_id}/labels", json={"labels": {"note": value}})
    assert response.status_code in (400, 413), response.text
    assert "\n" not in response.json()["error"]["message"]
    assert api.services.fleet.get(agent_id).labels == {}


def test_sql_looking_text_is_stored_verbatim_where_allowed(api: Api) -> None:
    agent_id = enroll(api.services)
    path = "/models/x'); DROP TABLE agents; --.gguf"
    body = {"models": [{"alias": "m", "path": path}]}
    response = api.call("PUT", f"/agents/{agent_id}/desired-state/models", json=body)
    assert response.status_code == 200, response.text
    assert api.services.desired.current(agent_id).models[0].path == path
    hostile_site = api.call("GET", "/agents", params={"site": "' OR '1'='1"})
    assert hostile_site.json() == {"agents": []}
    assert len(api.call("GET", "/agents").json()["agents"]) == 1


def test_unknown_routes_and_methods_answer_json(api: Api) -> None:
    assert error(api.call("GET", "/nothing-here"), 404)
    assert error(api.call("PATCH", "/agents"), 405)


def test_site_wide_models(api: Api) -> None:
    first, second = enroll(api.services, site="hq"), enroll(api.services, site="hq")
    elsewhere = enroll(api.services, site="branch-1")
    body = {"models": [{"alias": "chat", "path": "/models/chat.gguf"}]}
    denied = api.call("PUT", "/sites/hq/desired-state/models", role=Role.VIEWER, json=body)
    assert denied.status_code == 403
    response = api.call("PUT", "/sites/hq/desired-state/models", role=Role.OPERATOR, json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"site": "hq", "updated": 2}
    for agent_id in (first, second):
        state = api.call("GET", f"/agents/{agent_id}/desired-state").json()
        assert [m["alias"] for m in state["models"]] == ["chat"]
    assert api.call("GET", f"/agents/{elsewhere}/desired-state").json()["models"] == []
    bad = api.call("PUT", "/sites/hq%0A/desired-state/models", json=body)
    assert bad.status_code == 400
    malformed = api.call("PUT", "/sites/hq/desired-state/models", json={"models": "all"})
    assert malformed.status_code == 400
