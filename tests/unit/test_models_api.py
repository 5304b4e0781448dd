"""REST routes of the model registry over the real app, store and database (SQLite, PostgreSQL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from litestar.testing import TestClient
from sqlmodel import select

from controlplane.api.app import create_app
from controlplane.auth import Role
from controlplane.db.database import Database
from controlplane.db.models import ModelAssignmentRecord
from controlplane.services import ControlPlaneServices
from tests.lora_adapters import make_lora_adapter
from tests.unit.test_gguf_info import copy_prefix, write_adapter, write_gguf

MAX_REQUEST_BYTES = 16 * 1024  # the app's limit for every other route
API = "/api/v1"
OCTETS = {"Content-Type": "application/octet-stream"}
VIEW_FIELDS = {
    "id",
    "kind",
    "name",
    "version",
    "digest",
    "sha256",
    "size_bytes",
    "architecture",
    "parameters",
    "quantization",
    "context_length",
    "license",
    "chat_template",
    "adapter_type",
    "lora_alpha",
    "created_at",
    "created_by",
}


@dataclass
class Api:
    client: TestClient[Any]
    services: ControlPlaneServices
    keys: dict[Role, str]
    store_dir: Path

    def call(self, method: str, path: str, role: Role = Role.ADMIN, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.keys[role]}", **kw.pop("headers", {})}
        return self.client.request(method, f"{API}{path}", headers=headers, **kw)

    def upload(self, content: Any, query: str = "", role: Role = Role.OPERATOR, **kw: Any) -> Any:
        headers = {**OCTETS, **kw.pop("headers", {})}
        return self.call("POST", f"/models{query}", role, content=content, headers=headers, **kw)

    def left_in_store(self) -> list[str]:
        root = self.store_dir
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def make_api(database: Database, store_dir: Path, **build: Any) -> Iterator[Api]:
    services = ControlPlaneServices.build(database, model_store_dir=store_dir, **build)
    keys = {role: services.api_keys.create(f"{role.value}-user", role)[0] for role in Role}
    with TestClient(create_app(services, max_request_bytes=MAX_REQUEST_BYTES)) as client:
        yield Api(client, services, keys, store_dir)


@pytest.fixture
def api(database: Database, tmp_path: Path) -> Iterator[Api]:
    yield from make_api(database, tmp_path / "models")


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "tiny.gguf")


def blocks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(size):
            yield block


def error(response: Any, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    return str(body["error"]["message"])


def test_upload_the_demo_model_then_find_it_every_way(api: Api, demo_model: Path) -> None:
    """98 MB through a route of an app whose other routes take 16 KiB, streamed in chunks."""
    response = api.upload(blocks(demo_model), "?name=smollm2")
    assert response.status_code == 201, response.text
    model = response.json()
    sha = hashlib.sha256(demo_model.read_bytes()).hexdigest()
    assert set(model) == VIEW_FIELDS
    assert (model["name"], model["version"], model["sha256"]) == ("smollm2", "1", sha)
    assert model["digest"] == f"sha256:{sha}"
    assert model["size_bytes"] == 98_362_432
    assert (model["architecture"], model["quantization"]) == ("llama", "Q4_1")
    assert (model["kind"], model["adapter_type"], model["lora_alpha"]) == ("model", None, None)
    assert model["context_length"] == 8192
    assert "<|im_start|>" in model["chat_template"]
    assert (model["license"], model["created_by"]) == ("apache-2.0", "operator-user")
    assert model["created_at"].endswith("Z")

    for ref in (
        "smollm2",
        "smollm2@1",
        f"sha256:{sha}",
        quote("smollm2@1"),
        quote(f"sha256:{sha}"),
    ):
        found = api.call("GET", f"/models/{ref}", Role.VIEWER)
        assert found.status_code == 200, (ref, found.text)
        assert found.json() == model
    assert api.call("GET", "/models", Role.VIEWER).json() == {"models": [model]}


def test_import_the_demo_model_by_path(api: Api, demo_model: Path) -> None:
    response = api.call("POST", "/models/import", json={"path": str(demo_model)})
    assert response.status_code == 201, response.text
    model = response.json()
    assert (model["name"], model["version"]) == ("SmolLM2-135M-Instruct.Q4_1", "1")
    assert (model["architecture"], model["quantization"]) == ("llama", "Q4_1")
    again = api.call("POST", "/models/import", json={"path": str(demo_model)})
    assert again.json() == model  # content addressed: the same record
    assert len(api.call("GET", "/models").json()["models"]) == 1
    assert len([f for f in api.left_in_store() if f.startswith("blobs/")]) == 2  # blob, manifest


def test_upload_a_lora_adapter_and_list_by_kind(
    api: Api, demo_model: Path, tiny: Path, tmp_path: Path
) -> None:
    path = make_lora_adapter(demo_model, tmp_path / "sql.gguf", seed=5)
    disposition = {"Content-Disposition": 'attachment; filename="sql-lora.gguf"'}
    response = api.upload(blocks(path, 100_000), headers=disposition)
    assert response.status_code == 201, response.text
    adapter = response.json()
    assert set(adapter) == VIEW_FIELDS
    assert (adapter["name"], adapter["version"], adapter["kind"]) == ("sql-lora", "1", "adapter")
    assert (adapter["architecture"], adapter["adapter_type"], adapter["lora_alpha"]) == (
        "llama",
        "lora",
        8.0,
    )
    assert adapter["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (adapter["size_bytes"], adapter["context_length"]) == (path.stat().st_size, 0)
    by_path = api.call("POST", "/models/import", json={"path": str(path), "name": "sql-lora"})
    assert (by_path.status_code, by_path.json()) == (201, adapter)
    model = api.upload(tiny.read_bytes(), "?name=tiny").json()
    assert model["kind"] == "model"
    listed = api.call("GET", "/models", Role.VIEWER).json()["models"]
    assert listed == [adapter, model]
    for kind, expected in (("adapter", [adapter]), ("model", [model])):
        answer = api.call("GET", f"/models?kind={kind}", Role.VIEWER)
        assert answer.json() == {"models": expected}, kind
    assert api.call("GET", "/models/sql-lora@1", Role.VIEWER).json() == adapter
    assert "a kind is one of model, adapter" in error(api.call("GET", "/models?kind=lora"), 400)
    assert "more than once" in error(api.call("GET", "/models?kind=model&kind=adapter"), 400)


def test_an_adapter_of_another_type_is_refused(api: Api, tmp_path: Path) -> None:
    path = write_adapter(tmp_path / "vector.gguf", adapter_type="control_vector")
    message = error(api.upload(path.read_bytes(), "?name=vector"), 400)
    assert message.startswith("the upload is a GGUF adapter of type 'control_vector'")
    assert api.left_in_store() == []


def test_the_file_name_of_an_upload_names_the_model(api: Api, tiny: Path) -> None:
    disposition = {"Content-Disposition": 'attachment; filename="my model.gguf"'}
    response = api.upload(tiny.read_bytes(), headers=disposition)
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "my-model"
    nameless = api.upload(tiny.read_bytes())
    assert "model name is required" in error(nameless, 400)


def test_versions_count_up_and_can_be_chosen(api: Api, tmp_path: Path) -> None:
    files = [write_gguf(tmp_path / f"{n}.gguf", context_length=128 * n) for n in (1, 2, 3)]
    assert api.upload(files[0].read_bytes(), "?name=m").json()["version"] == "1"
    assert api.upload(files[1].read_bytes(), "?name=m").json()["version"] == "2"
    chosen = api.upload(files[2].read_bytes(), "?name=m&version=rc1")
    assert chosen.json()["version"] == "rc1"
    assert api.call("GET", "/models/m").json()["version"] == "rc1"  # the newest
    taken = api.upload(files[2].read_bytes(), "?name=m&version=1")
    assert "m@1 exists already" in error(taken, 409)


def test_delete_is_refused_while_assigned(api: Api, tiny: Path) -> None:
    model = api.upload(tiny.read_bytes(), "?name=tiny").json()
    with api.services.db.session() as session:
        session.add(
            ModelAssignmentRecord(
                model_id=model["id"],
                target_kind="site",
                target="berlin",
                alias="smol",
                context_length=1024,
                gpu_layers=0,
                threads=0,
                queue_depth=16,
                created_at=datetime.now(UTC),
                created_by="admin-user",
            )
        )
    refused = api.call("DELETE", "/models/tiny@1", Role.OPERATOR)
    assert "site berlin as smol" in error(refused, 409)
    assert api.call("GET", "/models/tiny").status_code == 200
    adapter = api.upload(write_adapter(tiny.with_name("a.gguf")).read_bytes(), "?name=a").json()
    with api.services.db.session() as session:
        row = session.exec(select(ModelAssignmentRecord)).one()
        row.adapters = {"sql": adapter["id"]}
        session.add(row)
    refused = api.call("DELETE", "/models/a", Role.OPERATOR)
    assert error(refused, 409) == (
        "adapter a@1 is assigned (site berlin as smol:sql); remove those assignments first"
    )
    with api.services.db.session() as session:
        for row in session.exec(select(ModelAssignmentRecord)).all():
            session.delete(row)
    assert api.call("DELETE", "/models/tiny@1", Role.OPERATOR).status_code == 204
    assert api.call("DELETE", "/models/a", Role.OPERATOR).status_code == 204


def test_delete_removes_the_record_and_the_blob(api: Api, tiny: Path) -> None:
    model = api.upload(tiny.read_bytes(), "?name=tiny").json()
    assert "viewer" in error(api.call("DELETE", "/models/tiny", Role.VIEWER), 403)
    response = api.call("DELETE", f"/models/{quote(model['digest'])}", Role.OPERATOR)
    assert response.status_code == 204, response.text
    assert "no registered model tiny" in error(api.call("GET", "/models/tiny"), 404)
    assert api.left_in_store() == []
    assert error(api.call("DELETE", "/models/tiny"), 404)


# -- who may do what ---------------------------------------------------------------------


def test_viewers_read_but_cannot_import(api: Api, tiny: Path) -> None:
    assert "viewer" in error(api.upload(tiny.read_bytes(), "?name=t", role=Role.VIEWER), 403)
    assert api.call("GET", "/models", Role.VIEWER).json() == {"models": []}
    assert api.left_in_store() == []


def test_path_import_is_for_admins_only(api: Api, tiny: Path) -> None:
    body = {"path": str(tiny)}
    refused = api.call("POST", "/models/import", Role.OPERATOR, json=body)
    assert "admin only" in error(refused, 403)
    denied = [e for e in api.services.audit.list() if e.outcome == "denied"]
    assert [(e.actor, e.action) for e in denied] == [("operator-user", "model.import_path")]
    assert api.call("GET", "/models").json() == {"models": []}


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"path": "/nonexistent/model.gguf"}, "does not exist"),
        ({"path": "relative/model.gguf"}, "absolute path"),
        ({"path": ""}, "'path' is required"),
        ({"name": "x"}, "'path' is required"),
        ({"path": "/tmp/x\n"}, "control characters"),
        ({"path": 7}, "'path' must be a string"),
        ({"path": "/x", "force": True}, "unknown field 'force'"),
    ],
)
def test_bad_path_imports(api: Api, body: dict[str, Any], message: str) -> None:
    assert message in error(api.call("POST", "/models/import", json=body), 400)


def test_a_directory_and_a_bad_name_by_path(api: Api, tiny: Path) -> None:
    directory = api.call("POST", "/models/import", json={"path": str(tiny.parent)})
    assert "not a regular file" in error(directory, 400)
    bad_name = api.call("POST", "/models/import", json={"path": str(tiny), "name": "a/b"})
    assert "A-Z a-z 0-9" in error(bad_name, 400)
    assert api.left_in_store() == []


def test_uploads_that_are_not_gguf(api: Api, demo_model: Path, tmp_path: Path) -> None:
    not_gguf = api.upload(b"PK\x03\x04" + b"\0" * 5000, "?name=zip")
    assert "the upload is not a GGUF file" in error(not_gguf, 400)
    cut = copy_prefix(demo_model, tmp_path / "cut.gguf", 3_000_000)
    truncated = api.upload(blocks(cut), "?name=cut")
    assert "the upload is truncated" in error(truncated, 400)
    assert api.left_in_store() == []
    assert api.call("GET", "/models").json() == {"models": []}


@pytest.mark.parametrize("name", ["a%20b", "a/b", "..%2F..", "x" * 64, "%E2%9C%93"])
def test_names_with_bad_characters(api: Api, tiny: Path, name: str) -> None:
    assert error(api.upload(tiny.read_bytes(), f"?name={name}"), 400)
    assert api.left_in_store() == []


@pytest.mark.parametrize("query", ["?nmae=x", "?name=x&force=1", "?name=a&name=b"])
def test_unknown_or_repeated_query_parameters(api: Api, tiny: Path, query: str) -> None:
    message = error(api.upload(tiny.read_bytes(), query), 400)
    assert "unknown query parameter" in message or "more than once" in message
    assert api.left_in_store() == []
    assert "unknown query parameter 'x'" in error(api.call("GET", "/models?x=1"), 400)
    assert error(api.call("GET", "/models/tiny?verbose=1"), 400)


def test_an_upload_of_another_media_type(api: Api, tiny: Path) -> None:
    response = api.upload(tiny.read_bytes(), "?name=t", headers={"Content-Type": "text/plain"})
    assert "application/octet-stream" in error(response, 415)


@pytest.mark.parametrize(
    "ref",
    [
        "sha256:xyz",
        "md5:" + "0" * 32,
        "sha256:" + "a" * 63,
        quote("sha256:" + "a" * 63),
        "sha256:" + "a" * 65,
    ],
)
def test_malformed_digests(api: Api, ref: str) -> None:
    message = error(api.call("GET", f"/models/{ref}"), 400)
    assert "'sha256:' followed by 64 hex digits" in message
    assert error(api.call("DELETE", f"/models/{ref}"), 400)


def test_an_overlong_ref_and_unknown_models(api: Api) -> None:
    assert error(api.call("GET", f"/models/{'x' * 300}"), 400)
    assert error(api.call("GET", "/models/nobody"), 404)
    assert error(api.call("GET", f"/models/sha256:{'0' * 64}"), 404)


def test_oversized_uploads_are_413_and_store_nothing(database: Database, tmp_path: Path) -> None:
    tiny = write_gguf(tmp_path / "tiny.gguf")
    limit = tiny.stat().st_size - 1
    for api in make_api(database, tmp_path / "models", max_model_bytes=limit):
        announced = api.upload(tiny.read_bytes(), "?name=t")  # Content-Length says too much
        assert error(announced, 413)
        streamed = api.upload(blocks(tiny, 100), "?name=t")  # chunked: caught while streaming
        assert error(streamed, 413)
        by_path = api.call("POST", "/models/import", json={"path": str(tiny)})
        assert f"the limit is {limit} bytes" in error(by_path, 413)
        assert api.left_in_store() == []
        assert api.call("GET", "/models").json() == {"models": []}
