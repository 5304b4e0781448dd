"""The control plane's own Prometheus metrics: agents by liveness, each agent up, ingestion."""

from __future__ import annotations

from common.prometheus import exposition
from common.telemetry import Metric, MetricKind, MetricSpec
from controlplane.liveness import Liveness
from controlplane.services import ControlPlaneServices

_SPECS = (
    MetricSpec("outpost_fleet_agents", MetricKind.GAUGE, "", "Agents by liveness.", ("liveness",)),
    MetricSpec(
        "outpost_agent_up",
        MetricKind.GAUGE,
        "",
        "1 while the agent is ready or degraded, 0 when unreachable or revoked.",
        ("agent_id", "site", "liveness"),
    ),
    MetricSpec(
        "outpost_telemetry_samples_received_total",
        MetricKind.COUNTER,
        "",
        "Telemetry samples received from agents, duplicates included.",
    ),
    MetricSpec("outpost_telemetry_samples_stored_total", MetricKind.COUNTER, "", "Samples stored."),
    MetricSpec(
        "outpost_telemetry_samples_duplicate_total",
        MetricKind.COUNTER,
        "",
        "Samples received again (replays) and not stored twice.",
    ),
    MetricSpec(
        "outpost_telemetry_samples_rejected_total",
        MetricKind.COUNTER,
        "",
        "Samples refused (too old, from the future, malformed).",
    ),
    MetricSpec(
        "outpost_telemetry_samples_dropped_by_agents_total",
        MetricKind.COUNTER,
        "",
        "Samples agents dropped from full buffers, as they reported.",
    ),
)
FLEET_METRICS = {spec.name: spec for spec in _SPECS}


def fleet_metrics(services: ControlPlaneServices) -> list[Metric]:
    health = services.health()
    sites = {agent.id: agent.site for agent in services.fleet.list()}
    metrics = [
        Metric(
            "outpost_fleet_agents",
            sum(1 for h in health.values() if h.state is state),
            {"liveness": state.value},
        )
        for state in Liveness
    ]
    for agent_id, h in health.items():
        up = h.state in (Liveness.READY, Liveness.DEGRADED)
        labels = {"agent_id": agent_id, "site": sites.get(agent_id, ""), "liveness": h.state.value}
        metrics.append(Metric("outpost_agent_up", float(up), labels))
    totals = services.telemetry.totals()
    metrics += [
        Metric("outpost_telemetry_samples_received_total", totals.received, {}),
        Metric("outpost_telemetry_samples_stored_total", totals.stored, {}),
        Metric("outpost_telemetry_samples_duplicate_total", totals.duplicates, {}),
        Metric("outpost_telemetry_samples_rejected_total", totals.rejected, {}),
        Metric("outpost_telemetry_samples_dropped_by_agents_total", totals.dropped_by_agent, {}),
    ]
    return metrics


def prometheus(services: ControlPlaneServices) -> bytes:
    """Reads the database: call it off the event loop."""
    return exposition(lambda: fleet_metrics(services), FLEET_METRICS)
