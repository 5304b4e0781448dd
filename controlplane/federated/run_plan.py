"""The plan of one Flower run (written by the runner, read by the ServerApp) and the files the
ServerApp leaves in the job's directory for the runner to read."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.files import atomic_write

PLAN_FILE = "plan.json"
NODES_FILE = "nodes.json"  # which Flower nodes answered for which agent, and who was left out
RESULT_FILE = "result.json"  # the ServerApp's outcome: {"state": "succeeded"|"failed", ...}
EVALUATION_FILE = "evaluation.json"  # per-site held-out loss of the base and the adapter
FINAL_ADAPTER = "final.npz"
MAX_JSON_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class DifferentialPrivacy:
    noise_multiplier: float
    clipping_norm: float


@dataclass(frozen=True)
class RunPlan:
    """Everything the ServerApp needs: the job's settings and where the files go."""

    job_id: str
    output_dir: str
    base_gguf: str  # the control plane's copy of the base model
    agents: tuple[str, ...]  # the planned participants, by agent id
    rounds: int
    first_round: int = 1  # > 1 when a run resumes a job after a restart
    initial_adapter: str = ""  # .npz to start from ("" = a fresh adapter)
    min_participants: int = 1
    participant_wait_s: float = 300.0
    aggregation: str = "fedavg"  # or "frozen-a"
    rank: int = 8
    alpha: int = 16
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    learning_rate: float = 1e-3
    local_steps: int = 20
    batch_size: int = 4
    max_seq_len: int = 128
    seed: int = 0
    round_timeout_s: float = 3600.0
    differential_privacy: DifferentialPrivacy | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        data = json.loads(text)
        dp = data.pop("differential_privacy", None)
        data["agents"] = tuple(data["agents"])
        data["targets"] = tuple(data["targets"])
        return cls(**data, differential_privacy=DifferentialPrivacy(**dp) if dp else None)

    @property
    def directory(self) -> Path:
        return Path(self.output_dir)


def round_file(directory: Path, server_round: int, suffix: str) -> Path:
    """round-0001.json (metrics) or round-0001.npz (the aggregate) of one round."""
    return directory / f"round-{server_round:04d}.{suffix}"


def write_json(path: Path, value: Any) -> None:
    """Atomically: a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON in `path`, None when it does not exist; ValueError when damaged or too large."""
    try:
        with path.open("rb") as source:
            raw = source.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"{path} is larger than {MAX_JSON_BYTES} bytes")
    return json.loads(raw)
