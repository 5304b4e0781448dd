"""Control-plane side of bundles: the signing key, sequences, the builder and `bundle` commands."""

from __future__ import annotations

import argparse
import hashlib
import json
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from common.bundle_format import BundleError, model_member
from common.bundle_reader import verify_bundle
from controlplane.audit import AuditLog
from controlplane.bundle_builder import BundleModel, build_bundle
from controlplane.bundle_cli import model_choice, resolve_models
from controlplane.bundle_signing import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    SEQUENCE_FILE,
    BundleSigner,
    signing_directory,
)
from controlplane.db.database import Database
from controlplane.model_registry import ModelRegistry
from controlplane.model_store import ModelStore

REPO = Path(__file__).resolve().parents[2]
PYTHON = REPO / ".venv" / "bin" / "python"
DEMO_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FAKE_DATA = b"fake model bytes " * 64
FAKE_SHA = hashlib.sha256(FAKE_DATA).hexdigest()


@pytest.fixture
def signer(tmp_path: Path) -> BundleSigner:
    return BundleSigner.load_or_create(signing_directory(tmp_path / "data"))


@pytest.fixture
def fake_model(tmp_path: Path) -> BundleModel:
    blob = tmp_path / "blob"
    blob.write_bytes(FAKE_DATA)
    return BundleModel("fake", FAKE_SHA, len(FAKE_DATA), "fake", "1", blob, 512, 0, 1, 4)


# -- the signing key and sequence numbers ----------------------------------------------------


