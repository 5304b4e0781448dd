"""An air-gapped site as real processes: `outpost bundle create`, `outpost-agent bundle import`,
then `outpost-agent run` with no control plane at all, serving the bundle's model."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import httpx
import pytest

from agent.bundle_import import PINNED_KEY_FILE
from controlplane.audit import AuditLog
from controlplane.bundle_builder import BundleModel, build_bundle
from controlplane.bundle_signing import BundleSigner, signing_directory
from controlplane.db.database import Database
from controlplane.model_registry import ModelRegistry
from controlplane.model_store import ModelStore
from tests.process_harness import LoggedProcess

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]
OUTPOST = REPO / ".venv" / "bin" / "outpost"
OUTPOST_AGENT = REPO / ".venv" / "bin" / "outpost-agent"
DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=120, check=False
    )


def register_demo_model(data_dir: Path, demo_model: Path) -> None:
    """A control plane's data directory whose registry holds the demo model as smollm2@1."""
    db = Database(f"sqlite:///{data_dir / 'outpost.db'}")
    try:
        db.migrate()
        registry = ModelRegistry(db, ModelStore(data_dir / "models"), AuditLog(db))
        view = registry.import_file(demo_model, name="smollm2", version="1", actor="tests")
        assert view.sha256 == DEMO_SHA256
    finally:
        db.dispose()


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under `directory`: its sha256 and mode."""
    return {
        str(path.relative_to(directory)): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mode,
        )
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_a_bundle_round_trip_on_an_agent_without_any_control_plane(
    tmp_path: Path, demo_model: Path
) -> None:
    data_dir = tmp_path / "cp"
    register_demo_model(data_dir, demo_model)
    bundle = tmp_path / "site.bundle"
    created = command(
        OUTPOST, "bundle", "create", "--data-dir", data_dir, "--out", bundle,
        "--model", "smollm2=smol", "--context-length", "512",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert f"smol: smollm2@1 sha256:{DEMO_SHA256}" in created.stdout
    key = tmp_path / "key.pem"
    public_key = command(OUTPOST, "bundle", "public-key", "--data-dir", data_dir)
    assert public_key.returncode == 0, public_key.stderr
    key.write_text(public_key.stdout)

    state_dir = tmp_path / "agent"
    imported = command(
        OUTPOST_AGENT, "bundle", "import", bundle, "--state-dir", state_dir, "--public-key", key
    )
    assert imported.returncode == 0, imported.stderr
    assert f"smol: smollm2@1 sha256:{DEMO_SHA256}" in imported.stdout
    assert (state_dir / PINNED_KEY_FILE).read_text() == public_key.stdout

    agent = LoggedProcess(
        [str(OUTPOST_AGENT), "run", "--state-dir", str(state_dir),
         "--http-port", "0", "--grpc-port", "0", "--threads", "2"]
    )  # fmt: skip
    try:
        http_port = agent.wait_for(r"HTTP listening on http://127\.0\.0\.1:(\d+)").group(1)
        agent.wait_for(r"no control plane configured and not enrolled")
        agent.wait_for(r"models loaded; serving", timeout=120)
        base = f"http://127.0.0.1:{http_port}"
        listed = httpx.get(f"{base}/v1/models", timeout=30)
        assert listed.status_code == 200, listed.text
        assert [m["id"] for m in listed.json()["data"]] == ["smol"]
        completion = httpx.post(
            f"{base}/v1/completions",
            json={"model": "smol", "prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0},
            timeout=60,
        )
        assert completion.status_code == 200, completion.text
        assert completion.json()["choices"][0]["text"].strip()
        assert completion.json()["usage"]["completion_tokens"] > 0
    finally:
        assert agent.stop() == 0, "".join(agent.lines)
    blob = state_dir / "artifacts" / "blobs" / f"{DEMO_SHA256}.gguf"
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == DEMO_SHA256
    before = snapshot(state_dir)

    # The same bundle again is a replay: refused, nothing changes.
    replayed = command(OUTPOST_AGENT, "bundle", "import", bundle, "--state-dir", state_dir)
    assert replayed.returncode == 2
    assert replayed.stderr.startswith("outpost-agent: error: older bundle: sequence")
    assert snapshot(state_dir) == before

    # A bundle of the same model signed by another control plane's key: refused.
    foreign_signer = BundleSigner.load_or_create(signing_directory(tmp_path / "other-cp"))
    foreign = build_bundle(
        tmp_path / "foreign.bundle",
        [
            BundleModel(
                "smol", DEMO_SHA256, demo_model.stat().st_size, "smollm2", "1", demo_model,
                512, 0, 2, 16,
            )
        ],
        foreign_signer,
        actor="someone else",
    )  # fmt: skip
    refused = command(OUTPOST_AGENT, "bundle", "import", foreign.path, "--state-dir", state_dir)
    assert refused.returncode == 2
    assert refused.stderr.startswith("outpost-agent: error: ")
    assert "the bundle is signed by another key" in refused.stderr
    # Even when its key is offered on the command line: a pinned key is never replaced.
    offered = tmp_path / "foreign.pem"
    offered.write_bytes(foreign_signer.public_key_pem)
    refused = command(
        OUTPOST_AGENT, "bundle", "import", foreign.path, "--state-dir", state_dir,
        "--public-key", offered,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "differs from the key pinned" in refused.stderr
    assert snapshot(state_dir) == before
