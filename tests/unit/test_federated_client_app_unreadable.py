"""`describe` answers ready=False, with the reason, when the agent's user may not enter the
directory holding the site's dataset or base model (Path.exists/is_file raise EACCES there).
Root is never denied, so the handler runs as `nobody` (setpriv) when the tests run as root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
sys.path.insert(0, sys.argv[3])
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity
TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 7, 1, 1
from agent.federated.client_app import describe
from common.federated.flower_messages import CONFIG_KEY, SITE_KEY
config = {"job-id": "j", "agent-id": "a", "dataset-dir": sys.argv[1],
          "model-path": sys.argv[2], "base-sha256": "ab" * 32}
context = Context(run_id=7, node_id=11, node_config=config, state=RecordDict(), run_config={})
query = Message(RecordDict({CONFIG_KEY: ConfigRecord({"job-id": "j"})}), 11, "query")
try:
    site = describe(query, context).content.config_records[SITE_KEY]
    print("READY" if site["ready"] else "NOT-READY", site["reason"])
except Exception as exc:
    print("RAISED", type(exc).__name__, exc)
"""


def run_describe(dataset_dir: Path, model_path: Path) -> str:
    command = [sys.executable, "-c", SCRIPT, str(dataset_dir), str(model_path), str(ROOT)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "setpriv (util-linux) drops root's privileges for this test"
        command = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    return done.stdout.strip() or done.stderr


@pytest.fixture
def site() -> Iterator[tuple[Path, Path]]:
    # pytest's tmp_path lies under a 0700 directory of root's: the site goes in a public one.
    tmp_path = Path(tempfile.mkdtemp(prefix="outpost-site-"))
    tmp_path.chmod(0o755)
    (tmp_path / "datasets" / "notes").mkdir(parents=True)
    (tmp_path / "datasets" / "notes" / "a.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.gguf").write_bytes(b"GGUF")
    for path in tmp_path.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield tmp_path / "datasets" / "notes", tmp_path / "models" / "m.gguf"
    shutil.rmtree(tmp_path)


def test_unsearchable_datasets_directory_is_not_ready(
    site: tuple[Path, Path],
) -> None:
    dataset, model = site
    dataset.parent.chmod(0)
    try:
        out = run_describe(dataset, model)
    finally:
        dataset.parent.chmod(0o755)
    assert out.startswith("NOT-READY dataset 'notes'"), out


def test_unsearchable_models_directory_is_not_ready(
    site: tuple[Path, Path],
) -> None:
    dataset, model = site
    model.parent.chmod(0)
    try:
        out = run_describe(dataset, model)
    finally:
        model.parent.chmod(0o755)
    assert out.startswith("NOT-READY"), out
