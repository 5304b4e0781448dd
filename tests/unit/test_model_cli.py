"""`outpost models ...` and `outpost rollout status` against a real control plane."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.control import AgentStatus, ItemState, ItemStatus
from controlplane import cli
from controlplane.auth import Role
from controlplane.services import ControlPlaneServices
from tests.cli_calls import admin, run
from tests.controlplane_harness import RunningControlPlane, controlplane_settings
from tests.unit.test_controlplane_api import enroll
from tests.unit.test_gguf_info import write_adapter, write_gguf

DEMO_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEMO_BYTES = 98_362_432
_CONTEXTS = itertools.count(1000)  # each tiny model a different file
_SEEDS = itertools.count(100)  # each tiny adapter a different file


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningControlPlane]:
    root = tmp_path_factory.mktemp("cp")
    with RunningControlPlane(controlplane_settings(root, None)) as running:
        yield running


@pytest.fixture(scope="module")
def services(cp: RunningControlPlane) -> ControlPlaneServices:
    assert cp.server.services is not None
    return cp.server.services


@pytest.fixture(scope="module")
def operator_key(services: ControlPlaneServices) -> str:
    return services.api_keys.create("ops", Role.OPERATOR)[0]


def ok(capsys: pytest.CaptureFixture[str], cp: RunningControlPlane, *argv: str) -> str:
    status, out, err = run(capsys, *admin(cp, *argv))
    assert status == 0, err
    return out


def ok_json(capsys: pytest.CaptureFixture[str], cp: RunningControlPlane, *argv: str) -> Any:
    return json.loads(ok(capsys, cp, *argv, "--json"))


def tiny_model(tmp_path: Path, capsys: pytest.CaptureFixture[str], cp: RunningControlPlane) -> str:
    """A small GGUF of its own, imported under a fresh name; returns the name."""
    name = f"tiny-{uuid.uuid4().hex[:8]}"
    path = write_gguf(tmp_path / f"{name}.gguf", context_length=next(_CONTEXTS))
    ok(capsys, cp, "models", "import", str(path))
    return name


def tiny_adapter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cp: RunningControlPlane, **fields: Any
) -> dict[str, Any]:
    """A small LoRA adapter for llama models, imported under a fresh name; its JSON view."""
    name = f"lora-{uuid.uuid4().hex[:8]}"
    path = write_adapter(tmp_path / f"{name}.gguf", seed=next(_SEEDS), **fields)
    return dict(ok_json(capsys, cp, "models", "import", str(path)))


@pytest.fixture(scope="module")
def demo_import(cp: RunningControlPlane, demo_model: Path) -> tuple[int, dict[str, Any], str]:
    """`outpost models import` of the demo model: status, the JSON it printed, stderr."""
    argv = admin(cp, "models", "import", str(demo_model), "--name", "smollm2", "--json")
    return _capture(argv)


def _capture(argv: list[str]) -> tuple[int, dict[str, Any], str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv, environ={})
    return status, json.loads(out.getvalue() or "{}"), err.getvalue()


# -- the registry --------------------------------------------------------------------------


def test_import_uploads_the_demo_model(
    demo_import: tuple[int, dict[str, Any], str], demo_model: Path
) -> None:
    status, model, err = demo_import
    assert status == 0, err
    assert (model["name"], model["version"]) == ("smollm2", "1")
    assert model["sha256"] == DEMO_SHA256 == hashlib.sha256(demo_model.read_bytes()).hexdigest()
    assert (model["size_bytes"], model["architecture"]) == (DEMO_BYTES, "llama")
    assert model["digest"] == f"sha256:{DEMO_SHA256}"


def test_list_and_show(
    cp: RunningControlPlane,
    demo_import: tuple[int, dict[str, Any], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    listed = ok_json(capsys, cp, "models", "list")
    [demo] = [m for m in listed if m["name"] == "smollm2"]
    assert demo == demo_import[1]
    table = ok(capsys, cp, "models", "list")
    assert table.splitlines()[0].split() == [
        *("NAME", "VERSION", "KIND", "DIGEST", "SIZE", "ARCH", "QUANT", "CONTEXT", "CREATED")
    ]
    row = next(line for line in table.splitlines() if line.startswith("smollm2 "))
    assert row.split()[:8] == [
        *("smollm2", "1", "model", f"sha256:{DEMO_SHA256[:12]}", "93.8", "MiB", "llama", "Q4_1")
    ]
    for ref in ("smollm2", "smollm2@1", f"sha256:{DEMO_SHA256}"):
        assert ok_json(capsys, cp, "models", "show", ref) == demo
    shown = ok(capsys, cp, "models", "show", "smollm2")
    assert f"sha256:           {DEMO_SHA256}" in shown.splitlines()
    assert "chat_template" not in shown
    status, _, err = run(capsys, *admin(cp, "models", "show", "nosuch"))
    assert (status, err.strip()) == (1, "outpost: error: no registered model nosuch")


def test_import_without_json_says_what_it_stored(
    cp: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_gguf(tmp_path / "Fancy Model v2!.gguf", context_length=111)
    out = ok(capsys, cp, "models", "import", str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    size = path.stat().st_size
    assert out == f"imported Fancy-Model-v2@1 ({digest}, {size} B)\n"
    again = ok_json(capsys, cp, "models", "import", str(path), "--name", "fancy", "--version", "b")
    assert (again["name"], again["version"], again["digest"]) == ("fancy", "b", digest)


def test_import_by_server_path_needs_an_admin(
    cp: RunningControlPlane,
    operator_key: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_gguf(tmp_path / "on-the-server.gguf", context_length=333)
    url = f"http://127.0.0.1:{cp.ports.http}"
    argv = ["models", "import", str(path), "--server-path", "--name", "served"]
    status, out, err = run(capsys, "--url", url, "--api-key", operator_key, *argv)
    assert (status, out) == (1, "")
    assert "operator" in err
    model = ok_json(capsys, cp, *argv)
    assert (model["name"], model["version"]) == ("served", "1")
    assert model["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    status, _, err = run(capsys, *admin(cp, "models", "import", "/no/such.gguf", "--server-path"))
    assert status == 1
    assert "/no/such.gguf does not exist" in err


def test_an_operator_uploads(
    cp: RunningControlPlane, operator_key: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_gguf(tmp_path / "ops.gguf", context_length=444)
    url = f"http://127.0.0.1:{cp.ports.http}"
    status, out, err = run(
        capsys, "--url", url, "--api-key", operator_key, "models", "import", str(path), "--json"
    )
    assert status == 0, err
    assert json.loads(out)["created_by"] == "ops"


def test_a_file_that_is_not_gguf_is_refused(
    cp: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "notes.gguf"
    path.write_bytes(b"just some text, not a model\n" * 100)
    before = len(ok_json(capsys, cp, "models", "list"))
    status, out, err = run(capsys, *admin(cp, "models", "import", str(path)))
    assert (status, out) == (1, "")
    assert "not a GGUF file" in err
    assert len(ok_json(capsys, cp, "models", "list")) == before


def test_import_and_list_adapters(
    cp: RunningControlPlane, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_adapter(tmp_path / "SQL lora.gguf", seed=next(_SEEDS), alpha=32.0)
    out = ok(capsys, cp, "models", "import", str(path))
    digest = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert out == f"imported LoRA adapter for llama models SQL-lora@1 ({digest}, 1.3 KiB)\n"
    adapter = ok_json(capsys, cp, "models", "show", "SQL-lora")
    assert (adapter["kind"], adapter["architecture"]) == ("adapter", "llama")
    assert (adapter["adapter_type"], adapter["lora_alpha"]) == ("lora", 32.0)
    shown = ok(capsys, cp, "models", "show", "SQL-lora").splitlines()
    assert "kind:             adapter" in shown
    assert "lora_alpha:       32.0" in shown
    adapters = ok_json(capsys, cp, "models", "list", "--kind", "adapter")
    assert adapter in adapters
    assert {m["kind"] for m in adapters} == {"adapter"}
    models = ok_json(capsys, cp, "models", "list", "--kind", "model")
    assert models
    assert {m["kind"] for m in models} == {"model"}
    assert len(ok_json(capsys, cp, "models", "list")) == len(adapters) + len(models)
    table = ok(capsys, cp, "models", "list", "--kind", "adapter").splitlines()
    row = next(line.split() for line in table if line.startswith("SQL-lora "))
    assert row[:8] == ["SQL-lora", "1", "adapter", digest[:19], "1.3", "KiB", "llama", "F32"]


# -- assignments and rollouts ----------------------------------------------------------------


def test_assign_to_an_agent_a_site_and_a_selector(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    site = f"site-{uuid.uuid4().hex[:8]}"
    gold = enroll(services, "gold-1", site=site, labels={"tier": "gold", "zone": "eu"})
    plain = enroll(services, "plain-1", site=site)

    view = ok_json(
        capsys,
        cp,
        *("models", "assign", name, "--agent", plain, "--alias", "own"),
        *("--context-length", "128", "--gpu-layers", "0", "--threads", "2", "--queue-depth", "3"),
    )
    assert view["target"] == {"kind": "agent", "value": plain}
    assert (view["alias"], view["context_length"], view["threads"], view["queue_depth"]) == (
        "own",
        128,
        2,
        3,
    )
    assert view["agents"] == [plain]

    status, out, err = run(capsys, *admin(cp, "models", "assign", name, "--site", site))
    assert status == 0, err
    by_site = next(
        a for a in ok_json(capsys, cp, "models", "assignments") if a["target"]["value"] == site
    )
    assert out == (
        f"assignment {by_site['id']}: {name}@1 as {name} on site {site} (2 agent(s) now)\n"
    )
    assert "not checked for fit" in err
    assert gold in err
    assert plain in err

    by_selector = ok_json(
        capsys,
        cp,
        *("models", "assign", name, "--selector", "zone=eu", "--selector", "tier=gold"),
        *("--alias", "eu"),
    )
    assert by_selector["target"] == {"kind": "selector", "value": "tier=gold,zone=eu"}
    assert by_selector["agents"] == [gold]
    assert {m.alias for m in services.desired.current(gold).models} == {name, "eu"}
    assert {m.alias for m in services.desired.current(plain).models} == {name, "own"}

    ids = [view["id"], by_site["id"], by_selector["id"]]
    listed = {a["id"]: a for a in ok_json(capsys, cp, "models", "assignments")}
    assert set(ids) <= set(listed)
    assert listed[by_selector["id"]]["agents"] == [gold]
    table = ok(capsys, cp, "models", "assignments")
    assert table.splitlines()[0].split() == [
        *("ID", "MODEL", "ALIAS", "TARGET", "CONTEXT", "AGENTS", "ADAPTERS")
    ]
    row = next(line.split() for line in table.splitlines() if line.startswith(f"{ids[2]} "))
    assert row == [str(ids[2]), f"{name}@1", "eu", "selector:tier=gold,zone=eu", "4096", "1", "-"]

    for assignment_id in ids:
        assert ok(capsys, cp, "models", "unassign", str(assignment_id)) == (
            f"removed assignment {assignment_id}\n"
        )
    assert services.desired.current(gold).models == ()
    status, _, err = run(capsys, *admin(cp, "models", "unassign", str(ids[0])))
    assert status == 1
    assert f"no model assignment {ids[0]}" in err


def test_assign_with_adapters(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    sql, poems = tiny_adapter(tmp_path, capsys, cp), tiny_adapter(tmp_path, capsys, cp)
    agent = enroll(services, "adapters-1")
    argv = ["models", "assign", name, "--agent", agent, "--alias", "chat"]
    sql_ref, poems_ref = f"{sql['name']}@1", poems["digest"]
    view = ok_json(capsys, cp, *argv, "--adapter", f"sql={sql_ref}", "--adapter", f"p={poems_ref}")
    assert view["adapters"] == [
        {
            "name": "p",
            "ref": f"{poems['name']}@1",
            "sha256": poems["sha256"],
            "size_bytes": poems["size_bytes"],
        },
        {"name": "sql", "ref": sql_ref, "sha256": sql["sha256"], "size_bytes": sql["size_bytes"]},
    ]
    [wanted] = services.desired.current(agent).models
    assert [(a.name, a.sha256) for a in wanted.adapters] == [
        ("p", poems["sha256"]),
        ("sql", sql["sha256"]),
    ]
    listed = {a["id"]: a for a in ok_json(capsys, cp, "models", "assignments")}
    assert listed[view["id"]] == {**view, "fit_unchecked": []}
    table = ok(capsys, cp, "models", "assignments").splitlines()
    row = next(line.split() for line in table if line.startswith(f"{view['id']} "))
    assert row[-1] == f"p={poems['name']}@1,sql={sql_ref}"
    # Without --json it says what it assigned, adapters included.
    out = ok(capsys, cp, *argv, "--adapter", f"sql={sql_ref}")
    assert out.splitlines()[1:] == [f"  adapter chat:sql: {sql_ref} (sha256:{sql['sha256'][:12]})"]
    # An assigned adapter cannot be deleted.
    status, out, err = run(capsys, *admin(cp, "models", "delete", sql_ref))
    assert (status, out) == (1, "")
    assert err.strip() == (
        f"outpost: error: adapter {sql_ref} is assigned (agent {agent} as chat:sql); "
        "remove those assignments first"
    )
    ok(capsys, cp, "models", "unassign", str(view["id"]))
    assert ok(capsys, cp, "models", "delete", sql_ref) == f"deleted model {sql_ref}\n"


def test_adapter_refusals_exit_1_with_the_message(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    lora = tiny_adapter(tmp_path, capsys, cp)["name"]
    gpt2 = tiny_adapter(tmp_path, capsys, cp, architecture="gpt2")["name"]
    agent = enroll(services, "adapters-2")
    many = [f"--adapter=a{i}={lora}" for i in range(17)]
    for argv, message in [
        (["--adapter", "x=nosuch"], "adapter x: no registered adapter nosuch"),
        (["--adapter", f"x={name}"], f"adapter x: {name}@1 is a model, not a LoRA adapter"),
        (["--adapter", f"x={gpt2}"], f"adapter x: {gpt2}@1 is for gpt2 models but {name}@1 is"),
        (["--adapter", f"a b={lora}"], "an adapter name must be 1 to 63 characters"),
        (["--adapter", f"a:b={lora}"], "an adapter name must be"),
        (many, "'adapters' has more than 16 entries"),
    ]:
        status, out, err = run(
            capsys, *admin(cp, "models", "assign", name, "--agent", agent, *argv)
        )
        assert (status, out) == (1, ""), argv
        assert message in err, (argv, err)
    status, _, err = run(capsys, *admin(cp, "models", "assign", lora, "--agent", agent))
    assert status == 1
    assert f"{lora}@1 is a LoRA adapter, not a model" in err
    assert services.desired.current(agent).models == ()


def test_rollout_status(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    site = f"site-{uuid.uuid4().hex[:8]}"
    agent = enroll(services, "rollout-1", site=site)
    view = ok_json(capsys, cp, "models", "assign", name, "--site", site, "--alias", "chat")
    sha256 = services.models.get(name).sha256
    size = services.models.get(name).size_bytes

    def mine() -> list[dict[str, Any]]:
        rows = ok_json(capsys, cp, "rollout", "status")
        return [r for r in rows if r["assignment_id"] == view["id"]]

    [row] = mine()
    assert (row["agent_id"], row["state"], row["sha256"]) == (agent, "pending", sha256)
    assert (row["model"], row["alias"], row["bytes_total"]) == (f"{name}@1", "chat", size)
    done = size // 2
    downloading = ItemStatus(
        "model",
        "chat",
        ItemState.DOWNLOADING,
        sha256=sha256,
        bytes_done=done,
        bytes_total=size,
        rate_bytes_per_s=2048.0,
    )
    services.fleet.record_status(agent, AgentStatus(1, (downloading,)))
    [row] = mine()
    assert (row["state"], row["bytes_done"], row["rate_bytes_per_s"]) == (
        "downloading",
        done,
        2048.0,
    )
    table = ok(capsys, cp, "rollout", "status")
    assert table.splitlines()[0].split() == [
        "AGENT",
        "ALIAS",
        "MODEL",
        "STATE",
        "PROGRESS",
        "DETAIL",
    ]
    line = next(line for line in table.splitlines() if line.startswith("rollout-1 "))
    assert line.split()[:5] == ["rollout-1", "chat", f"{name}@1", "downloading", "50%"]
    assert "at 2.0 KiB/s" in line

    failed = ItemStatus("model", "chat", ItemState.FAILED, error="bad\x1b[31mtensor", sha256=sha256)
    services.fleet.record_status(agent, AgentStatus(1, (failed,)))
    line = next(
        line for line in ok(capsys, cp, "rollout", "status").splitlines() if "rollout-1" in line
    )
    assert "failed" in line
    assert "bad?[31mtensor" in line
    ok(capsys, cp, "models", "unassign", str(view["id"]))


def test_delete_is_refused_while_assigned(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    agent = enroll(services, "delete-1")
    view = ok_json(capsys, cp, "models", "assign", name, "--agent", agent, "--alias", "kept")
    status, out, err = run(capsys, *admin(cp, "models", "delete", name))
    assert (status, out) == (1, "")
    assert err.strip() == (
        f"outpost: error: model {name}@1 is assigned (agent {agent} as kept); "
        "remove those assignments first"
    )
    assert services.models.get(name).name == name
    ok(capsys, cp, "models", "unassign", str(view["id"]))
    assert ok(capsys, cp, "models", "delete", name) == f"deleted model {name}\n"
    status, _, err = run(capsys, *admin(cp, "models", "show", name))
    assert status == 1
    assert "no registered model" in err


def test_server_side_refusals_exit_1_with_the_message(
    cp: RunningControlPlane,
    services: ControlPlaneServices,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = tiny_model(tmp_path, capsys, cp)
    agent = enroll(services, "refusals-1")
    for argv, message in [
        (["--selector", "tier=gold plated"], "the value of label tier"),
        (["--site", "two words"], "a site must be"),
        (["--agent", "not-a-uuid"], "an agent id must be a UUID"),
        (["--agent", str(uuid.uuid4())], "no live agent"),
        (["--agent", agent, "--alias", "a b"], "a model alias"),
        (["--agent", agent, "--context-length", "10"], "context_length"),
        (["--agent", agent, "--gpu-layers", "-2"], "gpu_layers"),
    ]:
        status, out, err = run(capsys, *admin(cp, "models", "assign", name, *argv))
        assert (status, out) == (1, ""), argv
        assert message in err, (argv, err)
    status, _, err = run(capsys, *admin(cp, "models", "assign", "nosuch", "--agent", agent))
    assert (status, "no registered model nosuch" in err) == (1, True)
    assert services.desired.current(agent).models == ()


# -- bad command lines -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["models", "assign", "m"], "one of the arguments --agent --site --selector is required"),
        (["models", "assign", "m", "--agent", "a", "--site", "s"], "not allowed with"),
        (["models", "assign", "m", "--site", "s", "--selector", "k=v"], "not allowed with"),
        (["models", "assign", "m", "--selector", "tier"], "invalid label 'tier'"),
        (["models", "assign", "m", "--selector", "=gold"], "invalid label '=gold'"),
        (["models", "assign", "m", "--selector", "k=a", "--selector", "k=b"], "given twice"),
        (["models", "assign", "m", "--site", "s", "--context-length", "big"], "invalid int"),
        (["models", "assign", "m", "--site", "s", "--adapter", "sql"], "invalid adapter 'sql'"),
        (["models", "assign", "m", "--site", "s", "--adapter", "=x"], "invalid adapter '=x'"),
        (["models", "assign", "m", "--site", "s", "--adapter", "sql="], "invalid adapter"),
        (
            ["models", "assign", "m", "--site", "s", "--adapter", "a=x", "--adapter", "a=y"],
            "an adapter name is given twice",
        ),
        (["models", "list", "--kind", "lora"], "invalid choice: 'lora'"),
        (["models", "assign"], "required: model"),
        (["models", "unassign", "abc"], "invalid int"),
        (["models", "unassign"], "required: assignment_id"),
        (["models", "show", ""], "invalid model reference"),
        (["models", "show", "a\nb"], "invalid model reference"),
        (["models", "delete", "x" * 201], "invalid model reference"),
        (["models", "import", "/no/such/model.gguf"], "cannot read /no/such/model.gguf"),
        (["models", "import"], "required: path"),
        (["models", "frobnicate"], "invalid choice"),
        (["rollout"], "required: ACTION"),
        (["rollout", "restart"], "invalid choice"),
    ],
)
def test_bad_command_lines_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "--url", "http://127.0.0.1:9", "--api-key", "k", *argv)
    assert (status, out) == (2, "")
    assert message in err


def test_a_directory_is_not_an_upload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(
        capsys, "--url", "http://127.0.0.1:9", "--api-key", "k", "models", "import", str(tmp_path)
    )
    assert status == 2
    assert f"cannot read {tmp_path}" in err


def test_no_api_key_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "rollout", "status")
    assert status == 2
    assert "OUTPOST_API_KEY" in err
