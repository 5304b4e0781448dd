"""Bundle format: writing, the manifest schema, and hostile tar files the reader must refuse."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.bundle_format import (
    MAX_MODELS,
    BundleError,
    ManifestModel,
    check_manifest,
    key_id_of,
    model_member,
    write_bundle,
)
from common.bundle_reader import open_bundle, verify_bundle

MODEL_DATA = b"not a real model, just bytes to carry " * 100
MODEL_SHA = hashlib.sha256(MODEL_DATA).hexdigest()
CREATED_AT = "2026-01-02T03:04:05Z"


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def manifest_document(
    key: Ed25519PrivateKey, sequence: int = 1, data: bytes = MODEL_DATA
) -> dict[str, Any]:
    sha256 = hashlib.sha256(data).hexdigest()
    return {
        "format": "outpost-bundle/1",
        "sequence": sequence,
        "created_at": CREATED_AT,
        "created_by": "tests",
        "key_id": key_id_of(key.public_key()),
        "members": [{"path": model_member(sha256), "sha256": sha256, "size_bytes": len(data)}],
        "models": [asdict(ManifestModel("fake", sha256, len(data), "fake", "1", 512, 0, 1, 4))],
        "policy": None,
        "wheels": [],
    }


@dataclass
class Member:
    """One tar member of a hand-made bundle."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # the size the header claims (default: len(data))
    pax: dict[str, str] = field(default_factory=dict)


