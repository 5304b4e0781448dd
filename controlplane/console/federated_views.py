"""What the federated pages show: job rows, rounds per site, the evaluation, a train-loss chart."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controlplane.console.charts import HEIGHT, PAD, WIDTH, Chart, Line
from controlplane.federated.job_views import FederatedJobView, RoundView
from controlplane.services import ControlPlaneServices

MAX_CHART_SERIES = 4  # the console's chart colours; the other sites are named as left out
LIST_LIMIT = 100


@dataclass(frozen=True)
class SiteResult:
    agent: str  # the participant's name (its id when it is not planned)
    site: str
    train_loss: str
    heldout_loss: str
    base_heldout_loss: str
    examples: str
    drop: str  # evaluation: the held-out loss drop against the base, in %


@dataclass(frozen=True)
class RoundRow:
    round: int
    phase: str
    sites: tuple[SiteResult, ...]
    dropped: tuple[tuple[str, str], ...]  # name, why
    bytes_down: str
    bytes_up: str
    wall_s: str
    train_s: str
    finished: bool
    aggregate_drop: str  # evaluation: the drop over every site's examples, in %


@dataclass(frozen=True)
class JobDetail:
    job: FederatedJobView
    rounds: tuple[RoundRow, ...]  # training rounds
    evaluation: RoundRow | None
    chart: Chart | None
    adapter_ref: str
    bytes_down: str
    bytes_up: str
    wall_s: str
    train_s: str


def number(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def size(count: int) -> str:
    """Bytes as KiB, MiB or GiB, as `outpost fl status` shows them."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _drop(base: object, tuned: object) -> str:
    if not isinstance(base, int | float) or not isinstance(tuned, int | float) or base <= 0:
        return "-"
    return f"{100 * (base - tuned) / base:.2f} %"


def _names(job: FederatedJobView) -> dict[str, tuple[str, str]]:
    named = {p.agent_id: (p.name, p.site) for p in job.participants}
    named.update((s.agent_id, (s.name, s.site)) for s in job.skipped if s.agent_id not in named)
    return named


def round_row(report: RoundView, names: Mapping[str, tuple[str, str]]) -> RoundRow:
    def who(agent_id: str) -> tuple[str, str]:
        return names.get(agent_id, (agent_id, ""))

    sites = tuple(
        SiteResult(
            agent=who(agent_id)[0],
            site=who(agent_id)[1],
            train_loss=number(values.get("train_loss")),
            heldout_loss=number(values.get("heldout_loss")),
            base_heldout_loss=number(values.get("base_heldout_loss")),
            examples=number(values.get("examples")),
            drop=_drop(values.get("base_heldout_loss"), values.get("heldout_loss")),
        )
        for agent_id, values in sorted(report.sites.items(), key=lambda kv: who(kv[0]))
    )
    aggregate = report.aggregate.get("heldout_loss_drop_pct")
    return RoundRow(
        round=report.round,
        phase=report.phase,
        sites=sites,
        dropped=tuple(sorted((who(a)[0], why) for a, why in report.dropped.items())),
        bytes_down=size(report.bytes_down),
        bytes_up=size(report.bytes_up),
        wall_s=seconds(report.wall_s),
        train_s=seconds(report.train_s),
        finished=report.finished_at is not None,
        aggregate_drop=f"{aggregate:.2f} %" if isinstance(aggregate, int | float) else "-",
    )


def train_loss_chart(
    reports: Sequence[RoundView], rounds: int, names: Mapping[str, tuple[str, str]]
) -> Chart | None:
    """Train loss per site over rounds 1..`rounds`, as an inline-SVG polyline chart."""
    series: dict[str, list[tuple[int, float]]] = {}
    for report in reports:
        for agent_id, values in report.sites.items():
            loss = values.get("train_loss")
            if isinstance(loss, int | float) and not isinstance(loss, bool):
                series.setdefault(agent_id, []).append((report.round, float(loss)))
    if not series:
        return None
    ordered = sorted(series.items(), key=lambda kv: names.get(kv[0], (kv[0], ""))[0])
    shown = ordered[:MAX_CHART_SERIES]
    losses = [loss for _, points in shown for _, loss in points]
    low, high = min([0.0, *losses]), max(losses)
    high = high if high > low else low + 1.0

    def x(round_number: int) -> float:
        return WIDTH * (round_number - 1) / (rounds - 1) if rounds > 1 else WIDTH / 2

    def y(loss: float) -> float:
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * (loss - low) / (high - low)

    lines = []
    for agent_id, points in shown:
        coords = [(x(r), y(loss)) for r, loss in sorted(points)]
        if len(coords) == 1:  # a lone point gets a short stub so that it shows
            coords.append((coords[0][0] + 3, coords[0][1]))
        lines.append(
            Line(
                label=names.get(agent_id, (agent_id, ""))[0],
                points=" ".join(f"{px:.1f},{py:.1f}" for px, py in coords),
                latest=f"{sorted(points)[-1][1]:.4f}",
            )
        )
    return Chart(
        "Train loss per site",
        "loss",
        f"{low:.3g}",
        f"{high:.3g}",
        tuple(lines),
        len(ordered) - len(shown),
    )


