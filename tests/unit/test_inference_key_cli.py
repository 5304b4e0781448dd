"""`outpost inference-keys ...` against a real control plane on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from controlplane.auth import Role
from controlplane.inference_keys import INFERENCE_KEY_PATTERN
from controlplane.services import ControlPlaneServices
from tests.cli_calls import NOWHERE, admin, run
from tests.controlplane_harness import RunningControlPlane, controlplane_settings


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    root = tmp_path_factory.mktemp("cp")
    with RunningControlPlane(controlplane_settings(root, None)) as running:
        yield running


@pytest.fixture(scope="module")
def services(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


def test_create_prints_the_key_once_then_list_and_revoke(
    cp: RunningControlPlane, services: ControlPlaneServices, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = admin(cp, "inference-keys", "create", "app", "--role", "dev", "--team", "search")
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    key = out.strip()
    assert INFERENCE_KEY_PATTERN.fullmatch(key)
    assert "shown only this once" in err
    assert "warning: no routing policy" in err
    record = next(k for k in services.inference_keys.list() if k.prefix == key[:8])
    assert (record.name, record.role, record.team) == ("app", "dev", "search")

    status, out, err = run(capsys, *admin(cp, "inference-keys", "list"))
    assert status == 0, err
    assert out.splitlines()[0].split() == [
        *("ID", "NAME", "PREFIX", "ROLE", "TEAM", "CREATED", "BY", "REVOKED"),
    ]
    assert any(
        line.split()[:5] == [str(record.id), "app", key[:8], "dev", "search"]
        for line in out.splitlines()
    )
    assert key not in out

    status, out, err = run(capsys, *admin(cp, "inference-keys", "revoke", str(record.id)))
    assert (status, out) == (0, f"revoked inference key {record.id}\n")
    assert record.id not in [k.id for k in services.inference_keys.list()]
    status, out, _ = run(capsys, *admin(cp, "inference-keys", "list", "--all", "--json"))
    listed = {k["id"]: k for k in json.loads(out)}
    assert listed[record.id]["revoked_at"] is not None


def test_create_json_has_the_whole_answer(
    cp: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = admin(
        cp, "inference-keys", "create", "bi", "--role", "analyst", "--team", "bi", "--json"
    )
    status, out, err = run(capsys, *argv)
    assert (status, err) == (0, "")
    body = json.loads(out)
    assert INFERENCE_KEY_PATTERN.fullmatch(body["key"])
    assert (body["role"], body["team"]) == ("analyst", "bi")
    assert isinstance(body["warnings"], list)


@pytest.mark.parametrize(
    "argv",
    [
        ["inference-keys", "create", "app", "--role", "dev"],  # no --team
        ["inference-keys", "create", "--role", "dev", "--team", "t"],  # no name
        ["inference-keys", "revoke", "0"],
        ["inference-keys", "revoke", "-3"],
        ["inference-keys", "revoke", "../agents"],
        ["inference-keys", "revoke", str(2**63)],
        ["inference-keys", "revoke", "\u0663"],  # an Arabic-Indic digit
        ["inference-keys", "frobnicate"],
    ],
)
def test_usage_mistakes_exit_2_without_a_server(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, out, _ = run(capsys, *NOWHERE, *argv)
    assert (status, out) == (2, "")


def test_server_refusals_exit_1_with_its_message(
    cp: RunningControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    bad_team = admin(cp, "inference-keys", "create", "app", "--role", "dev", "--team", "a b")
    status, out, err = run(capsys, *bad_team)
    assert (status, out) == (1, "")
    assert "'team'" in err
    status, _, err = run(capsys, *admin(cp, "inference-keys", "revoke", "999999"))
    assert status == 1
    assert "no inference key 999999" in err
    viewer = cp.server.services.api_keys.create("viewer-cli", Role.VIEWER)[0]  # type: ignore[union-attr]
    argv = admin(cp, "inference-keys", "create", "x", "--role", "r", "--team", "t", key=viewer)
    status, _, err = run(capsys, *argv)
    assert status == 1
    assert "admin" in err
