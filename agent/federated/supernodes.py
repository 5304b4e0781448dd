"""Runs one Flower SuperNode per federated task of the desired state, and stops the rest."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from common.control import FederatedTask, ItemState, ItemStatus
from common.federated.flower_env import FLOWER_OFFLINE_ENV, free_loopback_port

log = logging.getLogger(__name__)

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_DATASET = re.compile(r"^[A-Za-z0-9._-]{1,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_THREADS = 256
STOP_GRACE_S = 10.0
RESTART_DELAY_S = 5.0  # a SuperNode that exited is started again after this long


class TaskError(ValueError):
    """A federated task the agent refuses to run, with the reason."""


def check_task(task: FederatedTask) -> None:
    if not _JOB_ID.fullmatch(task.job_id):
        raise TaskError(f"federated task: job id {task.job_id[:80]!r} is not a UUID")
    if not _DATASET.fullmatch(task.dataset) or task.dataset in (".", ".."):
        raise TaskError(f"job {task.job_id}: dataset name {task.dataset[:80]!r} is not allowed")
    if not _SHA256.fullmatch(task.base_sha256):
        raise TaskError(f"job {task.job_id}: base model sha256 is not 64 lowercase hex digits")
    if not 0 < task.fleet_port < 65536:
        raise TaskError(f"job {task.job_id}: fleet port {task.fleet_port} is out of range")
    if not 1 <= task.threads <= MAX_THREADS:
        raise TaskError(f"job {task.job_id}: threads must be 1..{MAX_THREADS}")
    if not 0 <= task.nice <= 19:
        raise TaskError(f"job {task.job_id}: nice must be 0..19")


@dataclass(frozen=True)
class NodeContext:
    """What a SuperNode of this agent needs besides its task."""

    agent_id: str
    datasets_dir: Path
    model_path: Callable[[str], Path]  # sha256 -> where the verified blob lies (may be absent)
    work_dir: Path  # each job's Flower home and log go under it


def node_config(task: FederatedTask, context: NodeContext) -> str:
    """`--node-config` for the SuperNode: what the ClientApp reads at this site."""
    values: dict[str, str | int] = {
        "job-id": task.job_id,
        "agent-id": context.agent_id,
        "dataset-dir": str(context.datasets_dir / task.dataset),
        "model-path": str(context.model_path(task.base_sha256)),
        "base-sha256": task.base_sha256,
        # the base converted for torch once, reused by every round's fresh ClientApp process
        "torch-cache": str(context.work_dir / "torch-models" / task.base_sha256),
        "threads": task.threads,
    }
    parts = []
    for key, value in values.items():
        if isinstance(value, int):
            parts.append(f"{key}={value}")
        else:
            if '"' in value or "\\" in value:  # Flower's parser has no escapes
                raise TaskError(f"job {task.job_id}: {key} {value!r} holds a quote or backslash")
            parts.append(f'{key}="{value}"')
    return " ".join(parts)


class _Node:
    """One SuperNode process and the task it runs for."""

    def __init__(self, task: FederatedTask, process: asyncio.subprocess.Process) -> None:
        self.task = task
        self.process = process
        self.error = ""

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # its ClientApps too: one process group
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()


class SuperNodes:
    """Keeps one SuperNode running per federated task; `fleet_address(task)` is the
    127.0.0.1 address of the local relay that carries that task's Fleet API traffic."""

    def __init__(
        self,
        context: NodeContext,
        fleet_address: Callable[[FederatedTask], Awaitable[str]],
        *,
        executable_dir: Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._context = context
        self._fleet_address = fleet_address
        self._bin = executable_dir or Path(sys.executable).parent
        self._environ = dict(os.environ if environ is None else environ)
        self._nodes: dict[str, _Node] = {}
        self._refused: dict[str, str] = {}  # job id -> why its task is not run

    async def apply(self, tasks: tuple[FederatedTask, ...]) -> None:
        """Starts a SuperNode for each new task, stops those whose task is gone, and starts
        again any that exited while its task remains."""
        wanted: dict[str, FederatedTask] = {}
        self._refused = {}
        for task in tasks:
            try:
                check_task(task)
            except TaskError as exc:
                log.error("%s", exc)
                self._refused[task.job_id[:80]] = str(exc)
                continue
            wanted[task.job_id] = task
        for job_id in list(self._nodes):
            node = self._nodes[job_id]
            if wanted.get(job_id) != node.task or node.process.returncode is not None:
                del self._nodes[job_id]
                await node.stop()
                log.info("federated job %s: SuperNode stopped", job_id)
        for job_id, task in wanted.items():
            if job_id not in self._nodes:
                try:
                    self._nodes[job_id] = await self._start(task)
                except (OSError, TaskError) as exc:
                    log.error("federated job %s: the SuperNode did not start: %s", job_id, exc)
                    self._refused[job_id] = f"the SuperNode did not start: {exc}"

    async def _start(self, task: FederatedTask) -> _Node:
        address = await self._fleet_address(task)
        home = self._context.work_dir / task.job_id
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        env = {
            **self._environ,
            **FLOWER_OFFLINE_ENV,
            "FLWR_HOME": str(home / "flower"),
            # The ClientApp processes the SuperNode starts inherit the thread limit and the
            # nice value below: training gives way to serving on a shared machine.
            "OMP_NUM_THREADS": str(task.threads),
            "MKL_NUM_THREADS": str(task.threads),
            "PATH": f"{self._bin}{os.pathsep}{self._environ.get('PATH', '')}",
        }
        executable = self._bin / "flower-supernode"
        if not os.access(executable, os.X_OK):  # nice(1) would start and then fail to run it
            raise OSError(f"{executable} is missing or not executable (install outpost[train])")
        command = [
            # nice(1) sets the priority before the SuperNode runs: everything it starts (its
            # SuperExec, every ClientApp that trains) inherits it. Raising it needs no rights.
            *(["nice", "-n", str(task.nice)] if task.nice else []),
            str(executable),
            "--insecure",  # to the local relay on 127.0.0.1, which speaks mutual TLS onwards
            "--superlink",
            address,
            "--port",
            str(free_loopback_port()),
            "--node-config",
            node_config(task, self._context),
            "--max-wait-time",
            "600",
        ]
        log_file = (home / "supernode.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        finally:
            log_file.close()
        log.info(
            "federated job %s: SuperNode started (pid %d, dataset %s, log %s)",
            task.job_id,
            process.pid,
            task.dataset,
            home / "supernode.log",
        )
        return _Node(task, process)

    def statuses(self) -> list[ItemStatus]:
        items = [
            ItemStatus(
                kind="federated",
                name=job_id,
                state=ItemState.READY if node.process.returncode is None else ItemState.FAILED,
                error=""
                if node.process.returncode is None
                else f"the SuperNode exited with status {node.process.returncode}",
            )
            for job_id, node in self._nodes.items()
        ]
        items += [
            ItemStatus(kind="federated", name=job_id, state=ItemState.FAILED, error=reason)
            for job_id, reason in self._refused.items()
        ]
        return items

    def exited(self) -> bool:
        """True when a SuperNode exited while its task remains (`apply` starts it again)."""
        return any(node.process.returncode is not None for node in self._nodes.values())

    async def close(self) -> None:
        nodes, self._nodes = list(self._nodes.values()), {}
        await asyncio.gather(*(node.stop() for node in nodes))
