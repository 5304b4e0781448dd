"""The agent's SuperNodes: which federated tasks it refuses, the `--node-config` it passes,
and `SuperNodes.apply` starting, restarting and stopping a stand-in `flower-supernode` script
(no Flower process)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.federated.supernodes import NodeContext, SuperNodes, TaskError, check_task, node_config
from common.control import FederatedTask, ItemState, ItemStatus

JOB = "5d0c9e4e-1f7b-4d84-9a55-1c2b3d4e5f60"
OTHER_JOB = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SHA = "0123456789abcdef" * 4
TASK = FederatedTask(
    job_id=JOB, dataset="support_v2.en", base_sha256=SHA, fleet_port=9092, threads=3, nice=7
)
WAIT_S = 15.0

# Records its arguments and environment, then (unless told to exit) waits on a child in its
# process group until it is killed. Files are renamed into place once complete.
SCRIPT = """#!/bin/sh
r="$RECORD_DIR/$$"
printf '%s\\n' "$@" > "$r.args.tmp" && mv "$r.args.tmp" "$r.args"
env > "$r.env.tmp" && mv "$r.env.tmp" "$r.env"
if [ -e "$RECORD_DIR/exit-now" ]; then exit 3; fi
sleep 1000 &
echo $! > "$r.child.tmp" && mv "$r.child.tmp" "$r.child"
wait
"""


# -- check_task ------------------------------------------------------------------------------


def test_a_good_task_is_accepted() -> None:
    check_task(TASK)
    check_task(dataclasses.replace(TASK, dataset="a" * 63, fleet_port=65535, threads=256, nice=0))
    check_task(dataclasses.replace(TASK, dataset="x", fleet_port=1, threads=1, nice=19))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"job_id": "not-a-uuid"}, "job id 'not-a-uuid' is not a UUID"),
        ({"job_id": JOB.upper()}, "is not a UUID"),
        ({"job_id": ""}, "is not a UUID"),
        ({"dataset": "../x"}, "dataset name '../x' is not allowed"),
        ({"dataset": "a/b"}, "dataset name 'a/b' is not allowed"),
        ({"dataset": ""}, "dataset name '' is not allowed"),
        ({"dataset": "d" * 64}, "is not allowed"),
        ({"dataset": ".."}, "dataset name '..' is not allowed"),
        ({"dataset": "."}, "dataset name '.' is not allowed"),
        ({"dataset": "a b"}, "is not allowed"),
        ({"base_sha256": "g" * 64}, "base model sha256 is not 64 lowercase hex digits"),
        ({"base_sha256": SHA.upper()}, "sha256 is not 64 lowercase hex digits"),
        ({"base_sha256": SHA[:-1]}, "sha256 is not 64 lowercase hex digits"),
        ({"fleet_port": 0}, "fleet port 0 is out of range"),
        ({"fleet_port": 70000}, "fleet port 70000 is out of range"),
        ({"fleet_port": 65536}, "fleet port 65536 is out of range"),
        ({"threads": 0}, "threads must be 1..256"),
        ({"threads": 257}, "threads must be 1..256"),
        ({"nice": 20}, "nice must be 0..19"),
        ({"nice": -1}, "nice must be 0..19"),
    ],
)
def test_a_bad_task_is_refused_with_the_reason(change: dict[str, object], reason: str) -> None:
    with pytest.raises(TaskError, match=reason.replace(".", r"\.").replace("(", r"\(")):
        check_task(dataclasses.replace(TASK, **change))  # type: ignore[arg-type]


def test_a_long_job_id_is_clipped_in_the_reason() -> None:
    with pytest.raises(TaskError) as caught:
        check_task(dataclasses.replace(TASK, job_id="x" * 10_000))
    assert len(str(caught.value)) < 200


# -- node_config -----------------------------------------------------------------------------


def context(tmp_path: Path, agent_id: str = "agent-7") -> NodeContext:
    return NodeContext(
        agent_id=agent_id,
        datasets_dir=tmp_path / "datasets",
        model_path=lambda sha: tmp_path / "blobs" / sha,
        work_dir=tmp_path / "work",
    )


def test_the_node_config_quotes_strings_and_leaves_ints_bare(tmp_path: Path) -> None:
    text = node_config(TASK, context(tmp_path))
    assert text == " ".join(
        [
            f'job-id="{JOB}"',
            'agent-id="agent-7"',
            f'dataset-dir="{tmp_path}/datasets/support_v2.en"',
            f'model-path="{tmp_path}/blobs/{SHA}"',
            f'base-sha256="{SHA}"',
            f'torch-cache="{tmp_path}/work/torch-models/{SHA}"',
            "threads=3",
        ]
    )


def test_a_path_with_a_space_stays_inside_its_quotes(tmp_path: Path) -> None:
    spaced = tmp_path / "my models"
    text = node_config(TASK, context(spaced))
    assert f'dataset-dir="{spaced}/datasets/support_v2.en"' in text


@pytest.mark.parametrize("bad", ['a"b', "a\\b"])
def test_a_value_with_a_quote_or_backslash_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(TaskError, match="holds a quote or backslash"):
        node_config(TASK, context(tmp_path / bad))
    with pytest.raises(TaskError, match="agent-id"):
        node_config(TASK, context(tmp_path, agent_id=bad))


# -- SuperNodes.apply with a stand-in flower-supernode --------------------------------------


@dataclasses.dataclass
class Harness:
    nodes: SuperNodes
    records: Path
    addresses: list[str]  # the job ids the fleet-address callback was asked about

    def started(self) -> list[int]:
        return sorted(int(p.name.split(".")[0]) for p in self.records.glob("*.args"))

    def args(self, pid: int) -> list[str]:
        return (self.records / f"{pid}.args").read_text().splitlines()

    def env(self, pid: int) -> dict[str, str]:
        lines = (self.records / f"{pid}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def child(self, pid: int) -> int:
        return int((self.records / f"{pid}.child").read_text())


def run(scenario: Callable[[Harness], Awaitable[None]], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "flower-supernode"
    script.write_text(SCRIPT)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    records = tmp_path / "records"
    records.mkdir()
    asked: list[str] = []

    async def fleet_address(task: FederatedTask) -> str:
        asked.append(task.job_id)
        return f"127.0.0.1:{40000 + len(asked)}"

    async def main() -> None:
        nodes = SuperNodes(
            context(tmp_path),
            fleet_address,
            executable_dir=bin_dir,
            environ={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RECORD_DIR": str(records)},
        )
        try:
            await asyncio.wait_for(scenario(Harness(nodes, records, asked)), 60)
        finally:
            await nodes.close()

    asyncio.run(main())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Polls (the processes are started asynchronously) until `condition` or WAIT_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.02)


def gone(pid: int) -> bool:
    """The process has ended (it may linger as a zombie until its parent reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def niceness(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of stat: the nice value


def test_a_task_starts_a_supernode_with_its_address_config_and_environment(
    tmp_path: Path,
) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((TASK,))
        await until(lambda: len(h.started()) == 1, "the SuperNode started")
        (pid,) = h.started()
        await until(lambda: (h.records / f"{pid}.child").exists(), "it is up")
        args = h.args(pid)
        assert args[args.index("--superlink") + 1] == "127.0.0.1:40001"
        assert args[args.index("--node-config") + 1] == node_config(TASK, context(tmp_path))
        assert "--insecure" in args
        assert 0 < int(args[args.index("--port") + 1]) < 65536
        env = h.env(pid)
        assert env["FLWR_HOME"] == str(tmp_path / "work" / JOB / "flower")
        assert env["FLWR_TELEMETRY_ENABLED"] == "0"
        assert env["OMP_NUM_THREADS"] == "3"
        assert env["MKL_NUM_THREADS"] == "3"
        assert env["RECORD_DIR"] == str(h.records)  # the agent's environment is passed on
        assert env["PATH"].startswith(f"{tmp_path / 'bin'}{os.pathsep}")
        assert os.getpriority(os.PRIO_PROCESS, pid) == 7
        assert niceness(pid) == 7
        assert niceness(h.child(pid)) == 7  # what it starts inherits the nice value
        assert os.getpgid(pid) == pid  # a process group of its own
        assert h.addresses == [JOB]
        assert h.nodes.statuses() == [ItemStatus(kind="federated", name=JOB, state=ItemState.READY)]
        assert not h.nodes.exited()
        assert (tmp_path / "work" / JOB / "supernode.log").exists()
        await h.nodes.apply((TASK,))  # the same task again: nothing changes
        assert h.started() == [pid]
        assert h.addresses == [JOB]

    run(scenario, tmp_path)


def test_nice_zero_leaves_the_priority_alone(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((dataclasses.replace(TASK, nice=0),))
        await until(lambda: len(h.started()) == 1, "the SuperNode started")
        assert niceness(h.started()[0]) == os.getpriority(os.PRIO_PROCESS, 0)

    run(scenario, tmp_path)


def test_removing_the_task_stops_the_supernode_and_its_process_group(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((TASK,))
        await until(lambda: len(h.started()) == 1, "the SuperNode started")
        (pid,) = h.started()
        await until(lambda: (h.records / f"{pid}.child").exists(), "its child started")
        child = h.child(pid)
        assert not gone(child)
        await h.nodes.apply(())
        assert gone(pid)
        await until(lambda: gone(child), "the child in its process group ended")
        assert h.nodes.statuses() == []
        assert not h.nodes.exited()

    run(scenario, tmp_path)


def test_a_changed_task_restarts_its_supernode(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((TASK,))
        await until(lambda: len(h.started()) == 1, "the SuperNode started")
        (first,) = h.started()
        await h.nodes.apply((dataclasses.replace(TASK, threads=1),))
        assert gone(first)
        await until(lambda: len(h.started()) == 2, "it started again")
        second = next(p for p in h.started() if p != first)
        await until(lambda: (h.records / f"{second}.env").exists(), "its environment is known")
        assert h.env(second)["OMP_NUM_THREADS"] == "1"

    run(scenario, tmp_path)


def test_a_bad_task_is_reported_failed_and_starts_nothing(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        bad = dataclasses.replace(TASK, job_id=OTHER_JOB, dataset="../etc")
        await h.nodes.apply((bad, TASK))
        await until(lambda: len(h.started()) == 1, "the good task's SuperNode started")
        assert h.addresses == [JOB]
        statuses = {s.name: s for s in h.nodes.statuses()}
        assert statuses[JOB].state == ItemState.READY
        assert statuses[OTHER_JOB].state == ItemState.FAILED
        assert statuses[OTHER_JOB].error == (
            f"job {OTHER_JOB}: dataset name '../etc' is not allowed"
        )
        assert not (tmp_path / "work" / OTHER_JOB).exists()
        await h.nodes.apply((TASK,))  # the refusal goes with the task
        assert [s.name for s in h.nodes.statuses()] == [JOB]

    run(scenario, tmp_path)


def test_a_hostile_job_id_is_reported_clipped(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((dataclasses.replace(TASK, job_id="../" * 1000),))
        (status,) = h.nodes.statuses()
        assert status.state == ItemState.FAILED
        assert len(status.name) == 80
        assert "is not a UUID" in status.error
        assert h.started() == []
        assert h.addresses == []

    run(scenario, tmp_path)


def test_a_supernode_that_cannot_start_is_reported(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        (tmp_path / "bin" / "flower-supernode").chmod(0o600)
        await h.nodes.apply((TASK,))
        (status,) = h.nodes.statuses()
        assert status.state == ItemState.FAILED
        assert status.error.startswith("the SuperNode did not start:")
        assert not h.nodes.exited()

    run(scenario, tmp_path)


def test_a_supernode_that_exits_is_reported_and_started_again(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        (h.records / "exit-now").touch()
        await h.nodes.apply((TASK,))
        await until(h.nodes.exited, "the SuperNode exited")
        (first,) = h.started()
        (status,) = h.nodes.statuses()
        assert (status.name, status.state) == (JOB, ItemState.FAILED)
        assert status.error == "the SuperNode exited with status 3"
        (h.records / "exit-now").unlink()
        await h.nodes.apply((TASK,))
        assert not h.nodes.exited()
        await until(lambda: len(h.started()) == 2, "it started again")
        assert h.addresses == [JOB, JOB]
        assert h.nodes.statuses() == [ItemStatus(kind="federated", name=JOB, state=ItemState.READY)]
        second = next(p for p in h.started() if p != first)
        assert h.args(second)[h.args(second).index("--superlink") + 1] == "127.0.0.1:40002"

    run(scenario, tmp_path)


def test_close_stops_every_supernode(tmp_path: Path) -> None:
    async def scenario(h: Harness) -> None:
        await h.nodes.apply((TASK, dataclasses.replace(TASK, job_id=OTHER_JOB)))
        await until(lambda: len(h.started()) == 2, "both SuperNodes started")
        pids = h.started()
        await h.nodes.close()
        assert all(gone(pid) for pid in pids)
        assert h.nodes.statuses() == []

    run(scenario, tmp_path)