def test_signing_key_is_created_private_and_loaded_again(tmp_path: Path) -> None:
    directory = signing_directory(tmp_path / "data")
    first = BundleSigner.load_or_create(directory)
    assert stat.S_IMODE((directory / PRIVATE_KEY_FILE).stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert (directory / PUBLIC_KEY_FILE).read_bytes() == first.public_key_pem
    assert first.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    again = BundleSigner.load_or_create(directory)
    assert again.key_id == first.key_id
    assert len(first.key_id) == 64
    (directory / PUBLIC_KEY_FILE).write_bytes(b"tampered")  # the private key is what counts
    assert BundleSigner.load_or_create(directory).public_key_pem == first.public_key_pem
    assert (directory / PUBLIC_KEY_FILE).read_bytes() == first.public_key_pem


def test_signatures_verify_with_the_public_key(signer: BundleSigner) -> None:
    from common.bundle_format import load_public_key

    signature = signer.sign(b"manifest bytes")
    assert len(signature) == 64
    load_public_key(signer.public_key_pem).verify(signature, b"manifest bytes")


def test_a_private_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "signing"
    directory.mkdir()
    ec = generate_private_key(SECP256R1())
    pem = ec.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (directory / PRIVATE_KEY_FILE).write_bytes(pem)
    with pytest.raises(BundleError, match="not an ed25519 private key"):
        BundleSigner.load_or_create(directory)
    (directory / PRIVATE_KEY_FILE).write_bytes(b"garbage")
    with pytest.raises(BundleError, match="not a PEM private key"):
        BundleSigner.load_or_create(directory)


def test_sequences_rise_across_signers_threads_and_a_clock_behind(signer: BundleSigner) -> None:
    future = 10**15  # a sequence written by a machine whose clock ran ahead
    (signer.directory / SEQUENCE_FILE).write_text(f"{future}\n")
    assert signer.next_sequence() == future + 1
    other = BundleSigner.load_or_create(signer.directory)
    results: list[int] = []
    lock = threading.Lock()

    def take(source: BundleSigner) -> None:
        for _ in range(20):
            value = source.next_sequence()
            with lock:
                results.append(value)

    threads = [threading.Thread(target=take, args=(s,)) for s in (signer, other) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == list(range(future + 2, future + 82))
    assert signer.last_sequence() == future + 81


def test_a_fresh_sequence_is_the_time_in_milliseconds(signer: BundleSigner) -> None:
    import time

    before = time.time_ns() // 1_000_000
    assert before <= signer.next_sequence() <= time.time_ns() // 1_000_000 + 1


def test_a_damaged_sequence_file_is_refused(signer: BundleSigner) -> None:
    (signer.directory / SEQUENCE_FILE).write_text("twelve")
    with pytest.raises(BundleError, match="does not hold a sequence number"):
        signer.next_sequence()


# -- building --------------------------------------------------------------------------------


def test_build_bundle_carries_models_policy_and_wheels(
    tmp_path: Path, signer: BundleSigner, fake_model: BundleModel
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"rules": [{"level": "restricted", "route": "local"}]}))
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "outpost-0.1.0-py3-none-any.whl").write_bytes(b"PK wheel")
    (wheels / "notes.txt").write_text("not a wheel")
    (wheels / "link-1-py3-none-any.whl").symlink_to(wheels / "notes.txt")
    second = BundleModel("fake-two", FAKE_SHA, len(FAKE_DATA), "fake", "1", fake_model.blob)
    out = tmp_path / "out.tar"
    summary = build_bundle(
        out, [fake_model, second], signer, actor="admin", policy=policy, wheels_dir=wheels
    )
    assert summary.wheels == ("wheels/outpost-0.1.0-py3-none-any.whl",)
    assert summary.policy is True
    assert summary.size_bytes == out.stat().st_size
    assert summary.to_dict()["models"][1]["alias"] == "fake-two"
    target = tmp_path / "x"
    target.mkdir()
    verified = verify_bundle(out, signer.public_key_pem, target)
    manifest = verified.manifest
    assert manifest.created_by == "admin"
    assert manifest.sequence == summary.sequence
    assert [m.path for m in manifest.members] == [  # one member for both aliases
        model_member(FAKE_SHA),
        "policy.json",
        "wheels/outpost-0.1.0-py3-none-any.whl",
    ]
    assert verified.model_file(FAKE_SHA).read_bytes() == FAKE_DATA
    next_one = build_bundle(tmp_path / "b2.tar", [fake_model], signer, actor="admin")
    assert next_one.sequence > summary.sequence


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"[1, 2]", "must be a JSON object"),
        (b"{not json", "is not valid JSON"),
        (b"{" + b" " * (1024 * 1024) + b"}", "larger than 1048576 bytes"),
    ],
)
def test_a_bad_policy_is_refused_before_anything_is_written(
    tmp_path: Path, signer: BundleSigner, fake_model: BundleModel, content: bytes, words: str
) -> None:
    policy = tmp_path / "policy.json"
    policy.write_bytes(content)
    out = tmp_path / "out.tar"
    with pytest.raises(BundleError, match=words):
        build_bundle(out, [fake_model], signer, actor="admin", policy=policy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob", "data", "policy.json"]


def test_a_blob_of_the_wrong_size_or_content_is_refused(
    tmp_path: Path, signer: BundleSigner, fake_model: BundleModel
) -> None:
    out = tmp_path / "out.tar"
    fake_model.blob.write_bytes(FAKE_DATA + b"!")
    with pytest.raises(BundleError, match="has 1089 bytes; the registry says 1088"):
        build_bundle(out, [fake_model], signer, actor="admin")
    fake_model.blob.write_bytes(FAKE_DATA[:-1] + b"!")
    with pytest.raises(BundleError, match="does not hash to"):
        build_bundle(out, [fake_model], signer, actor="admin")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_nothing_to_carry_or_a_missing_directory_is_refused(
    tmp_path: Path, signer: BundleSigner, fake_model: BundleModel
) -> None:
    with pytest.raises(BundleError, match="at least one model"):
        build_bundle(tmp_path / "o.tar", [], signer, actor="admin")
    with pytest.raises(BundleError, match="does not exist"):
        build_bundle(tmp_path / "no" / "o.tar", [fake_model], signer, actor="admin")
    with pytest.raises(BundleError, match="is not a directory"):
        build_bundle(tmp_path / "o.tar", [fake_model], signer, actor="a", wheels_dir=tmp_path / "w")


# -- resolving registry models, and the commands as processes --------------------------------


def _registry_with_demo(data_dir: Path, db: Database, demo_model: Path) -> ModelRegistry:
    registry = ModelRegistry(db, ModelStore(data_dir / "models"), AuditLog(db))
    registry.import_file(demo_model, name="smol", version="1", actor="tests")
    return registry


def test_resolve_models_by_name_version_and_digest(
    tmp_path: Path, database: Database, demo_model: Path
) -> None:
    registry = _registry_with_demo(tmp_path, database, demo_model)
    refs = [model_choice("smol"), model_choice("smol@1=chat"), model_choice(f"sha256:{DEMO_SHA}=x")]
    args = argparse.Namespace(
        data_dir=tmp_path, model=refs, context_length=None, gpu_layers=0, threads=2, queue_depth=8
    )
    models = resolve_models(args, registry)
    assert [m.alias for m in models] == ["smol", "chat", "x"]
    assert {m.sha256 for m in models} == {DEMO_SHA}
    assert models[0].blob == registry.blob_path(DEMO_SHA)  # the layout the CLI assumes
    assert models[0].context_length == 4096  # the demo model was trained on 8192
    assert (models[0].threads, models[0].queue_depth) == (2, 8)
    args.model = [model_choice("smol"), model_choice("smol@1=smol")]
    with pytest.raises(Exception, match="the alias smol is given to two models"):
        resolve_models(args, registry)
    args.model = [model_choice("nope")]
    with pytest.raises(Exception, match="no registered model nope"):
        resolve_models(args, registry)


def _outpost(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(PYTHON), "-m", "controlplane.bundle_cli", "bundle", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_bundle_commands_as_processes(tmp_path: Path, demo_model: Path) -> None:
    data_dir = tmp_path / "data"
    db = Database(f"sqlite:///{data_dir / 'outpost.db'}")
    db.migrate()
    try:
        _registry_with_demo(data_dir, db, demo_model)
    finally:
        db.dispose()
    out = tmp_path / "site.tar"
    created = _outpost(
        "create",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--model",
        "smol=chat",
        "--gpu-layers",
        "-1",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    summary = json.loads(created.stdout)
    assert summary["models"][0]["alias"] == "chat"
    assert summary["models"][0]["gpu_layers"] == -1
    assert summary["size_bytes"] == out.stat().st_size > 98_000_000
    key = _outpost("public-key", "--data-dir", str(data_dir))
    assert key.returncode == 0, key.stderr
    assert key.stdout.encode() == (signing_directory(data_dir) / PUBLIC_KEY_FILE).read_bytes()
    target = tmp_path / "x"
    target.mkdir()
    assert verify_bundle(out, key.stdout.encode(), target).manifest.sequence == summary["sequence"]

    missing = _outpost(
        "create", "--data-dir", str(data_dir), "--out", str(tmp_path / "o.tar"), "--model", "other"
    )
    assert missing.returncode == 2
    assert missing.stderr.startswith("outpost: error: no registered model other")
    nowhere = _outpost("public-key", "--data-dir", str(tmp_path / "typo"))
    assert nowhere.returncode == 2
    assert "is not a directory" in nowhere.stderr
    assert not (tmp_path / "typo").exists()
    bad_ref = _outpost("create", "--data-dir", str(data_dir), "--out", "o", "--model", "=x")
    assert bad_ref.returncode == 2
    assert "use REF or REF=ALIAS" in bad_ref.stderr
