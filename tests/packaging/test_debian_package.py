"""The outpost-agent .deb, built in the test run: its contents, lintian, and a real install on
this machine that enrolls and serves, an upgrade that keeps config and models, remove, purge."""

from __future__ import annotations

import grp
import io
import os
import pwd
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx
import pytest

from agent.demo_model import SMOLLM2
from tests.controlplane_harness import RunningControlPlane, controlplane_settings, wait_until
from tests.packaging.debian_host import (
    BUILD_SCRIPT,
    CACHE_DIR,
    CONFIG_PATH,
    ENABLED_LINK,
    ENVIRONMENT_DIR,
    PACKAGE,
    STATE_DIR,
    UNIT_PATH,
    NotifyListener,
    build_deb,
    installed_version,
    is_known_to_dpkg,
    purge_leftovers,
    require_root,
    run,
    unit_directives,
    unit_process,
)
from tests.packaging.unit_files import project_version

OLD = f"{project_version()}-1"
NEW = f"{project_version()}-2"


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Two builds of this checkout, an older and a newer package version; whatever they
    installed is purged at the end."""
    require_root()
    out_dir = tmp_path_factory.mktemp("debs")
    built = {version: build_deb(version, out_dir) for version in (OLD, NEW)}
    yield built
    purge_leftovers()


def deb_field(deb: Path, field: str) -> str:
    return run("dpkg-deb", "--field", deb, field).stdout.strip()


def test_the_package_holds_the_environment_unit_config_and_scripts(debs: dict[str, Path]) -> None:
    deb = debs[OLD]
    assert deb.name == f"outpost-agent_{OLD}_amd64.deb"
    assert deb_field(deb, "Package") == PACKAGE
    assert deb_field(deb, "Version") == OLD
    assert deb_field(deb, "Architecture") == "amd64"
    depends = deb_field(deb, "Depends")
    for needed in ("python3.11", "adduser", "libgomp1", "libstdc++6", "libc6"):
        assert needed in depends, depends
    with tempfile.TemporaryDirectory() as scratch:
        control = Path(scratch)
        run("dpkg-deb", "--control", deb, control)
        assert (control / "conffiles").read_text().split() == [str(CONFIG_PATH)]
        for script in ("postinst", "prerm", "postrm"):
            mode = (control / script).stat().st_mode
            assert mode & stat.S_IXUSR, script
            run("sh", "-n", control / script)  # parses
            text = (control / script).read_text()
            assert text.startswith("#!/bin/sh\n")
            assert "set -e" in text
        assert "adduser" in (control / "postinst").read_text()
        assert "rm -rf /var/lib/outpost-agent" in (control / "postrm").read_text()
    with tarfile.open(fileobj=_data_member(deb)) as data:
        members = {m.name.removeprefix("./"): m for m in data.getmembers()}
        assert "lib/systemd/system/outpost-agent.service" in members
        assert "etc/outpost/agent.toml" in members
        assert "usr/share/doc/outpost-agent/copyright" in members
        agent = members["opt/outpost-agent/bin/outpost-agent"]
        assert agent.mode & stat.S_IXUSR
        assert (agent.uid, agent.gid) == (0, 0)
        reader = data.extractfile(agent)
        assert reader is not None
        assert reader.readline() == b"#!/opt/outpost-agent/bin/python\n"
        assert members["opt/outpost-agent/bin/python3.11"].linkname == "/usr/bin/python3.11"
        names = set(members)
        assert any(n.endswith("/llama_cpp/lib/libllama.so") for n in names)
        assert any("/site-packages/grpc/" in n for n in names)
        assert not any("__pycache__" in n for n in names)  # made by postinst, for this Python
        assert not any(n.startswith("opt/outpost-agent/bin/activate") for n in names)
        config = data.extractfile(members["etc/outpost/agent.toml"])
        assert config is not None
        assert b'state_dir = "/var/lib/outpost-agent"' in config.read()


def _data_member(deb: Path) -> IO[bytes]:
    """The package's files as one tar stream (dpkg-deb --fsys-tarfile), held in memory."""
    extracted = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    assert extracted.returncode == 0, extracted.stderr
    return io.BytesIO(extracted.stdout)


