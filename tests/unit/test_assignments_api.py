"""REST routes of model assignments and rollouts over the real app and database (SQLite, PG)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from litestar.testing import TestClient

from common.control import AgentStatus, ItemState, ItemStatus, ModelAssignment
from common.telemetry import Metric, Sample, SequencedSample, TelemetryBatch
from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.fit_check import DISK_FREE, MEMORY_AVAILABLE
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices
from tests.unit.test_controlplane_api import enroll
from tests.unit.test_model_assignments import SIZE, add_model
from tests.unit.test_model_assignments_adapters import LORA_BYTES, add_adapter

MAX_REQUEST_BYTES = 16 * 1024
API = "/api/v1"
MiB = 1024**2
VIEW_FIELDS = {
    "id",
    "model",
    "target",
    "alias",
    "adapters",
    "context_length",
    "gpu_layers",
    "threads",
    "queue_depth",
    "agents",
    "fit_unchecked",
    "created_at",
    "created_by",
}
ROLLOUT_FIELDS = {
    "assignment_id",
    "agent_id",
    "agent_name",
    "agent_state",
    "alias",
    "model",
    "sha256",
    "state",
    "bytes_done",
    "bytes_total",
    "rate_bytes_per_s",
    "error",
    "serving_sha256",
}


@dataclass
class Api:
    client: TestClient[Any]
    services: ControlPlaneServices
    keys: dict[Role, str]

    def call(self, method: str, path: str, role: Role | None = Role.OPERATOR, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.keys[role]}"
        return self.client.request(method, f"{API}{path}", headers=headers, **kw)

    def assign(self, role: Role = Role.OPERATOR, **body: Any) -> Any:
        return self.call("POST", "/assignments", role, json=body)

    def assignments(self) -> list[dict[str, Any]]:
        response = self.call("GET", "/assignments", Role.VIEWER)
        assert response.status_code == 200, response.text
        return list(response.json()["assignments"])

    def rollouts(self) -> list[dict[str, Any]]:
        response = self.call("GET", "/rollouts", Role.VIEWER)
        assert response.status_code == 200, response.text
        rows = list(response.json()["rollouts"])
        assert all(set(row) == ROLLOUT_FIELDS for row in rows)
        return rows

    def denials(self) -> list[tuple[str, str, str]]:
        return [
            (e.actor, e.action, e.target)
            for e in self.services.audit.list()
            if e.outcome == "denied"
        ]


@pytest.fixture
def api(database: Database) -> Iterator[Api]:
    services = ControlPlaneServices.build(database)
    keys = {role: services.api_keys.create(f"{role.value}-user", role)[0] for role in Role}
    with TestClient(create_app(services, max_request_bytes=MAX_REQUEST_BYTES)) as client:
        yield Api(client, services, keys)


@pytest.fixture
def model(api: Api) -> RegisteredModelView:
    return add_model(api.services)


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    message = str(body["error"]["message"])
    assert message
    assert "\n" not in message
    return message


def report(api: Api, agent_id: str, status: AgentStatus) -> None:
    api.services.fleet.record_status(agent_id, status)


def item(sha256: str, state: ItemState, alias: str = "chat", **fields: Any) -> ItemStatus:
    return ItemStatus("model", alias, state, sha256=sha256, **fields)


# -- creating, listing, deleting -------------------------------------------------------------


def test_create_answers_201_with_the_assignment(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services, site="hq")
    response = api.assign(
        model="smollm2@1",
        agent=agent,
        alias="smol",
        context_length=2048,
        gpu_layers=0,
        threads=2,
        queue_depth=4,
    )
    assert response.status_code == 201, response.text
    view = response.json()
    assert set(view) == VIEW_FIELDS
    assert isinstance(view["id"], int)
    assert view["model"] == {
        "name": "smollm2",
        "version": "1",
        "digest": f"sha256:{model.sha256}",
        "size_bytes": SIZE,
    }
    assert view["target"] == {"kind": "agent", "value": agent}
    assert (view["alias"], view["context_length"], view["gpu_layers"]) == ("smol", 2048, 0)
    assert (view["threads"], view["queue_depth"]) == (2, 4)
    assert (view["agents"], view["fit_unchecked"]) == ([agent], [agent])
    assert view["adapters"] == []
    assert view["created_by"] == "operator-user"
    assert view["created_at"].endswith("Z")
    assert api.assignments() == [{**view, "fit_unchecked": []}]
    state = api.services.desired.current(agent)
    assert [(m.alias, m.sha256, m.threads) for m in state.models] == [("smol", model.sha256, 2)]


def test_site_and_selector_targets_and_defaults(api: Api, model: RegisteredModelView) -> None:
    gold = enroll(api.services, site="hq", labels={"tier": "gold", "zone": "eu"})
    plain = enroll(api.services, site="hq")
    by_site = api.assign(model="smollm2", site="hq")
    assert by_site.status_code == 201, by_site.text
    site_view = by_site.json()
    assert site_view["target"] == {"kind": "site", "value": "hq"}
    assert sorted(site_view["agents"]) == sorted([gold, plain])
    # Defaults: the model's name as alias and the service's serving parameters.
    assert (site_view["alias"], site_view["context_length"], site_view["gpu_layers"]) == (
        "smollm2",
        4096,
        0,
    )
    assert (site_view["threads"], site_view["queue_depth"]) == (0, 16)
    by_selector = api.assign(
        model=f"sha256:{model.sha256}", selector={"zone": "eu", "tier": "gold"}, alias="eu"
    )
    assert by_selector.status_code == 201, by_selector.text
    assert by_selector.json()["target"] == {"kind": "selector", "value": "tier=gold,zone=eu"}
    assert by_selector.json()["agents"] == [gold]
    assert [a["id"] for a in api.assignments()] == [site_view["id"], by_selector.json()["id"]]


def test_delete_removes_it_and_an_unknown_id_is_404(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services)
    created = api.assign(model="smollm2", agent=agent).json()
    generation = api.services.desired.current(agent).generation
    response = api.call("DELETE", f"/assignments/{created['id']}")
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert api.assignments() == []
    state = api.services.desired.current(agent)
    assert (state.generation, state.models) == (generation + 1, ())
    assert f"no model assignment {created['id']}" in error(
        api.call("DELETE", f"/assignments/{created['id']}"), 404
    )
    assert error(api.call("DELETE", "/assignments/987654321"), 404)
    for bad in ("0", "-1", str(2**63)):
        response = api.call("DELETE", f"/assignments/{bad}")
        assert response.status_code in (400, 404), (bad, response.text)
    assert error(api.call("DELETE", "/assignments/abc"), 404)  # no such route
    # The model may go once nothing is assigned.
    assert api.call("DELETE", "/models/smollm2@1").status_code == 204


def test_deleting_an_assigned_model_is_409(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services)
    assert api.assign(model="smollm2", agent=agent, alias="smol").status_code == 201
    message = error(api.call("DELETE", "/models/smollm2"), 409)
    assert f"agent {agent} as smol" in message
    assert len(api.services.models.list()) == 1


def test_setting_path_models_keeps_assigned_registry_models(
    api: Api, model: RegisteredModelView
) -> None:
    agent = enroll(api.services, site="hq")
    assert api.assign(model="smollm2", site="hq", alias="chat").status_code == 201
    body = {"models": [{"alias": "local", "path": "/models/local.gguf"}]}
    response = api.call("PUT", f"/agents/{agent}/desired-state/models", json=body)
    assert response.status_code == 200, response.text
    local, chat = response.json()["models"]
    assert (local["alias"], local["path"], "digest" in local) == (
        "local",
        "/models/local.gguf",
        False,
    )
    assert chat["alias"] == "chat"
    assert chat["path"] == ""
    assert chat["digest"] == model.digest
    assert chat["model"] == f"{model.name}@{model.version}"
    assert chat["size_bytes"] == model.size_bytes
    models = api.services.desired.current(agent).models
    assert [(m.alias, m.sha256) for m in models] == [("local", ""), ("chat", model.sha256)]
    assert api.rollouts()[0]["state"] == "pending"  # still wanted, not superseded


def test_a_model_that_cannot_fit_is_422_with_the_numbers(
    api: Api, model: RegisteredModelView
) -> None:
    agent = enroll(api.services, name="till-3")
    now = datetime.now(UTC)
    metrics = (Metric(MEMORY_AVAILABLE, 300 * MiB), Metric(DISK_FREE, 50 * MiB, {"path": "/"}))
    batch = TelemetryBatch((SequencedSample(1, Sample(now, metrics)),))
    assert api.services.telemetry.ingest(agent, batch).stored == 1
    response = api.assign(model="smollm2", agent=agent)
    message = error(response, 422)
    assert response.json()["error"]["code"] == "insufficient_resources"
    assert f"agent {agent} (till-3)" in message
    assert "needs 439.8 MiB of memory" in message
    assert "90.0 MiB KV cache" in message
    assert "but 300.0 MiB is available" in message
    assert "needs 93.8 MiB of disk but 50.0 MiB is free" in message
    assert api.assignments() == []
    assert api.services.desired.current(agent).generation == 0


def test_unknown_model_and_agent_are_404(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services)
    assert "no registered model" in error(api.assign(model="nosuch", agent=agent), 404)
    assert "no registered model" in error(api.assign(model="smollm2@7", agent=agent), 404)
    other = "3f0e1c2a-5b6d-4e7f-8a9b-0c1d2e3f4a5b"
    assert "no live agent" in error(api.assign(model="smollm2", agent=other), 404)
    assert api.assignments() == []


# -- bad bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"", "empty"),
        (b"[]", "JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"model": "smollm2", "site": "hq",}', "not valid JSON"),
    ],
)
def test_malformed_json_is_400(api: Api, body: bytes, message: str) -> None:
    enroll(api.services, site="hq")
    response = api.call("POST", "/assignments", content=body)
    assert message in error(response, 400)
    assert api.assignments() == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"site": "hq"}, "'model' is required"),
        ({"model": 5, "site": "hq"}, "'model' is required"),
        ({"model": None, "site": "hq"}, "'model' is required"),
        ({"model": "", "site": "hq"}, "'model' is required"),
        ({"model": "m" * 201, "site": "hq"}, "'model' is required"),
        ({"model": "smollm2"}, "exactly one of 'agent', 'site' or 'selector'"),
        ({"model": "smollm2", "site": "hq", "selector": {"a": "b"}}, "exactly one"),
        ({"model": "smollm2", "site": "hq", "agent": "x"}, "exactly one"),
        ({"model": "smollm2", "agent": 5}, "'agent' must be a string"),
        ({"model": "smollm2", "site": ["hq"]}, "'site' must be a string"),
        ({"model": "smollm2", "site": None}, "'site' must be a string"),
        ({"model": "smollm2", "selector": "tier=gold"}, "'selector' must be an object"),
        ({"model": "smollm2", "selector": {"tier": 5}}, "'selector' must be an object"),
        ({"model": "smollm2", "selector": {}}, "at least one key=value"),
        ({"model": "smollm2", "selector": {"tier": "a b"}}, "the value of label tier"),
        ({"model": "smollm2", "selector": {"t,x": "gold"}}, "a label key"),
        ({"model": "smollm2", "site": "hq", "alias": 5}, "'alias' must be a string"),
        ({"model": "smollm2", "site": "hq", "alias": "a/b"}, "a model alias"),
        ({"model": "smollm2", "site": "hq", "context_length": "big"}, "'context_length'"),
        ({"model": "smollm2", "site": "hq", "context_length": 0}, "'context_length'"),
        ({"model": "smollm2", "site": "hq", "context_length": 10}, "context_length"),
        ({"model": "smollm2", "site": "hq", "context_length": 10**30}, "'context_length'"),
        ({"model": "smollm2", "site": "hq", "gpu_layers": 1.5}, "'gpu_layers'"),
        ({"model": "smollm2", "site": "hq", "gpu_layers": -2}, "'gpu_layers'"),
        ({"model": "smollm2", "site": "hq", "threads": True}, "'threads' must be an integer"),
        ({"model": "smollm2", "site": "hq", "threads": 1025}, "'threads'"),
        ({"model": "smollm2", "site": "hq", "queue_depth": -1}, "'queue_depth'"),
        ({"model": "smollm2", "site": "hq", "color": "red"}, "unknown field 'color'"),
        ({"model": "smollm2", "site": "hq", "path": "/etc/passwd"}, "unknown field 'path'"),
        ({"model": "smollm2", "site": "hq west"}, "a site must be"),
        ({"model": "smollm2", "agent": "../../etc"}, "an agent id must be a UUID"),
        ({"model": "sha256:abc", "site": "hq"}, "sha256"),
        ({"model": "smollm2", "target_kind": "site", "site": "hq"}, "unknown field"),
    ],
)
def test_invalid_bodies_are_400_and_change_nothing(
    api: Api, model: RegisteredModelView, body: dict[str, Any], message: str
) -> None:
    agent = enroll(api.services, site="hq")
    assert message in error(api.assign(**body), 400)
    assert api.assignments() == []
    assert api.services.desired.current(agent).generation == 0


def test_an_oversized_body_is_413(api: Api, model: RegisteredModelView) -> None:
    enroll(api.services, site="hq")
    alias = "x" * (MAX_REQUEST_BYTES + 1)
    assert "too large" in error(api.assign(model="smollm2", site="hq", alias=alias), 413)
    assert api.assignments() == []


# -- who may -----------------------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_assign_and_the_denial_is_audited(
    api: Api, model: RegisteredModelView
) -> None:
    agent = enroll(api.services)
    # Refused before the body is read: a malformed body gets 403 as well.
    assert "viewer" in error(api.assign(Role.VIEWER, model="smollm2", agent=agent), 403)
    denied = api.call("POST", "/assignments", Role.VIEWER, content=b"{")
    assert denied.status_code == 403
    assert api.assignments() == []
    created = api.assign(model="smollm2", agent=agent).json()
    response = api.call("DELETE", f"/assignments/{created['id']}", Role.VIEWER)
    assert "viewer" in error(response, 403)
    assert [a["id"] for a in api.assignments()] == [created["id"]]
    assert sorted(api.denials()) == sorted(
        [
            ("viewer-user", "model.assign", "assignments"),
            ("viewer-user", "model.assign", "assignments"),
            ("viewer-user", "model.unassign", f"assignment:{created['id']}"),
        ]
    )
    assert api.call("GET", "/rollouts", Role.VIEWER).status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/assignments"),
        ("POST", "/assignments"),
        ("DELETE", "/assignments/1"),
        ("GET", "/rollouts"),
    ],
)
def test_no_key_is_401(api: Api, method: str, path: str) -> None:
    response = api.call(method, path, role=None, json={"model": "smollm2", "site": "hq"})
    assert "API key is required" in error(response, 401)
    wrong = api.call(method, path, role=None, headers={"Authorization": "Bearer opk_" + "A" * 40})
    assert error(wrong, 401)


# -- rollouts --------------------------------------------------------------------------------


def test_a_rollout_goes_from_pending_through_downloading_to_ready(
    api: Api, model: RegisteredModelView
) -> None:
    agent = enroll(api.services, name="till-3", site="hq")
    created = api.assign(model="smollm2", site="hq", alias="chat").json()
    [row] = api.rollouts()
    assert row == {
        "assignment_id": created["id"],
        "agent_id": agent,
        "agent_name": "till-3",
        "agent_state": "enrolled",
        "alias": "chat",
        "model": "smollm2@1",
        "sha256": model.sha256,
        "state": "pending",
        "bytes_done": 0,
        "bytes_total": SIZE,
        "rate_bytes_per_s": 0.0,
        "error": "",
        "serving_sha256": "",
    }
    # A report about another version of the alias is not this rollout's.
    other = "ab" * 32
    report(api, agent, AgentStatus(1, (item(other, ItemState.READY, serving_sha256=other),)))
    assert api.rollouts()[0]["state"] == "pending"

    downloading = item(
        model.sha256,
        ItemState.DOWNLOADING,
        bytes_done=8 * MiB,
        bytes_total=SIZE,
        rate_bytes_per_s=4.5e6,
        serving_sha256=other,
    )
    report(api, agent, AgentStatus(1, (downloading,)))
    [row] = api.rollouts()
    assert (row["state"], row["bytes_done"], row["bytes_total"]) == ("downloading", 8 * MiB, SIZE)
    assert (row["rate_bytes_per_s"], row["serving_sha256"]) == (4.5e6, other)

    report(api, agent, AgentStatus(1, (item(model.sha256, ItemState.VERIFYING),)))
    assert api.rollouts()[0]["state"] == "verifying"
    assert api.rollouts()[0]["bytes_total"] == SIZE  # the model's size when not reported

    ready = item(model.sha256, ItemState.READY, serving_sha256=model.sha256)
    report(api, agent, AgentStatus(1, (ready,)))
    [row] = api.rollouts()
    assert (row["state"], row["serving_sha256"], row["error"]) == (
        "ready",
        model.sha256,
        "",
    )


def test_a_failed_rollout_says_why_and_what_still_serves(
    api: Api, model: RegisteredModelView
) -> None:
    agent = enroll(api.services)
    api.assign(model="smollm2", agent=agent, alias="chat")
    old = "cd" * 32
    failed = item(
        model.sha256, ItemState.FAILED, error="failed to load: bad tensor", serving_sha256=old
    )
    report(api, agent, AgentStatus(1, (failed,)))
    [row] = api.rollouts()
    assert (row["state"], row["error"], row["serving_sha256"]) == (
        "failed",
        "failed to load: bad tensor",
        old,
    )


def test_superseded_when_a_more_specific_assignment_wins(api: Api) -> None:
    first = add_model(api.services, "chat", "1")
    second = add_model(api.services, "chat", "2")
    pinned = enroll(api.services, name="pinned", site="hq")
    other = enroll(api.services, name="other", site="hq")
    by_site = api.assign(model="chat@1", site="hq", alias="chat").json()
    by_agent = api.assign(model="chat@2", agent=pinned, alias="chat").json()
    rows = {(r["assignment_id"], r["agent_name"]): r for r in api.rollouts()}
    assert set(rows) == {
        (by_site["id"], "pinned"),
        (by_site["id"], "other"),
        (by_agent["id"], "pinned"),
    }
    assert rows[by_site["id"], "pinned"]["state"] == "superseded"
    assert rows[by_site["id"], "pinned"]["sha256"] == first.sha256
    assert rows[by_site["id"], "other"]["state"] == "pending"
    assert rows[by_agent["id"], "pinned"]["state"] == "pending"
    assert rows[by_agent["id"], "pinned"]["sha256"] == second.sha256
    # Removing the agent's own assignment brings the site's back.
    assert api.call("DELETE", f"/assignments/{by_agent['id']}").status_code == 204
    states = {(r["assignment_id"], r["agent_id"]): r["state"] for r in api.rollouts()}
    assert states == {(by_site["id"], pinned): "pending", (by_site["id"], other): "pending"}


def test_blocked_when_a_path_model_holds_the_alias(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services, site="hq")
    with api.services.db.session() as session:
        api.services.desired.set_models(
            session, agent, [ModelAssignment(alias="chat", path="/models/mine.gguf")], actor="t"
        )
    api.assign(model="smollm2", site="hq", alias="chat")
    [row] = api.rollouts()
    assert (row["agent_id"], row["state"]) == (agent, "blocked")
    assert "/models/mine.gguf" in row["error"]


def test_revoked_agents_leave_the_rollout(api: Api, model: RegisteredModelView) -> None:
    kept = enroll(api.services, site="hq")
    gone = enroll(api.services, site="hq")
    api.assign(model="smollm2", site="hq")
    assert len(api.rollouts()) == 2
    api.services.fleet.revoke(gone, actor="admin")
    assert [r["agent_id"] for r in api.rollouts()] == [kept]


# -- LoRA adapters -----------------------------------------------------------------------------


def test_an_assignment_with_adapters(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services, site="hq")
    sql = add_adapter(api.services, "sql-lora")
    poems = add_adapter(api.services, "poems", size=3 * MiB)
    response = api.assign(
        model="smollm2",
        agent=agent,
        alias="chat",
        adapters={"sql": "sql-lora@1", "poet": f"sha256:{poems.sha256}"},
    )
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["adapters"] == [
        {"name": "poet", "ref": "poems@1", "sha256": poems.sha256, "size_bytes": 3 * MiB},
        {"name": "sql", "ref": "sql-lora@1", "sha256": sql.sha256, "size_bytes": LORA_BYTES},
    ]
    assert api.assignments() == [{**view, "fit_unchecked": []}]
    [wanted] = api.services.desired.current(agent).models
    assert [(a.name, a.sha256) for a in wanted.adapters] == [
        ("poet", poems.sha256),
        ("sql", sql.sha256),
    ]
    state = api.call("GET", f"/agents/{agent}/desired-state", Role.VIEWER).json()
    assert state["models"][0]["adapters"] == [
        {
            "name": "poet",
            "digest": f"sha256:{poems.sha256}",
            "size_bytes": 3 * MiB,
            "adapter": "poems@1",
        },
        {
            "name": "sql",
            "digest": f"sha256:{sql.sha256}",
            "size_bytes": LORA_BYTES,
            "adapter": "sql-lora@1",
        },
    ]
    # The adapters are listed among the models, and kept while assigned.
    kinds = {m["name"]: m["kind"] for m in api.call("GET", "/models").json()["models"]}
    assert kinds == {"smollm2": "model", "sql-lora": "adapter", "poems": "adapter"}
    message = error(api.call("DELETE", "/models/sql-lora"), 409)
    assert message == (
        f"adapter sql-lora@1 is assigned (agent {agent} as chat:sql); "
        "remove those assignments first"
    )
    # Assigning again without them drops them.
    again = api.assign(model="smollm2", agent=agent, alias="chat", adapters={})
    assert (again.status_code, again.json()["adapters"]) == (201, [])
    assert api.services.desired.current(agent).models[0].adapters == ()
    assert api.call("DELETE", "/models/sql-lora").status_code == 204


def test_unknown_adapters_are_404(api: Api, model: RegisteredModelView) -> None:
    agent = enroll(api.services)
    add_adapter(api.services)
    for ref in ("nosuch", "sql@7", f"sha256:{'0' * 64}"):
        response = api.assign(model="smollm2", agent=agent, adapters={"x": ref})
        assert error(response, 404) == f"adapter x: no registered adapter {ref}"
    assert api.assignments() == []


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        (["sql"], "'adapters' must be an object of adapter names to model references"),
        ("sql", "'adapters' must be an object"),
        ({"q": 5}, "'adapters': adapter 'q' must name a registered adapter"),
        ({"q": None}, "'adapters': adapter 'q' must name a registered adapter"),
        ({"q": ""}, "'adapters': adapter 'q' must name a registered adapter"),
        ({"q": "x" * 201}, "'adapters': adapter 'q' must name a registered adapter"),
        ({f"a{i}": "sql" for i in range(17)}, "'adapters' has more than 16 entries"),
        ({"two words": "sql"}, "an adapter name must be 1 to 63 characters"),
        ({"a:b": "sql"}, "an adapter name must be"),
        ({"": "sql"}, "an adapter name must be"),
        ({"q": "sha256:abc"}, "adapter q: "),
        ({"q": "smollm2"}, "adapter q: smollm2@1 is a model, not a LoRA adapter"),
        ({"q": "gpt2-lora@1"}, "adapter q: gpt2-lora@1 is for gpt2 models but smollm2@1 is"),
    ],
)
def test_bad_adapters_are_400_and_change_nothing(
    api: Api, model: RegisteredModelView, adapters: Any, message: str
) -> None:
    agent = enroll(api.services, site="hq")
    add_adapter(api.services)
    add_adapter(api.services, "gpt2-lora", architecture="gpt2")
    assert message in error(api.assign(model="smollm2", site="hq", adapters=adapters), 400)
    assert api.assignments() == []
    assert api.services.desired.current(agent).generation == 0


def test_an_adapter_name_given_twice_is_400(api: Api, model: RegisteredModelView) -> None:
    enroll(api.services, site="hq")
    add_adapter(api.services)
    body = b'{"model": "smollm2", "site": "hq", "adapters": {"q": "sql", "q": "sql@1"}}'
    response = api.call("POST", "/assignments", content=body)
    assert error(response, 400) == "'adapters' names adapter(s) more than once: 'q'"
    assert api.assignments() == []


def test_an_adapter_cannot_be_assigned_as_the_model(api: Api) -> None:
    enroll(api.services, site="hq")
    add_adapter(api.services)
    message = error(api.assign(model="sql", site="hq"), 400)
    assert message.startswith("sql@1 is a LoRA adapter, not a model")
    assert api.assignments() == []
