"""The model registry on real GGUF files, a real store and a real database (SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import col, select

from common.artifacts import manifest_of_file
from common.errors import Conflict, InvalidArgument, NotFound, Unavailable
from controlplane.db.database import Database
from controlplane.db.models import AuditEvent, ModelAssignmentRecord, RegisteredModel
from controlplane.model_registry import ModelRegistry, name_from_filename
from controlplane.model_store import BlobTooLarge, ModelStore
from controlplane.services import ControlPlaneServices
from tests.lora_adapters import make_lora_adapter, wrong_architecture_adapter
from tests.unit.test_gguf_info import copy_prefix, write_adapter, write_gguf

ADMIN = "admin-user"


@pytest.fixture
def registry(database: Database, tmp_path: Path) -> ModelRegistry:
    return ControlPlaneServices.build(database, model_store_dir=tmp_path / "models").models


def store_of(registry: ModelRegistry) -> ModelStore:
    return registry.store


def left_in_store(registry: ModelRegistry) -> list[str]:
    """Every file in blobs/ and tmp/."""
    root = store_of(registry).root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def file_blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(size):
            yield block


def audit_actions(db: Database) -> list[tuple[str, str]]:
    with db.session() as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
        return [(e.action, e.target) for e in events]


def assign(
    db: Database,
    model_id: int,
    target: str,
    alias: str = "smol",
    adapters: dict[str, int] | None = None,
) -> None:
    with db.session() as session:
        session.add(
            ModelAssignmentRecord(
                model_id=model_id,
                target_kind="agent",
                target=target,
                alias=alias,
                context_length=1024,
                gpu_layers=0,
                threads=0,
                queue_depth=16,
                created_at=datetime.now(UTC),
                created_by=ADMIN,
                adapters=adapters or {},
            )
        )


# -- the real demo model -----------------------------------------------------------------


def test_import_the_demo_model_by_path(
    registry: ModelRegistry, database: Database, demo_model: Path
) -> None:
    model = registry.import_file(demo_model, actor=ADMIN)
    sha = hashlib.sha256(demo_model.read_bytes()).hexdigest()
    assert (model.name, model.version) == ("SmolLM2-135M-Instruct.Q4_1", "1")
    assert (model.sha256, model.digest) == (sha, f"sha256:{sha}")
    assert model.size_bytes == demo_model.stat().st_size == 98_362_432
    assert (model.architecture, model.quantization) == ("llama", "Q4_1")
    assert model.context_length == 8192
    assert "<|im_start|>" in model.chat_template
    assert model.license == "apache-2.0"
    assert 130_000_000 < model.parameters < 140_000_000
    assert model.metadata["head_count_kv"] == 3
    assert model.kv_cache_bytes(1024) == 2 * 30 * 1024 * 3 * 64 * 2
    assert model.created_by == ADMIN
    assert registry.manifest(sha) == manifest_of_file(demo_model)
    assert registry.blob_path(sha).read_bytes()[:4] == b"GGUF"
    assert left_in_store(registry) == [f"blobs/{sha}", f"blobs/{sha}.manifest.json"]
    assert audit_actions(database) == [("model.import", "model:SmolLM2-135M-Instruct.Q4_1@1")]
    with database.session() as session:
        row = session.get(RegisteredModel, model.id)
        assert row is not None
        assert row.chunk_sha256 == list(manifest_of_file(demo_model).chunk_sha256)


def test_import_the_demo_model_as_a_stream(registry: ModelRegistry, demo_model: Path) -> None:
    model = registry.import_stream(
        file_blocks(demo_model, 65536), filename=demo_model.name, actor=ADMIN
    )
    assert model.name == "SmolLM2-135M-Instruct.Q4_1"
    assert (model.architecture, model.quantization, model.context_length) == ("llama", "Q4_1", 8192)
    again = asyncio.run(
        registry.import_stream_async(_async_blocks(demo_model), name=model.name, actor=ADMIN)
    )
    assert again == model  # the same bytes under the same name: the same record
    assert len(registry.list()) == 1


async def _async_blocks(path: Path) -> AsyncIterator[bytes]:
    for block in file_blocks(path):
        yield block


# -- LoRA adapters ------------------------------------------------------------------------


def test_import_a_lora_adapter_for_the_demo_model(
    registry: ModelRegistry, database: Database, demo_model: Path, tmp_path: Path
) -> None:
    path = make_lora_adapter(demo_model, tmp_path / "sql-lora.gguf", seed=1)
    adapter = registry.import_file(path, actor=ADMIN)
    assert (adapter.name, adapter.version, adapter.kind) == ("sql-lora", "1", "adapter")
    assert (adapter.architecture, adapter.adapter_type, adapter.lora_alpha) == ("llama", "lora", 8)
    assert adapter.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert adapter.size_bytes == path.stat().st_size
    assert (adapter.context_length, adapter.chat_template, adapter.quantization) == (0, "", "F16")
    assert registry.manifest(adapter.sha256) == manifest_of_file(path)
    # Names, versions and refs work as for models; the same bytes are the same record.
    again = registry.import_stream(file_blocks(path, 65536), filename=path.name, actor=ADMIN)
    assert again == adapter
    other = make_lora_adapter(demo_model, tmp_path / "other.gguf", seed=2)
    second = asyncio.run(
        registry.import_stream_async(_async_blocks(other), name="sql-lora", actor=ADMIN)
    )
    assert (second.version, second.kind) == ("2", "adapter")
    assert registry.get("sql-lora") == second
    assert registry.get(f"sha256:{adapter.sha256}") == adapter
    model = registry.import_file(write_gguf(tmp_path / "tiny.gguf"), actor=ADMIN)
    assert model.kind == "model"
    assert registry.list(kind="adapter") == [adapter, second]
    assert registry.list(kind="model") == [model]
    assert [m.ref for m in registry.list()] == ["sql-lora@1", "sql-lora@2", "tiny@1"]
    with database.session() as session:
        events = session.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
    assert [(e.target, e.detail["kind"]) for e in events] == [
        ("model:sql-lora@1", "adapter"),
        ("model:sql-lora@2", "adapter"),
        ("model:tiny@1", "model"),
    ]


def test_an_adapter_for_another_architecture_is_imported_as_such(
    registry: ModelRegistry, demo_model: Path, tmp_path: Path
) -> None:
    path = wrong_architecture_adapter(demo_model, tmp_path / "gpt2-lora.gguf")
    adapter = registry.import_file(path, actor=ADMIN)
    assert (adapter.kind, adapter.architecture) == ("adapter", "gpt2")


ONLY_LORA = "only LoRA adapters (adapter.type 'lora') can be registered"


@pytest.mark.parametrize(
    ("general_type", "adapter_type", "message"),
    [
        ("imatrix", "lora", "is a GGUF file of type 'imatrix': only models and LoRA adapters "),
        ("adapter", "control_vector", f"is a GGUF adapter of type 'control_vector': {ONLY_LORA}"),
        ("adapter", None, f"is a GGUF adapter without adapter.type: {ONLY_LORA}"),
    ],
)
def test_gguf_files_that_are_neither_model_nor_lora_are_refused(
    registry: ModelRegistry,
    tmp_path: Path,
    general_type: str,
    adapter_type: str | None,
    message: str,
) -> None:
    path = write_adapter(
        tmp_path / "odd.gguf", general_type=general_type, adapter_type=adapter_type
    )
    with pytest.raises(InvalidArgument) as refusal:
        registry.import_file(path, actor=ADMIN)
    assert str(refusal.value).startswith(f"{path} {message}")
    with pytest.raises(InvalidArgument) as refusal:
        registry.import_stream(file_blocks(path), name="odd", actor=ADMIN)
    assert str(refusal.value).startswith(f"the upload {message}")
    assert left_in_store(registry) == []
    assert registry.list() == []


def test_delete_is_refused_while_an_assignment_names_the_adapter(
    registry: ModelRegistry, database: Database, tmp_path: Path
) -> None:
    model = registry.import_file(write_gguf(tmp_path / "tiny.gguf"), actor=ADMIN)
    adapter = registry.import_file(write_adapter(tmp_path / "lora.gguf"), actor=ADMIN)
    assign(database, model.id, "agent-1", adapters={"sql": adapter.id, "also": adapter.id})
    assign(database, model.id, "agent-2", alias="plain")
    with pytest.raises(Conflict) as refused:
        registry.delete("lora", actor=ADMIN)
    assert str(refused.value) == (
        "adapter lora@1 is assigned (agent agent-1 as smol:also, agent agent-1 as smol:sql); "
        "remove those assignments first"
    )
    assert store_of(registry).has(adapter.sha256)
    with database.session() as session:
        for row in session.exec(select(ModelAssignmentRecord)).all():
            if row.target == "agent-1":
                session.delete(row)
    registry.delete("lora@1", actor=ADMIN)
    assert registry.list(kind="adapter") == []
    assert not store_of(registry).has(adapter.sha256)


# -- content addressing, names and versions ----------------------------------------------


def test_the_same_file_twice_is_one_blob_and_one_record(
    registry: ModelRegistry, database: Database, tmp_path: Path
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    first = registry.import_file(path, actor=ADMIN)
    second = registry.import_file(path, actor=ADMIN)
    assert second == first
    assert first.name == "tiny"
    assert len(registry.list()) == 1
    assert store_of(registry).blobs() == [first.sha256]
    assert len(audit_actions(database)) == 1  # nothing changed the second time
    # The same bytes under another name: a second record, still one blob.
    other = registry.import_file(path, name="tiny-copy", actor=ADMIN)
    assert (other.name, other.version, other.sha256) == ("tiny-copy", "1", first.sha256)
    assert store_of(registry).blobs() == [first.sha256]


def test_versions_count_up_per_name(registry: ModelRegistry, tmp_path: Path) -> None:
    files = [write_gguf(tmp_path / f"m{n}.gguf", context_length=256 * n) for n in (1, 2, 3, 4)]
    versions = [registry.import_file(f, name="m", actor=ADMIN).version for f in files[:2]]
    assert versions == ["1", "2"]
    assert registry.import_file(files[2], name="m", version="beta", actor=ADMIN).version == "beta"
    assert registry.import_file(files[3], name="m", actor=ADMIN).version == "3"
    assert registry.import_file(files[0], name="other", actor=ADMIN).version == "1"
    with pytest.raises(Conflict, match=r"m@2 exists already"):
        registry.import_file(files[3], name="m", version="2", actor=ADMIN)
    assert [(m.name, m.version) for m in registry.list()] == [
        ("m", "1"),
        ("m", "2"),
        ("m", "beta"),
        ("m", "3"),
        ("other", "1"),
    ]


def test_get_by_name_version_and_digest(registry: ModelRegistry, tmp_path: Path) -> None:
    old = registry.import_file(write_gguf(tmp_path / "a.gguf"), name="m", actor=ADMIN)
    new = registry.import_file(
        write_gguf(tmp_path / "b.gguf", context_length=512), name="m", actor=ADMIN
    )
    assert registry.get("m") == new  # the newest version
    assert registry.get("m@1") == old
    assert registry.get("m@2") == new
    assert registry.get(old.digest) == old
    assert registry.get("sha256:" + old.sha256.upper()) == old
    for unknown in ("n", "m@3", "sha256:" + "0" * 64):
        with pytest.raises(NotFound, match="no registered model"):
            registry.get(unknown)


@pytest.mark.parametrize(
    "ref",
    ["sha256:xyz", "md5:" + "0" * 32, "sha256:" + "a" * 63, "sha256:" + "g" * 64, "sha256:"],
)
def test_malformed_digests_are_invalid(registry: ModelRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument, match="'sha256:' followed by 64 hex digits"):
        registry.get(ref)


@pytest.mark.parametrize("ref", ["", "bad name", "a/b", "m@", "@1", "m@1@2", "x" * 64])
def test_malformed_names_are_invalid(registry: ModelRegistry, ref: str) -> None:
    with pytest.raises(InvalidArgument):
        registry.get(ref)


@pytest.mark.parametrize(
    ("name", "version"), [("bad/name", None), ("a b", None), ("", None), ("ok", "1 2")]
)
def test_bad_names_and_versions_are_refused_before_storing(
    registry: ModelRegistry, tmp_path: Path, name: str, version: str | None
) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(InvalidArgument, match="A-Z a-z 0-9"):
        registry.import_file(path, name=name, version=version, actor=ADMIN)
    assert left_in_store(registry) == []


def test_names_from_file_names() -> None:
    assert name_from_filename("SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1"
    assert name_from_filename("my model (v2).gguf") == "my-model-v2"
    assert name_from_filename("../../etc/passwd") == "passwd"
    assert name_from_filename("C:\\models\\llama 3.gguf") == "llama-3"
    assert len(name_from_filename("x" * 300 + ".gguf")) == 63
    for hopeless in ("....gguf", "((( ))).gguf", ""):
        with pytest.raises(InvalidArgument, match="give a name"):
            name_from_filename(hopeless)


def test_a_stream_needs_a_name_or_a_file_name(registry: ModelRegistry, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    with pytest.raises(InvalidArgument, match="model name is required"):
        registry.import_stream(file_blocks(path), actor=ADMIN)
    assert left_in_store(registry) == []


# -- deleting ----------------------------------------------------------------------------


def test_delete_is_refused_while_assigned(
    registry: ModelRegistry, database: Database, tmp_path: Path
) -> None:
    model = registry.import_file(write_gguf(tmp_path / "tiny.gguf"), actor=ADMIN)
    assign(database, model.id, "agent-1")
    assign(database, model.id, "agent-2", alias="other")
    with pytest.raises(Conflict) as refused:
        registry.delete("tiny@1", actor=ADMIN)
    message = str(refused.value)
    assert "agent agent-1 as smol" in message
    assert "agent agent-2 as other" in message
    assert registry.get("tiny") == model
    assert store_of(registry).has(model.sha256)
    with database.session() as session:
        for row in session.exec(select(ModelAssignmentRecord)).all():
            session.delete(row)
    registry.delete(model.digest, actor=ADMIN)
    with pytest.raises(NotFound):
        registry.get("tiny")
    assert left_in_store(registry) == []
    assert audit_actions(database)[-1] == ("model.delete", "model:tiny@1")


def test_a_shared_blob_goes_with_its_last_record(registry: ModelRegistry, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    first = registry.import_file(path, name="a", actor=ADMIN)
    registry.import_file(path, name="b", actor=ADMIN)
    registry.delete("a", actor=ADMIN)
    assert store_of(registry).has(first.sha256)
    assert registry.get(first.digest).name == "b"
    registry.delete("b@1", actor=ADMIN)
    assert left_in_store(registry) == []
    with pytest.raises(NotFound):
        registry.delete("b", actor=ADMIN)


# -- bad input: nothing is left behind ---------------------------------------------------


def test_a_file_that_is_not_gguf(registry: ModelRegistry, tmp_path: Path) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"just some notes\n" * 100)
    with pytest.raises(InvalidArgument, match="is not a GGUF file"):
        registry.import_file(path, actor=ADMIN)
    with pytest.raises(InvalidArgument, match="the upload is not a GGUF file"):
        registry.import_stream(file_blocks(path), name="notes", actor=ADMIN)
    assert left_in_store(registry) == []
    assert registry.list() == []


def test_a_truncated_demo_model(registry: ModelRegistry, demo_model: Path, tmp_path: Path) -> None:
    path = copy_prefix(demo_model, tmp_path / "cut.gguf", 20_000_000)
    with pytest.raises(InvalidArgument, match="truncated"):
        registry.import_file(path, actor=ADMIN)
    with pytest.raises(InvalidArgument, match="the upload is truncated"):
        registry.import_stream(file_blocks(path), name="cut", actor=ADMIN)
    assert left_in_store(registry) == []
    assert registry.list() == []


def test_oversized_imports(database: Database, tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    size = path.stat().st_size
    registry = ControlPlaneServices.build(
        database, model_store_dir=tmp_path / "models", max_model_bytes=size - 1
    ).models
    with pytest.raises(BlobTooLarge, match=f"limit is {size - 1} bytes"):
        registry.import_file(path, actor=ADMIN)
    with pytest.raises(BlobTooLarge, match=f"limit of {size - 1} bytes"):
        registry.import_stream(file_blocks(path, 100), name="tiny", actor=ADMIN)
    assert left_in_store(registry) == []


def test_missing_files_and_directories(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        registry.import_file(tmp_path / "absent.gguf", actor=ADMIN)
    with pytest.raises(InvalidArgument, match="not a regular file"):
        registry.import_file(tmp_path, name="dir", actor=ADMIN)
    assert registry.list() == []


def test_without_a_store_models_list_but_cannot_be_imported(
    database: Database, tmp_path: Path
) -> None:
    registry = ControlPlaneServices.build(database).models
    assert registry.list() == []
    assert registry.manifest("0" * 64) is None
    with pytest.raises(Unavailable, match="no model store"):
        registry.import_file(write_gguf(tmp_path / "tiny.gguf"), actor=ADMIN)


def test_an_actor_is_required(registry: ModelRegistry, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="actor"):
        registry.import_file(write_gguf(tmp_path / "tiny.gguf"), actor="")