def test_lintian_finds_no_errors_or_warnings(debs: dict[str, Path]) -> None:
    """Every remaining finding is overridden with its reason in packaging/debian/lintian-overrides
    (the environment in /opt, the wheels' unstripped libraries, ...)."""
    checked = run("lintian", "--fail-on", "error,warning", debs[OLD], check=False)
    findings = [line for line in checked.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert findings == [], checked.stdout
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_install_verify_enroll_serve_upgrade_remove_and_purge(
    debs: dict[str, Path], demo_model: Path, tmp_path: Path
) -> None:
    purge_leftovers()
    run("dpkg", "--install", debs[OLD])
    assert installed_version() == OLD
    user = pwd.getpwnam("outpost-agent")
    assert user.pw_dir == str(STATE_DIR)
    assert user.pw_shell.endswith("nologin")
    for directory in (STATE_DIR, CACHE_DIR):
        assert _owner_and_mode(directory) == ("outpost-agent", "outpost-agent", 0o750)
    assert _owner_and_mode(CONFIG_PATH) == ("root", "outpost-agent", 0o640)
    assert ENABLED_LINK.is_symlink()  # enabled; started by systemd where it runs
    assert any(ENVIRONMENT_DIR.rglob("__pycache__/*.cpython-311.pyc"))
    # The installed unit verifies clean (its ExecStart exists now) and runs the installed agent
    verified = run("systemd-analyze", "verify", UNIT_PATH, check=False)
    assert verified.stdout + verified.stderr == "", verified
    assert verified.returncode == 0
    exec_start = unit_directives()["ExecStart"][0].split()
    assert Path(exec_start[0]).is_relative_to(ENVIRONMENT_DIR)
    assert os.access(exec_start[0], os.X_OK)
    assert exec_start[1:] == ["run", "--config", str(CONFIG_PATH)]

    with RunningControlPlane(controlplane_settings(tmp_path / "cp", None)) as cp:
        token = cp.create_token(site="branch")
        # The operator's edit: enrollment settings, and ports the test picks (0: any free one)
        edited = CONFIG_PATH.read_text().replace("grpc_port = 50051", "grpc_port = 0")
        edited = edited.replace("http_port = 8080", "http_port = 0")
        edited += (
            f'control_plane = "{cp.enroll_address}"\njoin_token = "{token}"\n'
            f'ca_fingerprint = "{cp.fingerprint}"\n'
        )
        CONFIG_PATH.write_text(edited)
        with _serving_agent() as http_port:
            with cp.api() as api:
                # READY=1 comes once it serves; it enrolls with the token after that
                wait_until(lambda: bool(api.get("/agents").json()["agents"]), "enrolled", 60)
                agents = api.get("/agents").json()["agents"]
            assert [a["site"] for a in agents] == ["branch"]
            cp.assign_demo_model(demo_model, agents[0]["id"])
            _wait_until_it_answers(http_port)
    assert _stored_model(SMOLLM2.sha256).stat().st_size == SMOLLM2.size_bytes

    # Upgrade: config (edited, a conffile) and the state (identity, model) are kept. The
    # control plane is gone: the agent serves its stored desired state.
    run("dpkg", "--install", debs[NEW])
    assert installed_version() == NEW
    assert CONFIG_PATH.read_text() == edited
    assert _owner_and_mode(CONFIG_PATH) == ("root", "outpost-agent", 0o640)
    with _serving_agent() as http_port:
        _wait_until_it_answers(http_port)

    run("dpkg", "--remove", PACKAGE)
    assert installed_version() is None
    assert is_known_to_dpkg()
    assert not ENVIRONMENT_DIR.exists()
    assert not UNIT_PATH.exists()
    assert CONFIG_PATH.read_text() == edited
    assert _stored_model(SMOLLM2.sha256).stat().st_size == SMOLLM2.size_bytes

    run("dpkg", "--purge", PACKAGE)
    assert not is_known_to_dpkg()
    masked_by_remove = Path("/etc/systemd/system/outpost-agent.service")
    for gone in (CONFIG_PATH.parent, STATE_DIR, CACHE_DIR, ENVIRONMENT_DIR, ENABLED_LINK,
                 masked_by_remove):  # fmt: skip
        assert not gone.exists(), gone
        assert not gone.is_symlink(), gone


def _owner_and_mode(path: Path) -> tuple[str, str, int]:
    status = path.stat()
    owner = pwd.getpwuid(status.st_uid).pw_name
    group = grp.getgrgid(status.st_gid).gr_name
    return owner, group, stat.S_IMODE(status.st_mode)


def _stored_model(sha256: str) -> Path:
    """The verified model file in the agent's state directory."""
    found = [p for p in STATE_DIR.rglob("*") if p.is_file() and sha256 in p.name]
    assert len(found) == 1, sorted(str(p) for p in STATE_DIR.rglob("*"))
    return found[0]


@contextmanager
def _serving_agent() -> Iterator[int]:
    """The installed unit's command, running until systemd would call it started (READY=1);
    answers its HTTP port. Stopped with SIGTERM afterwards: a clean exit."""
    notify = NotifyListener()
    try:
        with unit_process(notify) as agent:
            notify.wait_for("READY=1")
            port = int(agent.wait_for(r"HTTP listening on http://127\.0\.0\.1:(\d+)").group(1))
            yield port
            assert agent.stop() == 0, "".join(agent.lines)
        assert "STOPPING=1" in notify.messages
    finally:
        notify.close()


def _wait_until_it_answers(http_port: int) -> None:
    """The agent serves smol: it lists it, and a chat completion comes back."""
    base = f"http://127.0.0.1:{http_port}"

    def listed() -> bool:
        models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
        return any(m["id"] == "smol" for m in models)

    wait_until(listed, "the agent serves smol", timeout=120)
    answer = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": "smol", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"]


def test_the_build_refuses_bad_input_with_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        ("--version", "not a version"): "is not a Debian version",
        ("--version", "1.0-1;rm -rf /"): "is not a Debian version",
        ("--wheelhouse", str(empty)): "no wheels in",
        ("--compression", "lzip"): "compression must be one of",
        ("--python", str(tmp_path / "nope")): "is not an executable Python",
    }
    for arguments, message in cases.items():
        result = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT), "--out", str(tmp_path / "out"), *arguments],
            capture_output=True,
            text=True,
        )
        assert message in result.stderr, (arguments, result.stderr)
        assert result.returncode == 2, arguments
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
