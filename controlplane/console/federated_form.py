"""The "Start job" form: read (with its repeated agents and targets) and turned into the JSON
document POST /api/v1/fl/jobs takes, so that the REST API's parser checks it."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar import Request

from controlplane.console.errors import BadForm
from controlplane.console.gate import CSRF_FIELD, FORM_TYPE, check_token
from controlplane.console.gate import field as text_field
from controlplane.console.sessions import ConsoleLogin
from controlplane.federated.job_spec import AGGREGATIONS, LORA_TARGETS, MAX_PARTICIPANTS

PARTICIPANT_KINDS = ("agents", "site", "labels")
REPEATED = ("agents", "targets")  # a multi-select and checkboxes: one field per choice
MAX_FORM_FIELDS = 20 + MAX_PARTICIPANTS + len(LORA_TARGETS)
MAX_NUMBER_CHARS = 32
MAX_NAME_CHARS = 200
MAX_LABELS_CHARS = 1000
# (form field, label, JSON key or path): numbers, passed on as numbers when they read as one
NUMBERS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("rounds", "The rounds", ("rounds",)),
    ("local_steps", "The local steps", ("local_steps",)),
    ("rank", "The LoRA rank", ("lora", "rank")),
    ("alpha", "The LoRA alpha", ("lora", "alpha")),
    ("learning_rate", "The learning rate", ("learning_rate",)),
    ("min_participants", "The minimum participants", ("min_participants",)),
    ("gate", "The gate", ("gate", "min_heldout_loss_drop_pct")),
    ("dp_noise", "The DP noise multiplier", ("differential_privacy", "noise_multiplier")),
    ("dp_clip", "The DP clipping norm", ("differential_privacy", "clipping_norm")),
)
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass
class StartForm:
    """What the user entered, shown again when the job is refused."""

    values: dict[str, str] = field(
        default_factory=lambda: {
            "model": "",
            "participants": "agents",
            "site": "",
            "labels": "",
            "dataset": "",
            "rounds": "3",
            "local_steps": "20",
            "rank": "8",
            "alpha": "16",
            "learning_rate": "0.001",
            "aggregation": "fedavg",
            "min_participants": "",
            "gate": "1",
            "dp_noise": "",
            "dp_clip": "",
        }
    )
    agents: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("q_proj", "v_proj")


async def read_start_form(request: Request[Any, Any, Any], login: ConsoleLogin) -> StartForm:
    """The posted form after its CSRF token is checked: one value per field but the agents
    and targets, which may repeat; BadForm for anything malformed."""
    if request.content_type[0] != FORM_TYPE:
        raise BadForm("The request is not a form.")
    items = list((await request.form()).multi_items())
    if len(items) > MAX_FORM_FIELDS:
        raise BadForm("The form has too many fields.")
    single: dict[str, str] = {}
    repeated: dict[str, list[str]] = {name: [] for name in REPEATED}
    for name, value in items:
        if not isinstance(value, str):
            raise BadForm("The form may not hold files.")
        if name in repeated:
            repeated[name].append(value)
        elif name in single:
            raise BadForm(f"The field {name[:40]!r} is given twice.")
        else:
            single[name] = value
    check_token(single.get(CSRF_FIELD, ""), login.csrf_token)
    form = StartForm()
    limits = {"model": MAX_NAME_CHARS, "site": 63, "labels": MAX_LABELS_CHARS, "dataset": 63}
    limits |= {"participants": 16, "aggregation": 16}
    limits |= {name: MAX_NUMBER_CHARS for name, _, _ in NUMBERS}
    for name, limit in limits.items():
        label = f"The {name.replace('_', ' ')}"
        form.values[name] = text_field(single, name, label, max_chars=limit, required=False)
    form.agents = tuple(_choices(repeated["agents"], "An agent", 64))
    form.targets = tuple(_choices(repeated["targets"], "A LoRA target", 32))
    return form


def _choices(values: list[str], label: str, max_chars: int) -> list[str]:
    return [text_field({"v": v}, "v", label, max_chars=max_chars) for v in values]


def _number(text: str) -> object:
    """A number when the text reads as one (the parser then checks its range and kind), else
    the text itself (which the parser refuses, naming the field)."""
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        return float(text)
    return text


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadForm(f"The label selector is key=value,…: {pair[:80]!r} is not key=value.")
        labels[key.strip()] = value.strip()
    return labels


def job_document(form: StartForm) -> dict[str, Any]:
    """The JSON object POST /api/v1/fl/jobs would take; BadForm for a malformed selector."""
    values = form.values
    document: dict[str, Any] = {"model": values["model"], "dataset": values["dataset"]}
    kind = values["participants"]
    if kind not in PARTICIPANT_KINDS:
        raise BadForm(f"The participants are one of {', '.join(PARTICIPANT_KINDS)}.")
    if kind == "agents":
        document["agents"] = list(form.agents)
    elif kind == "site":
        document["site"] = values["site"]
    else:
        document["labels"] = _labels(values["labels"]) if values["labels"].strip() else {}
    if values["aggregation"]:
        document["aggregation"] = values["aggregation"]
    document["lora"] = {"targets": list(form.targets)}
    for name, _, path in NUMBERS:
        text = values[name].strip()
        if not text:
            continue
        parent = document
        for key in path[:-1]:
            parent = parent.setdefault(key, {})
        parent[path[-1]] = _number(text)
    return document


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """The document as the request body the REST route would read."""
    return json.dumps(document).encode()


def form_choices() -> dict[str, Any]:
    return {
        "participant_kinds": PARTICIPANT_KINDS,
        "lora_targets": LORA_TARGETS,
        "aggregations": AGGREGATIONS,
        "number_fields": NUMBERS,
    }
