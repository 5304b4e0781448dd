"""Renders registered metrics in Prometheus' text exposition format with prometheus-client."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from litestar import Response, get
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as PrometheusFamily
from prometheus_client.registry import Collector

from common.telemetry import METRICS, Metric, MetricKind, MetricSpec

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _RegisteredMetrics(Collector):
    """Asks `source` for current metrics at every scrape and groups them into families."""

    def __init__(
        self, source: Callable[[], Iterable[Metric]], specs: Mapping[str, MetricSpec]
    ) -> None:
        self._source = source
        self._specs = specs

    def collect(self) -> Iterator[PrometheusFamily]:
        by_name: dict[str, list[Metric]] = defaultdict(list)
        for metric in self._source():
            by_name[metric.name].append(metric)
        for name in sorted(by_name):
            spec = self._specs[name]
            family: GaugeMetricFamily | CounterMetricFamily
            if spec.kind is MetricKind.COUNTER:
                # prometheus-client adds the `_total` suffix itself.
                family = CounterMetricFamily(
                    name.removesuffix("_total"), spec.help, labels=spec.labels
                )
            else:
                family = GaugeMetricFamily(name, spec.help, labels=spec.labels)
            for metric in by_name[name]:
                family.add_metric([metric.labels[label] for label in spec.labels], metric.value)
            yield family


def exposition(
    source: Callable[[], Iterable[Metric]], specs: Mapping[str, MetricSpec] = METRICS
) -> bytes:
    """The text a Prometheus scrape gets; every metric must be named in `specs`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_RegisteredMetrics(source, specs))
    return generate_latest(registry)


def metrics_route(render: Callable[[], bytes]) -> Any:
    """A Litestar `GET /metrics` handler; `render` blocks, so it runs on a worker thread."""

    @get("/metrics", include_in_schema=False)
    async def metrics() -> Response[bytes]:
        body = await asyncio.to_thread(render)
        return Response(body, media_type=CONTENT_TYPE)

    return metrics
