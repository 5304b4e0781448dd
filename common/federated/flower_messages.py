"""What the ServerApp and the ClientApp put in Flower messages: record keys and round settings."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from flwr.app import ConfigRecord

from common.federated.adapter_tensors import LORA_TARGETS

ADAPTER_KEY = "adapter"  # ArrayRecord: the adapter tensors (common.federated.adapter_tensors)
CONFIG_KEY = "config"  # ConfigRecord: RoundSettings
METRICS_KEY = "metrics"  # MetricRecord: counts and losses
SITE_KEY = "site"  # ConfigRecord: a node's job, agent and readiness (query replies)
NUM_EXAMPLES = "num-examples"  # the weight of a site's adapter in FedAvg


class SettingsError(ValueError):
    """A message's round settings are missing or out of range."""


@dataclass(frozen=True)
class RoundSettings:
    """How a site trains (and evaluates) in one round, as the job asked."""

    job_id: str
    server_round: int
    rank: int
    alpha: int
    targets: tuple[str, ...]
    learning_rate: float
    local_steps: int
    batch_size: int
    max_seq_len: int
    seed: int
    freeze_a: bool

    def __post_init__(self) -> None:
        bounds = {
            "server_round": (0, 10_000),
            "rank": (1, 64),
            "alpha": (1, 1024),
            "local_steps": (1, 10_000),
            "batch_size": (1, 64),
            "max_seq_len": (2, 4096),
        }
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise SettingsError(f"{name} {value} is outside {low}..{high}")
        if not self.targets or any(t not in LORA_TARGETS for t in self.targets):
            raise SettingsError(f"targets must be among {', '.join(LORA_TARGETS)}")
        if not (math.isfinite(self.learning_rate) and 0 < self.learning_rate <= 1):
            raise SettingsError("learning_rate must be in (0, 1]")

    def to_config(self) -> ConfigRecord:
        values: dict[str, Any] = asdict(self)
        values["targets"] = list(self.targets)
        return ConfigRecord({key.replace("_", "-"): value for key, value in values.items()})

    @classmethod
    def from_config(cls, record: ConfigRecord | None) -> RoundSettings:
        if record is None:
            raise SettingsError("the message carries no round settings")
        values: dict[str, Any] = {key.replace("-", "_"): value for key, value in record.items()}
        try:
            return cls(
                job_id=str(values["job_id"]),
                server_round=int(values["server_round"]),
                rank=int(values["rank"]),
                alpha=int(values["alpha"]),
                targets=tuple(str(t) for t in values["targets"]),
                learning_rate=float(values["learning_rate"]),
                local_steps=int(values["local_steps"]),
                batch_size=int(values["batch_size"]),
                max_seq_len=int(values["max_seq_len"]),
                seed=int(values["seed"]),
                freeze_a=bool(values["freeze_a"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsError(f"bad round settings: {exc}") from None
