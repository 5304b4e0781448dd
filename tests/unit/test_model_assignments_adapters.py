"""LoRA adapters assigned with a registry model: checked against it, folded into desired states,
fit-checked, kept from deletion while assigned; every kind of bad input refused."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import select

from common.control import AdapterAssignment, ModelAssignment
from common.errors import Conflict, InvalidArgument, NotFound
from common.telemetry import Metric
from controlplane.db.database import Database
from controlplane.db.models import DesiredStateRecord, RegisteredModel
from controlplane.desired_state_checks import MAX_ADAPTERS
from controlplane.fit_check import MEMORY_AVAILABLE
from controlplane.model_registry import RegisteredModelView
from controlplane.services import ControlPlaneServices
from tests.unit.test_model_assignments import (
    GGUF,
    T0,
    Clock,
    MiB,
    add_model,
    assign,
    assignment_rows,
    audit,
    disk,
    enroll,
    generation,
    path_model,
    refused,
    report,
    served,
)

LORA_BYTES = 468_992  # what make_lora_adapter writes for the demo model (rank 4, q and v)


@pytest.fixture
def services(database: Database) -> ControlPlaneServices:
    return ControlPlaneServices.build(database, clock=Clock())


def add_adapter(
    services: ControlPlaneServices,
    name: str = "sql",
    version: str = "1",
    *,
    architecture: str = "llama",
    size: int = LORA_BYTES,
) -> RegisteredModelView:
    """A registry row as the import of a LoRA adapter writes it."""
    sha256 = hashlib.sha256(f"adapter {name}@{version}".encode()).hexdigest()
    gguf = {
        "architecture": architecture,
        "parameters": 230_400,
        "quantization": "F16",
        "size_bytes": size,
        "file_type": "adapter",
        "adapter_type": "lora",
        "lora_alpha": 8.0,
    }
    with services.db.session() as session:
        record = RegisteredModel(
            name=name,
            version=version,
            sha256=sha256,
            size_bytes=size,
            chunk_size=4 * MiB,
            chunk_sha256=[sha256],
            gguf=gguf,
            created_at=T0,
            created_by="test",
        )
        session.add(record)
        session.flush()
        return RegisteredModelView.of(record)


def adapters_of(services: ControlPlaneServices, agent_id: str, alias: str) -> dict[str, str]:
    """name -> sha256 of the adapters the agent's desired state gives `alias`."""
    [model] = [m for m in services.desired.current(agent_id).models if m.alias == alias]
    return {a.name: a.sha256 for a in model.adapters}


def test_an_adapter_row_reads_as_an_adapter(services: ControlPlaneServices) -> None:
    adapter = add_adapter(services)
    assert (adapter.kind, adapter.is_adapter, adapter.adapter_type) == ("adapter", True, "lora")
    assert (adapter.architecture, adapter.lora_alpha, adapter.context_length) == ("llama", 8.0, 0)
    model = add_model(services)  # stored before adapters existed: no file_type
    assert "file_type" not in GGUF
    assert (model.kind, model.is_adapter, model.adapter_type, model.lora_alpha) == (
        "model",
        False,
        "",
        0.0,
    )
    assert [m.name for m in services.models.list(kind="adapter")] == ["sql"]
    assert [m.name for m in services.models.list(kind="model")] == ["smollm2"]
    assert [m.name for m in services.models.list()] == ["smollm2", "sql"]
    with pytest.raises(InvalidArgument, match="a kind is one of model, adapter"):
        services.models.list(kind="lora")


# -- reaching agents --------------------------------------------------------------------------


