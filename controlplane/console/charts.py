"""Telemetry charts for the agent page: metric series over a chosen range, drawn as inline SVG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from controlplane.console.errors import BadForm
from controlplane.services import ControlPlaneServices
from controlplane.telemetry_store import Series

WIDTH, HEIGHT = 600, 140  # the SVG's coordinate system; CSS scales it to the card
PAD = 6  # room above the highest and below the lowest value
MAX_SERIES = 4  # lines per chart: the rest are named as left out
# range name -> (span, step): at most a few hundred points per line
RANGES: Mapping[str, tuple[timedelta, timedelta]] = {
    "1h": (timedelta(hours=1), timedelta(minutes=1)),
    "6h": (timedelta(hours=6), timedelta(minutes=5)),
    "24h": (timedelta(hours=24), timedelta(minutes=15)),
    "7d": (timedelta(days=7), timedelta(hours=2)),
}
DEFAULT_RANGE = "1h"


@dataclass(frozen=True)
class ChartSpec:
    title: str
    metric: str
    scale: float  # stored value times this is shown
    unit: str
    labels: Mapping[str, str] | None = None  # keep only series with these labels


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec("CPU", "outpost_cpu_utilization_ratio", 100, "%", {"cpu": "total"}),
    ChartSpec("Memory used", "outpost_memory_used_bytes", 1e-9, "GB"),
    ChartSpec("GPU utilisation", "outpost_gpu_utilization_ratio", 100, "%"),
    ChartSpec("VRAM used", "outpost_gpu_memory_used_bytes", 1e-9, "GB"),
    ChartSpec("GPU temperature", "outpost_gpu_temperature_celsius", 1, "°C"),
    ChartSpec("GPU power", "outpost_gpu_power_watts", 1, "W"),
    ChartSpec("Tokens/s", "outpost_model_tokens_per_second", 1, "tok/s"),
    ChartSpec("Time to first token", "outpost_model_time_to_first_token_seconds", 1000, "ms"),
    ChartSpec("Queue depth", "outpost_model_queue_depth", 1, "requests"),
)


@dataclass(frozen=True)
class Line:
    label: str  # the series' labels, e.g. "model=smol"
    points: str  # SVG polyline points, "x,y x,y ..."
    latest: str


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    low: str
    high: str
    lines: tuple[Line, ...]
    left_out: int  # series beyond MAX_SERIES


def check_range(name: str | None) -> str:
    if name is None or name == "":
        return DEFAULT_RANGE
    if name not in RANGES:
        raise BadForm(f"The range must be one of {', '.join(RANGES)}.")
    return name


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _polyline(points: Sequence[tuple[float, float]]) -> str:
    """SVG points; a lone point gets a short stub so that it shows."""
    if len(points) == 1:
        points = [points[0], (points[0][0] + 3, points[0][1])]
    return " ".join(f"{px:.1f},{py:.1f}" for px, py in points)


def _chart(spec: ChartSpec, series: Sequence[Series], start: datetime, span: timedelta) -> Chart:
    shown = [s for s in series if s.points][:MAX_SERIES]
    values = [v * spec.scale for s in shown for _, v in s.points]
    low = min([0.0, *values])
    high = max([*values, low + 1e-9])
    if spec.unit == "%":
        low, high = 0.0, max(high, 100.0)

    def x(moment: datetime) -> float:
        return WIDTH * (moment - start) / span

    def y(value: float) -> float:
        share = (value * spec.scale - low) / (high - low)
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * share

    lines = tuple(
        Line(
            label=", ".join(f"{k}={v}" for k, v in sorted(s.labels.items())) or spec.title,
            points=_polyline([(x(t), y(v)) for t, v in s.points]),
            latest=_number(s.points[-1][1] * spec.scale),
        )
        for s in shown
    )
    return Chart(
        spec.title, spec.unit, _number(low), _number(high), lines, len(series) - len(shown)
    )


def agent_charts(services: ControlPlaneServices, agent_id: str, range_name: str) -> list[Chart]:
    """The agent's charts over the range ending now (only metrics with data); blocking."""
    span, step = RANGES[range_name]
    end = services.telemetry.now()
    start = end - span
    charts = []
    for spec in CHARTS:
        series = services.telemetry.series(
            agent_id, spec.metric, start=start, end=end, step=step, labels=spec.labels
        )
        if any(s.points for s in series):
            charts.append(_chart(spec, series, start, span))
    return charts
