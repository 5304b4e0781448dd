"""`FederatedJobSpec`: what a federated fine-tuning job asks for, read strictly from JSON.

Every mistake is an InvalidArgument naming the field (the REST API answers 400); unknown
fields are refused, numbers are range-checked, names are identifiers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from common.errors import InvalidArgument
from controlplane.api.bodies import reject_unknown
from controlplane.desired_state_checks import check_agent_id, check_identifier, check_labels

MAX_SPEC_BYTES = 32 * 1024  # a request body; 64 agent ids and 64 site datasets fit easily
MAX_PARTICIPANTS = 64
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
AGGREGATIONS = ("fedavg", "frozen-a")

ROUNDS = (1, 100)
LOCAL_STEPS = (1, 10_000)
BATCH_SIZE = (1, 64)
MAX_SEQ_LEN = (16, 4096)
LORA_RANK = (1, 64)
PARTICIPANT_WAIT_S = (10, 86_400)
THREADS = (1, 256)
NICE = (0, 19)
MAX_LEARNING_RATE = 1.0
MAX_LORA_ALPHA = 1024.0
MAX_NOISE_MULTIPLIER = 100.0
MAX_CLIPPING_NORM = 1e6

_TOP = {
    "model",
    "agents",
    "site",
    "labels",
    "dataset",
    "datasets",
    "rounds",
    "local_steps",
    "batch_size",
    "max_seq_len",
    "learning_rate",
    "lora",
    "aggregation",
    "min_participants",
    "participant_wait_s",
    "gate",
    "differential_privacy",
    "secure_aggregation",
    "training",
    "deploy",
}


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")  # in LORA_TARGETS order


@dataclass(frozen=True)
class PrivacySpec:
    """Differential privacy on the clients' updates (Flower's DP mods and strategies)."""

    noise_multiplier: float
    clipping_norm: float


@dataclass(frozen=True)
class FederatedJobSpec:
    model: str  # a registry reference: name, name@version or sha256:<hex>
    dataset: str  # the dataset name at every site without an override
    # the participants: exactly one of agents, site, labels is given
    agents: tuple[str, ...] = ()
    site: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)  # site -> dataset name
    rounds: int = 3
    local_steps: int = 20
    batch_size: int = 4
    max_seq_len: int = 128
    learning_rate: float = 1e-3
    lora: LoraSpec = field(default_factory=LoraSpec)
    aggregation: str = "fedavg"
    min_participants: int | None = None  # None: every participant the planner keeps
    participant_wait_s: int = 300
    min_heldout_loss_drop_pct: float = 1.0  # the gate: held-out loss must drop this much
    differential_privacy: PrivacySpec | None = None
    secure_aggregation: bool = False
    threads: int = 1  # training threads at a site
    nice: int = 10  # training process priority at a site (serving keeps the default 0)
    deploy_alias: str | None = None  # the served alias the adapter is rolled out with
    adapter_name: str | None = None  # None: "fl-<first 8 characters of the job id>"

    @property
    def participant_kind(self) -> str:
        return "agents" if self.agents else "site" if self.site else "labels"

    def dataset_for(self, site: str) -> str:
        return self.datasets.get(site, self.dataset) if site else self.dataset

    def to_json(self) -> dict[str, Any]:
        """The JSON form `parse_job_spec` reads back to an equal spec."""
        document: dict[str, Any] = {"model": self.model}
        if self.agents:
            document["agents"] = list(self.agents)
        elif self.site:
            document["site"] = self.site
        else:
            document["labels"] = dict(self.labels)
        dp = self.differential_privacy
        document |= {
            "dataset": self.dataset,
            "datasets": dict(self.datasets),
            "rounds": self.rounds,
            "local_steps": self.local_steps,
            "batch_size": self.batch_size,
            "max_seq_len": self.max_seq_len,
            "learning_rate": self.learning_rate,
            "lora": {
                "rank": self.lora.rank,
                "alpha": self.lora.alpha,
                "targets": list(self.lora.targets),
            },
            "aggregation": self.aggregation,
            "min_participants": self.min_participants,
            "participant_wait_s": self.participant_wait_s,
            "gate": {"min_heldout_loss_drop_pct": self.min_heldout_loss_drop_pct},
            "differential_privacy": None
            if dp is None
            else {"noise_multiplier": dp.noise_multiplier, "clipping_norm": dp.clipping_norm},
            "secure_aggregation": self.secure_aggregation,
            "training": {"threads": self.threads, "nice": self.nice},
            "deploy": {"alias": self.deploy_alias, "adapter_name": self.adapter_name},
        }
        return document


def parse_job_spec(body: bytes) -> FederatedJobSpec:
    """A request body (bytes) to a spec; InvalidArgument for anything wrong with it."""
    if len(body) > MAX_SPEC_BYTES:
        raise InvalidArgument(
            f"a federated job is at most {MAX_SPEC_BYTES} bytes of JSON, got {len(body)}"
        )
    if not body.strip():
        raise InvalidArgument("request body is empty: a JSON object is required")
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidArgument("request body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise InvalidArgument(f"request body is not valid JSON: {exc}") from None
    return job_spec_from(document)


def _no_constant(name: str) -> float:
    raise InvalidArgument(f"{name} is not a number JSON allows")


def job_spec_from(document: object) -> FederatedJobSpec:
    """A parsed JSON document to a spec; InvalidArgument naming the first bad field."""
    if not isinstance(document, dict):
        raise InvalidArgument("a federated job must be a JSON object")
    reject_unknown(document, _TOP)
    if "model" not in document:
        raise InvalidArgument(
            "'model' is required: a registry reference (name, name@version or sha256:<hex>)"
        )
    if "dataset" not in document:
        raise InvalidArgument("'dataset' is required: the dataset's name at each site")
    agents, site, labels = _participants(document)
    dp = document.get("differential_privacy")
    lora = _object(document, "lora", {"rank", "alpha", "targets"})
    gate = _object(document, "gate", {"min_heldout_loss_drop_pct"})
    training = _object(document, "training", {"threads", "nice"})
    deploy = _object(document, "deploy", {"alias", "adapter_name"})
    min_participants = document.get("min_participants")
    return FederatedJobSpec(
        model=_model_ref(document["model"]),
        dataset=dataset_name(document["dataset"], "'dataset'"),
        agents=agents,
        site=site,
        labels=labels,
        datasets=_datasets(document.get("datasets", {})),
        rounds=_int(document, "rounds", ROUNDS, 3),
        local_steps=_int(document, "local_steps", LOCAL_STEPS, 20),
        batch_size=_int(document, "batch_size", BATCH_SIZE, 4),
        max_seq_len=_int(document, "max_seq_len", MAX_SEQ_LEN, 128),
        learning_rate=_number(
            document, "learning_rate", 0.0, MAX_LEARNING_RATE, 1e-3, low_open=True
        ),
        lora=LoraSpec(
            rank=_int(lora, "rank", LORA_RANK, 8, "lora.rank"),
            alpha=_number(lora, "alpha", 0.0, MAX_LORA_ALPHA, 16.0, "lora.alpha", low_open=True),
            targets=_targets(lora.get("targets", ["q_proj", "v_proj"])),
        ),
        aggregation=_choice(document.get("aggregation", "fedavg"), "aggregation", AGGREGATIONS),
        min_participants=None
        if min_participants is None
        else _int(document, "min_participants", (1, MAX_PARTICIPANTS), 1),
        participant_wait_s=_int(document, "participant_wait_s", PARTICIPANT_WAIT_S, 300),
        min_heldout_loss_drop_pct=_number(
            gate, "min_heldout_loss_drop_pct", 0.0, 100.0, 1.0, "gate.min_heldout_loss_drop_pct"
        ),
        differential_privacy=None if dp is None else _privacy(dp),
        secure_aggregation=_secure_aggregation(document.get("secure_aggregation", False)),
        threads=_int(training, "threads", THREADS, 1, "training.threads"),
        nice=_int(training, "nice", NICE, 10, "training.nice"),
        deploy_alias=_optional_identifier(deploy.get("alias"), "deploy.alias", "a model alias"),
        adapter_name=_optional_identifier(
            deploy.get("adapter_name"), "deploy.adapter_name", "an adapter name"
        ),
    )


def dataset_name(value: object, where: str) -> str:
    """1 to 63 characters of A-Z a-z 0-9 . _ -, not "." or "..": a name, never a path."""
    name = check_identifier(value, f"{where} (a dataset name)")
    if name in (".", ".."):
        raise InvalidArgument(f"{where}: a dataset name cannot be {name!r}")
    return name


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _model_ref(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 200 or not value.isprintable():
        raise InvalidArgument(
            "'model' must be a registry reference (name, name@version or sha256:<hex>): "
            + _shown(value)
        )
    return value


def _participants(document: Mapping[str, Any]) -> tuple[tuple[str, ...], str, dict[str, str]]:
    given = [k for k in ("agents", "site", "labels") if document.get(k) is not None]
    if len(given) != 1:
        raise InvalidArgument(
            "name the participants with exactly one of 'agents' (agent ids), 'site' (a site "
            f"name) or 'labels' (a key=value selector); got {', '.join(given) or 'none'}"
        )
    if given == ["agents"]:
        agents = document["agents"]
        if not isinstance(agents, list) or not 1 <= len(agents) <= MAX_PARTICIPANTS:
            raise InvalidArgument(f"'agents' must be a list of 1 to {MAX_PARTICIPANTS} agent ids")
        checked: list[str] = []
        for agent in agents:
            try:
                checked.append(check_agent_id(agent))
            except InvalidArgument:
                raise InvalidArgument(
                    f"'agents': {_shown(agent)} is not an agent id (a lowercase UUID)"
                ) from None
        if len(set(checked)) != len(checked):
            raise InvalidArgument("'agents' names an agent more than once")
        return tuple(checked), "", {}
    if given == ["site"]:
        return (), check_identifier(document["site"], "'site'"), {}
    labels = document["labels"]
    if not isinstance(labels, dict) or not labels:
        raise InvalidArgument("'labels' must be an object of at least one key: value label")
    try:
        return (), "", check_labels(labels)
    except InvalidArgument as exc:
        raise InvalidArgument(f"'labels': {exc}") from None


def _datasets(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidArgument("'datasets' must be an object of site: dataset name")
    if len(value) > MAX_PARTICIPANTS:
        raise InvalidArgument(f"'datasets' has more than {MAX_PARTICIPANTS} sites")
    return {
        check_identifier(site, "'datasets': a site"): dataset_name(name, f"'datasets.{site}'")
        for site, name in value.items()
    }


def _object(document: Mapping[str, Any], key: str, allowed: set[str]) -> dict[str, Any]:
    value = document.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"'{key}' must be an object with {', '.join(sorted(allowed))}")
    reject_unknown(value, allowed, f"{key}.")
    return value


def _int(
    document: Mapping[str, Any],
    key: str,
    bounds: tuple[int, int],
    default: int,
    name: str | None = None,
) -> int:
    value = document.get(key, default)
    name = name or key
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"'{name}' must be a whole number, got {_shown(value)}")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(f"'{name}' must be between {low} and {high}, got {value}")
    return value


def _number(
    document: Mapping[str, Any],
    key: str,
    low: float,
    high: float,
    default: float,
    name: str | None = None,
    *,
    low_open: bool = False,
) -> float:
    value = document.get(key, default)
    name = name or key
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"'{name}' must be a number, got {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # a whole number beyond any float
        number = math.inf
    if not math.isfinite(number) or number > high or number < low or (low_open and number == low):
        shown = f"more than {low:g}" if low_open else f"at least {low:g}"
        raise InvalidArgument(f"'{name}' must be {shown} and at most {high:g}, got {value}")
    return number


def _choice(value: object, name: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidArgument(f"'{name}' must be one of {', '.join(allowed)}, got {_shown(value)}")
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidArgument(f"'{name}' must be true or false, got {_shown(value)}")
    return value


def _targets(value: object) -> tuple[str, ...]:
    allowed = ", ".join(LORA_TARGETS)
    if not isinstance(value, list) or not value:
        raise InvalidArgument(f"'lora.targets' must be a non-empty list of {allowed}")
    for target in value:
        if not isinstance(target, str) or target not in LORA_TARGETS:
            raise InvalidArgument(f"'lora.targets': {_shown(target)} is not one of {allowed}")
    if len(set(value)) != len(value):
        raise InvalidArgument("'lora.targets' names a module more than once")
    return tuple(t for t in LORA_TARGETS if t in value)


def _privacy(value: object) -> PrivacySpec:
    if not isinstance(value, dict):
        raise InvalidArgument(
            "'differential_privacy' must be null or an object with noise_multiplier and "
            "clipping_norm"
        )
    reject_unknown(value, {"noise_multiplier", "clipping_norm"}, "differential_privacy.")
    for key in ("noise_multiplier", "clipping_norm"):
        if key not in value:
            raise InvalidArgument(f"'differential_privacy.{key}' is required")
    return PrivacySpec(
        noise_multiplier=_number(
            value,
            "noise_multiplier",
            0.0,
            MAX_NOISE_MULTIPLIER,
            0.0,
            "differential_privacy.noise_multiplier",
        ),
        clipping_norm=_number(
            value,
            "clipping_norm",
            0.0,
            MAX_CLIPPING_NORM,
            1.0,
            "differential_privacy.clipping_norm",
            low_open=True,
        ),
    )


def _optional_identifier(value: object, name: str, what: str) -> str | None:
    if value is None:
        return None
    try:
        return check_identifier(value, what)
    except InvalidArgument as exc:
        raise InvalidArgument(f"'{name}': {exc}") from None


def _secure_aggregation(value: object) -> bool:
    """Refused when asked for: Flower 1.42 has SecAgg+ only in its legacy workflow API (the
    server's SecAggPlusWorkflow with the client's secaggplus_mod), not for the Message API
    strategies the jobs run on. Differential privacy is available instead."""
    if _bool(value, "secure_aggregation"):
        raise InvalidArgument(
            "secure_aggregation is not available: Flower 1.42 offers secure aggregation "
            "(SecAgg+) only with its legacy workflow API, not with the Message API strategies "
            "these jobs run on; use differential_privacy to protect the sites' updates"
        )
    return False