def raw_bundle(
    path: Path,
    key: Ed25519PrivateKey,
    *,
    document: dict[str, Any] | bytes | None = None,
    members: list[Member] | None = None,
    signature: bytes | None = None,
    signed: bool = True,
    lead: list[Member] | None = None,
) -> Path:
    """A bundle built member by member with tarfile, so that anything may be wrong with it."""
    document = manifest_document(key) if document is None else document
    manifest = document if isinstance(document, bytes) else json.dumps(document).encode()
    entries = [*(lead or []), Member("manifest.json", manifest)]
    if signed:
        entries.append(Member("manifest.sig", signature or key.sign(manifest)))
    entries += [Member(model_member(MODEL_SHA), MODEL_DATA)] if members is None else members
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type, info.linkname, info.pax_headers = entry.type, entry.linkname, entry.pax
            is_file = entry.type == tarfile.REGTYPE
            info.size = len(entry.data) if is_file else 0
            tar.addfile(info, io.BytesIO(entry.data) if is_file else None)
            if entry.size is not None:  # rewrite the header's size field in place
                header_at = buffer.tell() - tarfile.BLOCKSIZE * (1 + -(-len(entry.data) // 512))
                raw = bytearray(buffer.getbuffer()[header_at : header_at + 512])
                raw[124:136] = b"%011o\0" % entry.size
                raw[148:156] = b" " * 8
                raw[148:155] = b"%06o\0" % sum(raw)
                buffer.getbuffer()[header_at : header_at + 512] = bytes(raw)
    path.write_bytes(buffer.getvalue())
    return path


def edited(key: Ed25519PrivateKey, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    change(document := manifest_document(key))
    return document


def _setitem(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target: Any = document
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        target[int(last) if isinstance(target, list) else last] = value

    return change


OTHER_SHA = "0" * 64
# Each: a manifest change that a signed bundle must still be refused for, and the words why.
BAD_MANIFESTS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "wrong format": (_setitem("format", "outpost-bundle/2"), "format must be"),
    "sequence a string": (_setitem("sequence", "7"), "sequence must be an integer"),
    "sequence a bool": (_setitem("sequence", True), "sequence must be an integer"),
    "sequence zero": (_setitem("sequence", 0), "at least 1"),
    "created_at not UTC": (_setitem("created_at", "2026-01-02T03:04:05+02:00"), "UTC"),
    "created_at no zone": (_setitem("created_at", "2026-01-02T03:04:05"), "UTC"),
    "unknown field": (_setitem("extra", 1), "unknown fields ['extra']"),
    "missing field": (lambda d: d.pop("policy"), "missing fields ['policy']"),
    "key id not hex": (_setitem("key_id", "xyz"), "key_id must be 64 lowercase hex"),
    "members not a list": (_setitem("members", {}), "members must be a list"),
    "negative size": (_setitem("members.0.size_bytes", -1), "must not be negative"),
    "size a float": (_setitem("members.0.size_bytes", 1.5), "size_bytes must be an integer"),
    "digest upper case": (_setitem("members.0.sha256", MODEL_SHA.upper()), "lowercase hex"),
    "member outside the layout": (_setitem("members.0.path", "etc/passwd"), "is not models/"),
    "member traversal": (_setitem("members.0.path", "models/../../x.gguf"), "is not models/"),
    "member named for another sha": (
        _setitem("members.0.path", model_member(OTHER_SHA)),
        "named after another sha256",
    ),
    "model not among members": (_setitem("models.0.sha256", OTHER_SHA), "no member"),
    "model size differs": (_setitem("models.0.size_bytes", 5), "no member"),
    "alias with a slash": (_setitem("models.0.alias", "a/b"), "alias must be"),
    "context too small": (_setitem("models.0.context_length", 8), "context_length must be"),
    "threads negative": (_setitem("models.0.threads", -1), "threads must be"),
    "name empty": (_setitem("models.0.name", ""), "name must be 1 to"),
    "name with control": (_setitem("models.0.name", "a\nb"), "printable"),
    "policy without member": (_setitem("policy", "policy.json"), "policy must be"),
    "policy elsewhere": (_setitem("policy", "../policy.json"), "policy must be"),
    "wheels not listed": (
        lambda d: d["members"].append(
            {"path": "wheels/a-1-py3-none-any.whl", "sha256": OTHER_SHA, "size_bytes": 1}
        ),
        "wheels must list",
    ),
    "wheels not strings": (_setitem("wheels", [1]), "wheels must list"),
    "duplicate alias": (lambda d: d["models"].append(dict(d["models"][0])), "alias is listed"),
    "duplicate member": (lambda d: d["members"].append(dict(d["members"][0])), "listed twice"),
    "too many models": (
        lambda d: d.update(models=[d["models"][0]] * (MAX_MODELS + 1)),
        f"at most {MAX_MODELS} models",
    ),
    "not an object": (lambda d: d.clear(), "missing fields"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_check_manifest_refuses_bad_documents(key: Ed25519PrivateKey, case: str) -> None:
    change, words = BAD_MANIFESTS[case]
    with pytest.raises(BundleError, match="invalid bundle manifest") as caught:
        check_manifest(edited(key, change))
    assert words in str(caught.value)


def test_check_manifest_accepts_a_good_document(key: Ed25519PrivateKey) -> None:
    manifest = check_manifest(manifest_document(key, sequence=9))
    assert manifest.sequence == 9
    assert manifest.models[0] == ManifestModel(
        "fake", MODEL_SHA, len(MODEL_DATA), "fake", "1", 512, 0, 1, 4
    )


def _write(
    tmp_path: Path,
    key: Ed25519PrivateKey,
    *,
    model_data: bytes = MODEL_DATA,
    models: list[ManifestModel] | None = None,
    extras: bool = True,
) -> Path:
    model = tmp_path / "model.bin"
    model.write_bytes(model_data)
    files = [(model_member(MODEL_SHA), model)]
    if extras:
        policy = tmp_path / "policy-src.json"
        policy.write_text('{"rules": []}')
        wheel = tmp_path / "outpost-0.1.0-py3-none-any.whl"
        wheel.write_bytes(b"PK\x03\x04 wheel bytes")
        files = [(f"wheels/{wheel.name}", wheel), ("policy.json", policy), *files]
    entry = ManifestModel("fake", MODEL_SHA, len(MODEL_DATA), "fake", "1", 512, 0, 1, 4)
    out = tmp_path / "bundle.tar"
    write_bundle(
        out,
        sequence=5,
        created_by="tests",
        key_id=key_id_of(key.public_key()),
        models=models or [entry],
        files=files,
        sign=key.sign,
    )
    return out


def test_round_trip_writes_members_in_order_and_extracts_them(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = _write(tmp_path, key)
    with tarfile.open(out, "r:") as tar:
        names = tar.getnames()
    assert names == [
        "manifest.json",
        "manifest.sig",
        model_member(MODEL_SHA),
        "policy.json",
        "wheels/outpost-0.1.0-py3-none-any.whl",
    ]
    target = tmp_path / "extracted"
    target.mkdir()
    verified = verify_bundle(out, public_pem(key), target)
    assert verified.manifest.sequence == 5
    assert verified.model_file(MODEL_SHA).read_bytes() == MODEL_DATA
    assert verified.policy_file is not None
    assert verified.policy_file.read_text() == '{"rules": []}'
    assert [p.name for p in verified.wheel_files] == ["outpost-0.1.0-py3-none-any.whl"]
    assert list(tmp_path.glob(".bundle.tar.*")) == []  # no temporary file left behind


def test_writer_refuses_a_model_that_does_not_hash_to_its_name(
    tmp_path: Path, key: Ed25519PrivateKey
) -> None:
    out = tmp_path / "bundle.tar"
    out.write_bytes(b"the previous bundle")
    with pytest.raises(BundleError, match="does not hash to"):
        _write(tmp_path, key, model_data=MODEL_DATA[:-1] + b"X", extras=False)
    assert out.read_bytes() == b"the previous bundle"  # replaced only when complete
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_writer_refuses_what_a_reader_would_refuse(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    bad = ManifestModel("no spaces", MODEL_SHA, len(MODEL_DATA), "fake", "1", 512, 0, 1, 4)
    with pytest.raises(BundleError, match="alias must be"):
        _write(tmp_path, key, models=[bad])
    assert not (tmp_path / "bundle.tar").exists()


# -- hostile bundles: each refused with a clear message, nothing left in the target ----------


def hostile_cases(key: Ed25519PrivateKey, other: Ed25519PrivateKey) -> dict[str, Any]:
    """name -> (function writing the bundle to a path, words of the error)."""
    flipped = bytearray(MODEL_DATA)
    flipped[100] ^= 0x01
    good = manifest_document(key)
    model = Member(model_member(MODEL_SHA), MODEL_DATA)
    return {
        "path traversal ..": (dict(members=[model, Member("../x", b"evil")]), "unsafe path"),
        "absolute path": (dict(members=[model, Member("/etc/x", b"evil")]), "unsafe path"),
        "backslash path": (dict(members=[model, Member("models\\x", b"e")]), "unsafe path"),
        "symlink": (
            dict(members=[Member(model.name, type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
            "is a symbolic link",
        ),
        "hardlink": (
            dict(members=[Member(model.name, type=tarfile.LNKTYPE, linkname="manifest.json")]),
            "is a hard link",
        ),
        "directory": (dict(members=[Member("models", type=tarfile.DIRTYPE)]), "a directory"),
        "device": (dict(members=[Member(model.name, type=tarfile.CHRTYPE)]), "a device"),
        "member not in manifest": (
            dict(members=[model, Member("wheels/evil-1-py3-none-any.whl", b"x")]),
            "is not in the manifest",
        ),
        "missing member": (dict(members=[]), f"member {model.name} is missing"),
        "duplicate member": (dict(members=[model, model]), "appears twice"),
        "flipped byte": (
            dict(members=[Member(model.name, bytes(flipped))]),
            "does not match its sha256",
        ),
        "larger than declared": (
            dict(members=[Member(model.name, MODEL_DATA + b"more")]),
            "larger than declared",
        ),
        "header claims more": (
            dict(members=[Member(model.name, MODEL_DATA, size=len(MODEL_DATA) + 1)]),
            "larger than declared",
        ),
        "unsigned": (dict(signed=False), "the bundle is not signed"),
        "model before the manifest": (dict(lead=[model]), "must start with manifest.json"),
        "signed by another key": (
            dict(
                document=manifest_document(other),
                signature=other.sign(json.dumps(manifest_document(other)).encode()),
            ),
            "signed by another key",
        ),
        "signature by another key, manifest names ours": (
            dict(signature=other.sign(json.dumps(good).encode())),
            "does not verify with the pinned key",
        ),
        "short signature": (dict(signature=b"x" * 10), "64-byte ed25519 signature"),
        "manifest edited after signing": (
            dict(
                signature=key.sign(json.dumps(good).encode()),
                document=edited(key, _setitem("models.0.threads", 2)),
            ),
            "does not verify",
        ),
        "malformed manifest json": (dict(document=b'{"format": '), "not valid JSON"),
        "deeply nested manifest": (dict(document=b"[" * 100_000), "not valid JSON"),
        "manifest with wrong types": (
            dict(document=edited(key, _setitem("sequence", "1"))),
            "invalid bundle manifest",
        ),
        "oversized manifest": (dict(document=b" " * (1024 * 1024 + 1)), "at most 1048576"),
        "pax header bomb": (
            dict(members=[Member(model.name, MODEL_DATA, pax={"comment": "x" * 200_000})]),
            "tar header larger than allowed",
        ),
        "truncated in a member": (dict(truncate="in a member"), "end of data (in member models/"),
        "truncated at a member": (dict(truncate="at a member"), "is missing"),
    }


def _bundle(tmp_path: Path, key: Ed25519PrivateKey, spec: dict[str, Any]) -> Path:
    path = tmp_path / "hostile.tar"
    if "truncate" not in spec:
        return raw_bundle(path, key, **spec)
    full = raw_bundle(tmp_path / "full.tar", key)
    with tarfile.open(full, "r:") as tar:
        member = tar.getmember(model_member(MODEL_SHA))
    cut = member.offset if spec["truncate"] == "at a member" else member.offset_data + 1000
    path.write_bytes(full.read_bytes()[:cut])
    return path


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.mark.parametrize(
    "case",
    sorted(hostile_cases(Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate())),
)
def test_reader_refuses_hostile_bundles(
    tmp_path: Path, key: Ed25519PrivateKey, other_key: Ed25519PrivateKey, case: str
) -> None:
    spec, words = hostile_cases(key, other_key)[case]
    path = _bundle(tmp_path, key, spec)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(BundleError) as caught:
        verify_bundle(path, public_pem(key), target)
    assert words in str(caught.value)
    assert [p for p in target.rglob("*") if p.is_file()] == []
    assert not (tmp_path / "x").exists()
    assert not Path("/etc/x").exists()


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not a readable bundle"),
        (b"hello, this is not a tar file at all" * 40, "not a readable bundle"),
        (b"BZh91AY&SY" + b"\0" * 600, "bzip2-compressed"),
    ],
)
def test_reader_refuses_files_that_are_not_plain_tar(
    tmp_path: Path, key: Ed25519PrivateKey, content: bytes, words: str
) -> None:
    path = tmp_path / "bundle.tar"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=words):
        open_bundle(path, public_pem(key))


def test_reader_refuses_a_gzipped_real_bundle(tmp_path: Path, key: Ed25519PrivateKey) -> None:
    plain = raw_bundle(tmp_path / "plain.tar", key)
    packed = tmp_path / "bundle.tar.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(BundleError, match="gzip-compressed; a bundle is a plain, uncompressed tar"):
        open_bundle(packed, public_pem(key))
