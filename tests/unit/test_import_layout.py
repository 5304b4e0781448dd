"""Import boundaries: the agent never imports the control plane; protobuf stays at the edge."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The only product modules that may touch the generated protobuf code. Outside the product:
# protos/ is that code, and tests/ and benchmarks/ are gRPC clients of the agent.
# The gRPC layer: servicers, the agent's control-plane client, and the one conversion module.
PROTOBUF_ALLOWED = {
    Path("common/proto_convert.py"),
    Path("agent/grpc_api.py"),
    Path("agent/control/client.py"),
    Path("agent/control/lookups.py"),  # its unary calls (FindPeers, FindSiteAgent)
    Path("agent/artifacts/grpc_source.py"),  # the client side of ArtifactService
    Path("common/artifact_servicer.py"),  # its server side, run by both agents and the CP
    Path("controlplane/grpc/control.py"),
    Path("controlplane/grpc/enrollment.py"),
    Path("controlplane/server.py"),
}
PROTOBUF_EXEMPT_DIRS = {"tests", "protos", "benchmarks"}
SKIPPED_DIRS = {"build", "dist", "node_modules", "__pycache__"}


def imported_modules(path: Path) -> Iterator[str]:
    """Every absolute module an import statement (or importlib call) in `path` names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node.args[0].value


def names_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def python_files(root: Path) -> list[Path]:
    """The project's own .py files under `root`: no virtualenvs, caches or build output."""
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(ROOT).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if "site-packages" in parts:
            continue
        files.append(path)
    return files


AGENT_FILES = python_files(ROOT / "agent")
PROJECT_FILES = python_files(ROOT)


def test_the_scan_sees_the_agent_and_the_project() -> None:
    relative = {p.relative_to(ROOT) for p in PROJECT_FILES}
    assert Path("agent/model_runner.py") in relative
    assert Path("agent/engine/text_stream.py") in relative
    assert Path("common/inference.py") in relative
    assert relative >= PROTOBUF_ALLOWED
    assert len(AGENT_FILES) >= 10
    assert not any(".venv" in p.parts for p in PROJECT_FILES)


def test_the_detector_finds_known_imports() -> None:
    for allowed in PROTOBUF_ALLOWED:
        modules = list(imported_modules(ROOT / allowed))
        assert any(names_package(m, "outpost.v1") for m in modules), allowed


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("import controlplane", "controlplane"),
        ("import controlplane.db as db", "controlplane"),
        ("from controlplane import db", "controlplane"),
        ("from controlplane.api import app", "controlplane"),
        ("import importlib\nimportlib.import_module('controlplane.db')", "controlplane"),
        ("__import__('controlplane')", "controlplane"),
        ("def f() -> None:\n    from controlplane import x", "controlplane"),
        ("from outpost.v1 import inference_pb2", "outpost.v1"),
        ("from outpost import v1", "outpost.v1"),
        ("import outpost.v1.inference_pb2 as pb", "outpost.v1"),
    ],
)
def test_the_detector_catches_every_import_form(tmp_path: Path, source: str, package: str) -> None:
    path = tmp_path / "sample.py"
    path.write_text(source + "\n", encoding="utf-8")
    assert any(names_package(m, package) for m in imported_modules(path))


def test_the_detector_ignores_lookalikes(tmp_path: Path) -> None:
    path = tmp_path / "sample.py"
    path.write_text(
        "import controlplanes\nfrom outpost_tools import v1\nname = 'controlplane'\n"
        "from . import controlplane\n",
        encoding="utf-8",
    )
    modules = list(imported_modules(path))
    assert not any(names_package(m, "controlplane") for m in modules)
    assert not any(names_package(m, "outpost.v1") for m in modules)


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_agent_never_imports_the_control_plane(path: Path) -> None:
    offending = [m for m in imported_modules(path) if names_package(m, "controlplane")]
    assert offending == [], f"{path.relative_to(ROOT)} imports {offending}"


def test_protobuf_types_stop_at_the_grpc_layer() -> None:
    offenders = {}
    for path in PROJECT_FILES:
        relative = path.relative_to(ROOT)
        if relative in PROTOBUF_ALLOWED or relative.parts[0] in PROTOBUF_EXEMPT_DIRS:
            continue
        modules = [m for m in imported_modules(path) if names_package(m, "outpost.v1")]
        if modules:
            offenders[str(relative)] = modules
    assert offenders == {}