def test_adapters_reach_the_desired_state_sorted_by_name(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    model = add_model(services)
    sql = add_adapter(services, "sql-lora")
    poems = add_adapter(services, "poems", size=2 * MiB)
    view = assign(
        services,
        "smollm2",
        "agent",
        agent,
        alias="smol",
        adapters={"sql": "sql-lora@1", "poet": f"sha256:{poems.sha256}"},
    )
    assert [(a.name, a.adapter) for a in view.adapters] == [("poet", poems), ("sql", sql)]
    state = services.desired.current(agent)
    assert state.models == (
        ModelAssignment(
            alias="smol",
            sha256=model.sha256,
            size_bytes=model.size_bytes,
            model_name="smollm2",
            model_version="1",
            adapters=(
                AdapterAssignment("poet", poems.sha256, 2 * MiB, "poems", "1"),
                AdapterAssignment("sql", sql.sha256, LORA_BYTES, "sql-lora", "1"),
            ),
        ),
    )
    # The record the agent is sent from: its JSON carries them too.
    with services.db.session() as session:
        record = session.exec(
            select(DesiredStateRecord).where(DesiredStateRecord.agent_id == agent)
        ).one()
        [stored] = record.spec["models"]
    assert [(a["name"], a["sha256"]) for a in stored["adapters"]] == [
        ("poet", poems.sha256),
        ("sql", sql.sha256),
    ]
    assert services.assignments.get(view.id).adapters == view.adapters
    assert [v.adapters for v in services.assignments.list()] == [view.adapters]
    [row] = assignment_rows(services)
    assert row.adapters == {"poet": poems.id, "sql": sql.id}


def test_site_and_selector_assignments_carry_their_adapters(
    services: ControlPlaneServices,
) -> None:
    gold = enroll(services, site="hq", labels={"tier": "gold"})
    plain = enroll(services, site="hq")
    add_model(services)
    sql = add_adapter(services)
    assign(services, "smollm2", "site", "hq", alias="chat")
    assign(services, "smollm2", "selector", {"tier": "gold"}, alias="chat", adapters={"q": "sql"})
    assert adapters_of(services, gold, "chat") == {"q": sql.sha256}  # the selector's wins
    assert adapters_of(services, plain, "chat") == {}
    # A label change re-resolves: the agent loses the selector's assignment and its adapter.
    services.fleet.set_labels(gold, {}, actor="admin")
    assert adapters_of(services, gold, "chat") == {}


def test_reassigning_changes_the_adapters(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    first = add_adapter(services, "sql", "1")
    second = add_adapter(services, "sql", "2")
    assign(services, "smollm2", "agent", agent, adapters={"sql": "sql@1"})
    before = generation(services, agent)
    assign(services, "smollm2", "agent", agent, adapters={"sql": "sql@1"})
    assert generation(services, agent) == before  # nothing changed: no new generation
    assign(services, "smollm2", "agent", agent, adapters={"sql": "sql"})  # the newest: 2
    assert adapters_of(services, agent, "smollm2") == {"sql": second.sha256}
    assign(services, "smollm2", "agent", agent, adapters={"sql": "sql@1", "old": "sql@1"})
    assert adapters_of(services, agent, "smollm2") == {"old": first.sha256, "sql": first.sha256}
    assign(services, "smollm2", "agent", agent)
    assert adapters_of(services, agent, "smollm2") == {}
    assert generation(services, agent) == before + 3
    assert len(assignment_rows(services)) == 1


def test_path_models_stay_beside_a_model_with_adapters(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    sql = add_adapter(services)
    assign(services, "smollm2", "agent", agent, alias="chat", adapters={"sql": "sql"})
    with services.db.session() as session:
        services.desired.set_models(
            session, agent, [path_model("local", "/models/local.gguf")], actor="admin"
        )
    assert served(services, agent) == {"local": "/models/local.gguf", "chat": "smollm2@1"}
    assert adapters_of(services, agent, "chat") == {"sql": sql.sha256}


def test_the_assignment_and_its_adapters_are_audited(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    sql = add_adapter(services)
    assign(services, "smollm2", "agent", agent, alias="smol", adapters={"q": "sql"})
    [event_] = audit(services)
    assert event_.detail["adapters"] == {"q": {"model": "sql@1", "sha256": sql.sha256}}


def count_statements(db: Database) -> Any:
    @contextmanager
    def counting() -> Iterator[list[str]]:
        seen: list[str] = []

        def count(*args: Any) -> None:
            seen.append(str(args[2]))

        event.listen(db.engine, "before_cursor_execute", count)
        try:
            yield seen
        finally:
            event.remove(db.engine, "before_cursor_execute", count)

    return counting()


def test_the_bulk_resolver_reads_adapters_in_the_same_few_queries(
    services: ControlPlaneServices,
) -> None:
    agents = [enroll(services, site="hq", labels={"n": str(i)}) for i in range(6)]
    add_model(services)
    add_model(services, "embed")
    for i in range(4):
        add_adapter(services, f"a{i}")
    assign(services, "smollm2", "site", "hq", adapters={f"x{i}": f"a{i}" for i in range(4)})
    assign(services, "embed", "selector", {"n": "1"}, adapters={"x": "a0"})

    def resolve(ids: list[str]) -> tuple[int, dict[str, Any]]:
        with services.db.session() as session, count_statements(services.db) as seen:
            found = services.assignments.models_for_agents(session, ids)
            return len(seen), dict(found)

    one, found_one = resolve(agents[:1])
    many, found_many = resolve(agents)
    assert one == many <= 4, (one, many)
    assert set(found_many) == set(agents)
    assert all(len(found_many[a][-1].adapters) == 4 for a in agents)  # smollm2, sorted last
    assert [m.alias for m in found_many[agents[1]]] == ["embed", "smollm2"]
    assert [a.name for a in found_many[agents[1]][0].adapters] == ["x"]
    assert found_one[agents[0]] == found_many[agents[0]]


# -- deleting ----------------------------------------------------------------------------------


def test_an_assigned_adapter_cannot_be_deleted(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    add_adapter(services)
    view = assign(services, "smollm2", "agent", agent, alias="smol", adapters={"q": "sql"})
    with pytest.raises(Conflict) as refusal:
        services.models.delete("sql", actor="admin")
    assert str(refusal.value) == (
        f"adapter sql@1 is assigned (agent {agent} as smol:q); remove those assignments first"
    )
    with pytest.raises(Conflict, match="model smollm2@1 is assigned"):
        services.models.delete("smollm2", actor="admin")
    services.assignments.unassign(view.id, actor="admin")
    services.models.delete("sql", actor="admin")
    services.models.delete("smollm2", actor="admin")
    assert services.models.list() == []


def test_an_adapter_deleted_while_it_is_being_assigned_is_not_assigned(
    services: ControlPlaneServices, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter is looked up, then the fit check runs outside any transaction: a deletion
    may land in between. The assignment's transaction finds the row gone and refuses."""
    agent = enroll(services)
    add_model(services)
    add_adapter(services)
    fit_check = services.assignments._fit_check

    def delete_first(*args: Any) -> tuple[str, ...]:
        services.models.delete("sql", actor="admin")
        return fit_check(*args)

    monkeypatch.setattr(services.assignments, "_fit_check", delete_first)
    with pytest.raises(Conflict, match=r"adapter\(s\) q \(sql@1\) were deleted meanwhile"):
        assign(services, "smollm2", "agent", agent, adapters={"q": "sql"})
    assert (assignment_rows(services), generation(services, agent)) == ([], 0)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ({"bad name": "sql"}, "an adapter name must be 1 to 63 characters"),
        ({"": "sql"}, "an adapter name must be"),
        ({"a:b": "sql"}, "an adapter name must be"),
        ({"x" * 64: "sql"}, "an adapter name must be"),
        ({"sql\n": "sql"}, "an adapter name must be"),
        ({5: "sql"}, "an adapter name must be"),
        ({"q": ""}, "adapter q: give its registry reference"),
        ({"q": 5}, "adapter q: give its registry reference"),
        ({"q": "sha256:abc"}, "adapter q: "),
        ({"q": "two words"}, "adapter q: a model name must be"),
        ({"q": "smollm2"}, "adapter q: smollm2@1 is a model, not a LoRA adapter"),
        ({"q": "gpt2-lora"}, "adapter q: gpt2-lora@1 is for gpt2 models but smollm2@1 is a llama"),
        ({f"a{i}": "sql" for i in range(MAX_ADAPTERS + 1)}, "at most 16 adapters per model"),
        (["sql"], "adapters must map adapter names to registry references"),
    ],
)
def test_bad_adapters_are_refused_and_change_nothing(
    services: ControlPlaneServices, adapters: Any, message: str
) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    add_adapter(services)
    add_adapter(services, "gpt2-lora", architecture="gpt2")
    with pytest.raises(InvalidArgument) as refusal:
        assign(services, "smollm2", "site", "hq", adapters=adapters)
    assert message in str(refusal.value)
    assert assignment_rows(services) == []
    assert generation(services, agent) == 0
    assert audit(services) == []


@pytest.mark.parametrize("ref", ["nosuch", "sql@9", "sha256:" + "0" * 64])
def test_an_unknown_adapter_is_not_found(services: ControlPlaneServices, ref: str) -> None:
    agent = enroll(services, site="hq")
    add_model(services)
    add_adapter(services)
    with pytest.raises(NotFound) as refusal:
        assign(services, "smollm2", "site", "hq", adapters={"ok": "sql", "q": ref})
    assert str(refusal.value) == f"adapter q: no registered adapter {ref}"
    assert (assignment_rows(services), generation(services, agent)) == ([], 0)


def test_an_adapter_is_not_a_model(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq")
    add_adapter(services)
    for ref in ("sql", "sql@1"):
        with pytest.raises(InvalidArgument) as refusal:
            assign(services, ref, "site", "hq")
        assert str(refusal.value).startswith("sql@1 is a LoRA adapter, not a model")
    assert (assignment_rows(services), generation(services, agent)) == ([], 0)


def test_as_many_adapters_as_allowed_are_accepted(services: ControlPlaneServices) -> None:
    agent = enroll(services)
    add_model(services)
    add_adapter(services)
    names = {f"a{i:02}": "sql" for i in range(MAX_ADAPTERS)}
    assign(services, "smollm2", "agent", agent, adapters=names)
    assert sorted(adapters_of(services, agent, "smollm2")) == sorted(names)


# -- the fit check -----------------------------------------------------------------------------


def test_the_adapters_count_in_the_fit_check(services: ControlPlaneServices) -> None:
    agent = enroll(services, site="hq", name="till-3")
    add_model(services)
    add_adapter(services, "big", size=40 * MiB)
    # 439.8 MiB for the model alone at 4096 tokens: it fits 450 MiB, with 40 MiB more it does not.
    report(services, agent, Metric(MEMORY_AVAILABLE, 450 * MiB), disk(50 * MiB + 100 * MiB))
    message = refused(services, "smollm2", "agent", agent, adapters={"big": "big"})
    assert "needs 479.8 MiB of memory (133.8 MiB weights" in message
    assert "disk" not in message
    view = assign(services, "smollm2", "agent", agent)
    assert view.adapters == ()
