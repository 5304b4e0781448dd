"""`outpost policy ...`: offline validate and explain; the server commands against a real one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.policy.document import MAX_DOCUMENT_BYTES, parse_policy
from controlplane.auth import Role
from controlplane.services import ControlPlaneServices
from tests.cli_calls import NOWHERE, admin, run
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.policy_documents import CLOUD, EXAMPLE, MINIMAL, line_of

UNKNOWN_LEVEL = MINIMAL.replace("max_level: internal", "max_level: secretish")
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    root = tmp_path_factory.mktemp("cp")
    with RunningControlPlane(controlplane_settings(root, None)) as running:
        yield running


@pytest.fixture(scope="module")
def services(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_validate_is_offline_and_points_at_the_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, *NOWHERE, "policy", "validate", str(EXAMPLE))
    assert (status, err) == (0, "")
    assert (
        out
        == f"{EXAMPLE}: valid policy, digest sha256:{parse_policy(EXAMPLE.read_bytes()).digest}\n"
    )
    bad = write(tmp_path, "bad.yaml", UNKNOWN_LEVEL)
    status, out, err = run(capsys, "policy", "validate", str(bad))  # no URL, no key needed
    assert (status, out) == (1, "")
    line = line_of(UNKNOWN_LEVEL, "secretish")
    assert f"{bad}:{line}:" in err
    assert "roles.dev.max_level: unknown level 'secretish'" in err
    assert err.splitlines()[-1] == f"outpost: error: {bad} is not a valid policy (1 problem)"
    status, out, _ = run(capsys, "policy", "validate", str(bad), "--json")
    assert status == 1
    [problem] = json.loads(out)["problems"]
    assert (problem["path"], problem["line"]) == ("roles.dev.max_level", line)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"", "problem"),
        (b"# " + b"x" * MAX_DOCUMENT_BYTES, f"more than {MAX_DOCUMENT_BYTES} bytes"),
        (b"version: 1\x1b[2J\n", "problem"),
    ],
)
def test_validate_refuses_hostile_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, message: str
) -> None:
    path = write(tmp_path, "hostile.yaml", content)
    status, out, err = run(capsys, "policy", "validate", str(path))
    assert (status, out) == (1, "")
    assert message in err
    assert "\x1b" not in err


def test_a_missing_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "policy", "validate", str(tmp_path / "none.yaml"))
    assert status == 1
    assert f"cannot read {tmp_path / 'none.yaml'}" in err
    status, _, err = run(capsys, "policy", "validate", str(tmp_path))
    assert status == 1


def test_explain_a_draft_offline(capsys: pytest.CaptureFixture[str]) -> None:
    prompt = f"refund {CARD}"
    argv = ["policy", "explain", "--role", "developer", "--prompt", prompt, "--file", str(EXAMPLE)]
    status, out, err = run(capsys, *argv, "--json")
    assert (status, err) == (0, "")
    view = json.loads(out)
    assert view["policy"] == {"version": None, "draft": True}
    assert view["level"] == "confidential"
    assert [(f["detector"], f["start"], f["end"]) for f in view["findings"]] == [
        ("payment-cards", 7, 7 + len(CARD))
    ]
    assert view["targets"] == ["site-big", "local-smol"]
    assert CARD not in out
    status, out, _ = run(capsys, *argv)
    assert status == 0
    assert "level:    confidential" in out
    assert "payment-cards (payment_card, confidential) in part 0 at 7-26" in out
    assert "targets:  site-big, local-smol" in out
    assert CARD not in out


def test_explain_refusals_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["policy", "explain", "--prompt", "hi", "--file", str(EXAMPLE)]
    status, out, _ = run(capsys, *argv, "--role", "intruder")
    assert status == 0
    assert "refused:  " in out
    assert "intruder" in out
    status, _, err = run(capsys, *argv, "--role", "x" * 64)
    assert status == 2
    assert "longer than 63" in err
    bad = write(tmp_path, "bad.yaml", UNKNOWN_LEVEL)
    status, _, err = run(
        capsys, "policy", "explain", "--role", "dev", "--prompt", "a", "--file", str(bad)
    )
    assert status == 1
    assert "unknown level 'secretish'" in err
    status, _, err = run(capsys, "policy", "explain", "--prompt", "a")
    assert status == 2
    assert "--role" in err


def test_apply_show_versions_and_explain_live(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write(tmp_path, "minimal.yaml", MINIMAL)
    status, out, err = run(capsys, *admin(cp, "policy", "apply", str(path)))
    assert (status, err) == (0, "")
    live = services.policies.live()
    assert live is not None
    assert live.document == MINIMAL
    assert out == f"policy version {live.version} applied (sha256:{live.digest})\n"
    status, out, _ = run(capsys, *admin(cp, "policy", "apply", str(path)))
    assert out == (
        f"unchanged: version {live.version} is live with this policy (sha256:{live.digest})\n"
    )
    cloud = write(tmp_path, "cloud.yaml", CLOUD)
    status, out, _ = run(capsys, *admin(cp, "policy", "apply", str(cloud), "--json"))
    applied = json.loads(out)
    assert (applied["version"], applied["created"]) == (live.version + 1, True)

    status, out, _ = run(capsys, *admin(cp, "policy", "show"))
    assert status == 0
    assert out.startswith(f"version:  {live.version + 1}\n")
    assert out.endswith("\n\n" + CLOUD)
    status, out, _ = run(
        capsys, *admin(cp, "policy", "show", "--version", str(live.version), "--json")
    )
    assert json.loads(out)["document"] == MINIMAL
    status, _, err = run(capsys, *admin(cp, "policy", "show", "--version", "999"))
    assert (status, err) == (1, "outpost: error: no policy version 999\n")
    status, out, _ = run(capsys, *admin(cp, "policy", "versions"))
    rows = out.splitlines()
    assert rows[0].split() == ["VERSION", "DIGEST", "APPLIED", "BY"]
    assert rows[1].split()[0] == str(live.version + 1)

    viewer = services.api_keys.create("viewer-cli", Role.VIEWER)[0]
    argv = ["policy", "explain", "--role", "dev", "--prompt", "hello", "--json"]
    status, out, err = run(capsys, *admin(cp, *argv, key=viewer))
    assert (status, err) == (0, "")
    view = json.loads(out)
    assert view["policy"] == {"version": live.version + 1, "draft": False}
    assert (view["route"], view["targets"]) == ("all", ["cloud", "here"])


def test_apply_refusals_exit_1(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run(capsys, *admin(cp, "policy", "apply", str(write(tmp_path, "m.yaml", MINIMAL))))
    before = services.policies.live()
    bad = write(tmp_path, "bad.yaml", UNKNOWN_LEVEL)
    status, out, err = run(capsys, *admin(cp, "policy", "apply", str(bad)))
    assert (status, out) == (1, "")
    assert f"{bad}:{line_of(UNKNOWN_LEVEL, 'secretish')}:" in err
    assert "roles.dev.max_level: unknown level 'secretish'" in err
    operator = services.api_keys.create("ops-cli", Role.OPERATOR)[0]
    status, _, err = run(
        capsys, *admin(cp, "policy", "apply", str(write(tmp_path, "c.yaml", CLOUD)), key=operator)
    )
    assert status == 1
    assert "admin only" in err
    assert services.policies.live() == before
    status, _, err = run(capsys, *NOWHERE, "policy", "apply", str(EXAMPLE))
    assert status == 1
    assert "cannot reach the control plane" in err