def _adapter_ref(services: ControlPlaneServices, job: FederatedJobView) -> str:
    ref = job.metrics.get("adapter")
    if isinstance(ref, str) and ref:
        return ref
    if job.adapter_model_id is None:
        return ""
    found = [m.ref for m in services.models.list() if m.id == job.adapter_model_id]
    return found[0] if found else f"model #{job.adapter_model_id}"


def job_detail(services: ControlPlaneServices, job_id: str) -> JobDetail:
    """One job with its rounds (InvalidArgument, NotFound); blocking: call in a thread."""
    jobs = services.federated_jobs
    job = jobs.get(job_id)
    reports = jobs.rounds(job_id)
    names = _names(job)
    training = [r for r in reports if r.phase == "train"]
    evaluation = [r for r in reports if r.phase == "evaluate"]
    return JobDetail(
        job=job,
        rounds=tuple(round_row(r, names) for r in training),
        evaluation=round_row(evaluation[-1], names) if evaluation else None,
        chart=train_loss_chart(training, job.rounds, names),
        adapter_ref=_adapter_ref(services, job),
        bytes_down=size(sum(r.bytes_down for r in reports)),
        bytes_up=size(sum(r.bytes_up for r in reports)),
        wall_s=seconds(sum(r.wall_s for r in reports)),
        train_s=seconds(sum(r.train_s for r in reports)),
    )


def jobs_list(services: ControlPlaneServices) -> list[tuple[FederatedJobView, str]]:
    """The newest jobs with their adapter's reference ("" until one succeeded); blocking."""
    jobs = services.federated_jobs.list(limit=LIST_LIMIT)
    refs: dict[int, str] = {}
    if any(job.adapter_model_id is not None for job in jobs):
        refs = {m.id: m.ref for m in services.models.list()}
    return [(job, _list_ref(job, refs)) for job in jobs]


def _list_ref(job: FederatedJobView, refs: Mapping[int, str]) -> str:
    if job.adapter_model_id is None:
        return ""
    return refs.get(job.adapter_model_id, f"model #{job.adapter_model_id}")


def spec_summary(job: FederatedJobView) -> list[tuple[str, Any]]:
    """The spec as the detail page lists it: (what, value) pairs."""
    spec = job.spec
    dp = spec.differential_privacy
    if spec.agents:
        participants = f"{len(spec.agents)} agent(s) by id"
    elif spec.site:
        participants = f"site {spec.site}"
    else:
        participants = "labels " + ",".join(f"{k}={v}" for k, v in sorted(spec.labels.items()))
    datasets = ", ".join(f"{site}: {name}" for site, name in sorted(spec.datasets.items()))
    return [
        ("Model", f"{job.model.name}@{job.model.version}"),
        ("Participants", participants),
        ("Dataset", spec.dataset + (f" (per site: {datasets})" if datasets else "")),
        ("Rounds", spec.rounds),
        ("Local steps", f"{spec.local_steps} (batch {spec.batch_size}, {spec.max_seq_len} tokens)"),
        ("Learning rate", f"{spec.learning_rate:g}"),
        ("LoRA", f"rank {spec.lora.rank}, alpha {spec.lora.alpha:g}"),
        ("LoRA targets", ", ".join(spec.lora.targets)),
        ("Aggregation", spec.aggregation),
        ("Minimum participants", job.min_participants),
        (
            "Differential privacy",
            "off"
            if dp is None
            else f"noise {dp.noise_multiplier:g}, clipping norm {dp.clipping_norm:g}",
        ),
        ("Gate", f"held-out loss drops at least {spec.min_heldout_loss_drop_pct:g} %"),
        ("Adapter name", spec.adapter_name or "-"),
    ]
