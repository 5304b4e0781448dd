"""Agent side of bundles: import verifies everything in staging, installs, refuses replays."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.artifacts.store import ArtifactStore
from agent.bundle_import import (
    BUNDLE_STATE_FILE,
    PINNED_KEY_FILE,
    import_bundle,
    last_sequence,
    pin_public_key,
)
from agent.control.state_store import DesiredStateStore
from common.bundle_format import BundleError, ManifestModel, key_id_of, model_member, write_bundle
from common.control import DesiredState, ModelAssignment
from controlplane.bundle_builder import BundleModel, build_bundle
from controlplane.bundle_signing import BundleSigner
from tests.unit.test_bundle_format import (
    MODEL_DATA,
    MODEL_SHA,
    Member,
    _bundle,
    hostile_cases,
    manifest_document,
    public_pem,
    raw_bundle,
)

REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / ".venv" / "bin" / "outpost-agent"
DEMO_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def small_bundle(
    path: Path, key: Ed25519PrivateKey, sequence: int, data: bytes = MODEL_DATA, alias: str = "a"
) -> Path:
    """A bundle of one small (not GGUF) model: quick to write and to import."""
    blob = path.with_suffix(".blob")
    blob.write_bytes(data)
    sha256 = hashlib.sha256(data).hexdigest()
    write_bundle(
        path,
        sequence=sequence,
        created_by="tests",
        key_id=key_id_of(key.public_key()),
        models=[ManifestModel(alias, sha256, len(data), "fake", str(sequence), 512, 0, 1, 4)],
        files=[(model_member(sha256), blob)],
        sign=key.sign,
    )
    return path


def assert_nothing_installed(state_dir: Path) -> None:
    store = ArtifactStore(state_dir / "artifacts")
    assert store.blobs() == []
    staging = state_dir / "artifacts" / "staging"
    assert not staging.exists() or list(staging.iterdir()) == []
    for name in ("desired-state.json", BUNDLE_STATE_FILE, PINNED_KEY_FILE, "policy.json"):
        assert not (state_dir / name).exists(), name
    assert not (state_dir / "wheels").exists()


def test_demo_model_round_trip_on_a_fresh_agent(tmp_path: Path, demo_model: Path) -> None:
    signer = BundleSigner.load_or_create(tmp_path / "cp" / "bundle-signing")
    policy = tmp_path / "policy.json"
    policy.write_text('{"rules": [{"level": "confidential", "route": "local"}]}')
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "outpost-0.1.0-py3-none-any.whl").write_bytes(b"PK wheel bytes")
    model = BundleModel(
        "smol", DEMO_SHA, demo_model.stat().st_size, "smol", "1", demo_model, 1024, 0, 2, 8
    )
    summary = build_bundle(
        tmp_path / "site.tar", [model], signer, actor="admin", policy=policy, wheels_dir=wheels
    )
    state_dir = tmp_path / "agent"
    result = import_bundle(summary.path, state_dir, public_key_pem=signer.public_key_pem)

    store = ArtifactStore(state_dir / "artifacts")
    assert store.blobs() == [DEMO_SHA]
    blob = store.blob_path(DEMO_SHA)
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == DEMO_SHA
    expected = ModelAssignment(
        alias="smol",
        path="",
        context_length=1024,
        gpu_layers=0,
        queue_depth=8,
        sha256=DEMO_SHA,
        size_bytes=demo_model.stat().st_size,
        model_name="smol",
        model_version="1",
        threads=2,
    )
    desired = DesiredStateStore(state_dir).load()
    assert desired is not None
    assert desired.generation == 1  # the agent's own count, not the bundle's sequence
    assert desired.models == (expected,)
    assert result.models == (expected,)
    assert (state_dir / "policy.json").read_bytes() == policy.read_bytes()
    assert (
        state_dir / "wheels" / "outpost-0.1.0-py3-none-any.whl"
    ).read_bytes() == b"PK wheel bytes"
    assert (state_dir / PINNED_KEY_FILE).read_bytes() == signer.public_key_pem
    assert last_sequence(state_dir) == summary.sequence
    assert list((state_dir / "artifacts" / "staging").iterdir()) == []
    assert result.to_dict()["models"][0]["sha256"] == DEMO_SHA


def test_a_newer_bundle_replaces_the_desired_state_and_keeps_labels(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    first = small_bundle(tmp_path / "1.tar", key, sequence=10)
    import_bundle(first, state_dir, public_key_pem=public_pem(key))
    stored = DesiredStateStore(state_dir).load()
    assert stored is not None
    labelled = DesiredState(stored.generation, stored.models, MappingProxyType({"site": "b1"}))
    DesiredStateStore(state_dir).save(labelled)
    second = small_bundle(tmp_path / "2.tar", key, sequence=11, data=b"v2" * 50, alias="b")
    result = import_bundle(second, state_dir, public_key_pem=None)  # the pinned key is used
    desired = DesiredStateStore(state_dir).load()
    assert desired is not None
    assert desired.generation == stored.generation + 1
    assert [m.alias for m in desired.models] == ["b"]
    assert dict(desired.labels) == {"site": "b1"}
    assert result.sequence == 11
    store = ArtifactStore(state_dir / "artifacts")
    assert len(store.blobs()) == 2  # the previous version stays for a rollback


def test_an_older_bundle_replayed_over_a_newer_one_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    older = small_bundle(tmp_path / "old.tar", key, sequence=5, data=b"old" * 40)
    newer = small_bundle(tmp_path / "new.tar", key, sequence=6)
    import_bundle(newer, state_dir, public_key_pem=public_pem(key))
    before = (state_dir / "desired-state.json").read_bytes()
    for replay in (older, newer):
        with pytest.raises(BundleError, match=r"older bundle: .* cannot be replayed"):
            import_bundle(replay, state_dir, public_key_pem=None)
    assert (state_dir / "desired-state.json").read_bytes() == before
    assert ArtifactStore(state_dir / "artifacts").blobs() == [MODEL_SHA]
    assert list((state_dir / "artifacts" / "staging").iterdir()) == []


def test_a_key_other_than_the_pinned_one_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    pin_public_key(state_dir, public_pem(key))
    other = Ed25519PrivateKey.generate()
    bundle = small_bundle(tmp_path / "b.tar", other, sequence=3)
    with pytest.raises(BundleError, match="differs from the key pinned"):
        import_bundle(bundle, state_dir, public_key_pem=public_pem(other))
    with pytest.raises(BundleError, match="signed by another key"):
        import_bundle(bundle, state_dir, public_key_pem=None)
    assert (state_dir / PINNED_KEY_FILE).read_bytes() == public_pem(key)
    assert ArtifactStore(state_dir / "artifacts").blobs() == []
    assert not (state_dir / "desired-state.json").exists()


def test_without_any_key_the_error_says_to_pass_one(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    bundle = small_bundle(tmp_path / "b.tar", key, sequence=3)
    with pytest.raises(BundleError, match="pass --public-key"):
        import_bundle(bundle, state_dir, public_key_pem=None)
    assert_nothing_installed(state_dir)


def test_a_pinned_key_that_is_not_an_ed25519_pem_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    state_dir.mkdir()
    (state_dir / PINNED_KEY_FILE).write_bytes(
        b"-----BEGIN PUBLIC KEY-----\nxx\n-----END PUBLIC KEY-----\n"
    )
    bundle = small_bundle(tmp_path / "b.tar", key, sequence=3)
    with pytest.raises(BundleError, match="not a PEM public key"):
        import_bundle(bundle, state_dir, public_key_pem=None)
    assert ArtifactStore(state_dir / "artifacts").blobs() == []


def _hostile_specs() -> list[str]:
    return sorted(hostile_cases(Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()))


@pytest.mark.parametrize("case", _hostile_specs())
def test_hostile_bundles_install_nothing(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path, case: str
) -> None:
    spec, words = hostile_cases(key, Ed25519PrivateKey.generate())[case]
    bundle = _bundle(tmp_path, key, spec)
    with pytest.raises(BundleError) as caught:
        import_bundle(bundle, state_dir, public_key_pem=public_pem(key))
    assert words in str(caught.value)
    assert_nothing_installed(state_dir)


@pytest.mark.parametrize(
    ("policy", "words"),
    [(b"[1]", "must be a JSON object"), (b"{oops", "policy.json is not valid JSON")],
)
def test_a_signed_policy_that_is_not_a_json_object_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path, policy: bytes, words: str
) -> None:
    document: dict[str, Any] = manifest_document(key)
    document["policy"] = "policy.json"
    sha256 = hashlib.sha256(policy).hexdigest()
    document["members"].append({"path": "policy.json", "sha256": sha256, "size_bytes": len(policy)})
    members = [Member(model_member(MODEL_SHA), MODEL_DATA), Member("policy.json", policy)]
    bundle = raw_bundle(tmp_path / "b.tar", key, document=document, members=members)
    with pytest.raises(BundleError, match=words):
        import_bundle(bundle, state_dir, public_key_pem=public_pem(key))
    assert_nothing_installed(state_dir)


def test_a_failure_while_installing_undoes_the_new_blobs(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    bundle = small_bundle(tmp_path / "b.tar", key, sequence=3)
    (state_dir / "desired-state.json").mkdir(parents=True)  # the desired state cannot be saved
    with pytest.raises(IsADirectoryError):
        import_bundle(bundle, state_dir, public_key_pem=public_pem(key))
    (state_dir / "desired-state.json").rmdir()
    assert_nothing_installed(state_dir)
    import_bundle(bundle, state_dir, public_key_pem=public_pem(key))  # nothing was recorded
    assert ArtifactStore(state_dir / "artifacts").blobs() == [MODEL_SHA]


def test_a_damaged_bundle_state_is_refused(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    state_dir.mkdir()
    (state_dir / BUNDLE_STATE_FILE).write_text('{"sequence": "many"}')
    bundle = small_bundle(tmp_path / "b.tar", key, sequence=3)
    with pytest.raises(BundleError, match="damaged"):
        import_bundle(bundle, state_dir, public_key_pem=public_pem(key))
    assert ArtifactStore(state_dir / "artifacts").blobs() == []


def _agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), "bundle", "import", *args], capture_output=True, text=True, timeout=120
    )


def test_outpost_agent_bundle_import_as_a_process(
    tmp_path: Path, key: Ed25519PrivateKey, state_dir: Path
) -> None:
    pem = tmp_path / "bundle-signing.pem"
    pem.write_bytes(public_pem(key))
    bundle = small_bundle(tmp_path / "b.tar", key, sequence=42)
    done = _agent(str(bundle), "--state-dir", str(state_dir), "--public-key", str(pem), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["sequence"] == 42
    assert result["models"][0]["sha256"] == MODEL_SHA
    assert ArtifactStore(state_dir / "artifacts").has(MODEL_SHA)

    replayed = _agent(str(bundle), "--state-dir", str(state_dir))
    assert replayed.returncode == 2
    assert replayed.stderr.startswith("outpost-agent: error: older bundle: sequence 42")

    newer = small_bundle(tmp_path / "n.tar", key, sequence=43, alias="plain")
    shown = _agent(str(newer), "--state-dir", str(state_dir))
    assert shown.returncode == 0, shown.stderr
    assert "imported bundle sequence 43" in shown.stdout
    assert f"plain: fake@43 sha256:{MODEL_SHA}" in shown.stdout

    flipped = tmp_path / "flipped.tar"
    source = small_bundle(tmp_path / "f.tar", key, sequence=50)
    with tarfile.open(source, "r:") as tar:
        offset = tar.getmember(model_member(MODEL_SHA)).offset_data + 7
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x01
    flipped.write_bytes(bytes(data))
    refused = _agent(str(flipped), "--state-dir", str(tmp_path / "fresh"), "--public-key", str(pem))
    assert refused.returncode == 2
    assert refused.stderr.startswith("outpost-agent: error: member models/")
    assert "does not match its sha256" in refused.stderr
    assert_nothing_installed(tmp_path / "fresh")
