"""`SiteRounds`: the Flower strategy of a job. It sends each round to the job's own nodes,
rejects adapters with wrong shapes or non-finite values, aggregates the rest with the inner
strategy (FedAvg, optionally with Flower's differential privacy), and writes every round's
aggregate and per-site metrics to the job's directory."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.run import Run

from common.federated.adapter_tensors import AdapterError, check_adapter, save_adapter
from common.federated.flower_messages import ADAPTER_KEY, CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES
from controlplane.federated.run_plan import round_file, write_json

log = logging.getLogger(__name__)

MAX_REASON = 300


def error_reason(reply: Message) -> str:
    return str(reply.error.reason)[:MAX_REASON] if reply.has_error() else ""


class RoundFailed(RuntimeError):
    """No usable adapter came back in a round."""


class SiteRounds(Strategy):
    """Rounds over the job's nodes (`sites`: Flower node id -> agent id)."""

    def __init__(
        self,
        inner: Strategy,
        sites: Mapping[int, str],
        shapes: Mapping[str, tuple[int, int]],
        directory: Path,
        *,
        first_round: int = 1,
    ) -> None:
        super().__init__()
        self._inner = inner
        self._sites = dict(sites)
        self._shapes = dict(shapes)
        self._directory = directory
        self._offset = first_round - 1  # Flower counts from 1 in every run
        self._started = 0.0
        self._started_at = 0.0
        self._bytes_down = 0

    def summary(self) -> None:
        log.info("SiteRounds over %d sites, inner strategy %s", len(self._sites), self._inner)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._started = time.monotonic()
        self._started_at = time.time()
        messages = list(
            self._inner.configure_train(server_round, arrays, config, JobGrid(grid, self._sites))
        )
        for message in messages:  # the job's round count goes on across a resumed run
            message.content.config_records[CONFIG_KEY]["server-round"] = server_round + self._offset
        self._bytes_down = _array_bytes(arrays) * len(messages)
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        round_number = server_round + self._offset
        received = list(replies)
        accepted: list[Message] = []
        dropped: dict[str, str] = {}
        per_site: dict[str, dict[str, float]] = {}
        bytes_up = 0
        answered = set()
        for reply in received:
            node_id = reply.metadata.src_node_id
            agent = self._sites.get(node_id, f"node-{node_id}")
            answered.add(node_id)
            reason = error_reason(reply) or self._rejection(reply)
            if reason:
                dropped[agent] = reason
                log.warning(
                    "round %d: the adapter of %s is rejected: %s", round_number, agent, reason
                )
                continue
            bytes_up += _array_bytes(reply.content.array_records[ADAPTER_KEY])
            site_metrics = reply.content.metric_records[METRICS_KEY]
            per_site[agent] = {k: float(v) for k, v in site_metrics.items()}  # type: ignore[arg-type]
            accepted.append(reply)
        for node_id, agent in self._sites.items():
            if node_id not in answered:
                dropped[agent] = "no answer within the round's timeout (the site dropped out)"
        report = {
            "round": round_number,
            "phase": "train",
            "participants": sorted(per_site),
            "dropped": dropped,
            "sites": per_site,
            "bytes_down": self._bytes_down,
            "bytes_up": bytes_up,
            "started_at": self._started_at,
            "finished_at": time.time(),
            "wall_s": time.monotonic() - self._started,
            "train_s": max((m.get("train-seconds", 0.0) for m in per_site.values()), default=0.0),
            "load_s": max((m.get("load-seconds", 0.0) for m in per_site.values()), default=0.0),
        }
        if not accepted:
            write_json(round_file(self._directory, round_number, "json"), report)
            raise RoundFailed(
                f"round {round_number}: no usable adapter came back ("
                + "; ".join(f"{a}: {r}" for a, r in sorted(dropped.items()))
                + ")"
            )
        _common_metrics(accepted)
        arrays, metrics = self._inner.aggregate_train(server_round, accepted)
        if arrays is not None:
            tensors = {key: array.numpy() for key, array in arrays.items()}
            save_adapter(round_file(self._directory, round_number, "npz"), tensors)
        report["aggregate"] = dict(metrics.items()) if metrics is not None else {}
        write_json(round_file(self._directory, round_number, "json"), report)
        return arrays, metrics

    def _rejection(self, reply: Message) -> str:
        """Why a reply's adapter cannot be aggregated ("" when it can)."""
        content = reply.content
        if ADAPTER_KEY not in content.array_records or METRICS_KEY not in content.metric_records:
            return "the reply lacks the adapter or its metrics"
        if len(content) != 2:
            return "the reply carries other records than the adapter and its metrics"
        examples = content.metric_records[METRICS_KEY].get(NUM_EXAMPLES)
        if not isinstance(examples, int | float) or not math.isfinite(examples) or examples <= 0:
            return f"the reply's {NUM_EXAMPLES} is not a positive number"
        if not all(
            isinstance(v, int | float) for v in content.metric_records[METRICS_KEY].values()
        ):
            return "the reply's metrics are not all numbers"
        try:
            tensors = {k: a.numpy() for k, a in content.array_records[ADAPTER_KEY].items()}
            check_adapter(tensors, self._shapes)
        except (AdapterError, ValueError, TypeError) as exc:
            return f"adapter rejected: {exc}"[:MAX_REASON]
        return ""

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []  # the adapter is evaluated once, after the last round (server_app)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None


def _common_metrics(replies: list[Message]) -> None:
    """Keeps in each reply the metrics every reply has: FedAvg refuses replies whose metric
    names differ, and one site's extra metric must not abort the round (it is recorded per
    site anyway)."""
    records = [reply.content.metric_records[METRICS_KEY] for reply in replies]
    common = set.intersection(*(set(record) for record in records)) if records else set()
    for reply, record in zip(replies, records, strict=True):
        reply.content[METRICS_KEY] = MetricRecord({k: v for k, v in record.items() if k in common})


def _array_bytes(arrays: ArrayRecord) -> int:
    return sum(len(array.data) for array in arrays.values())


class JobGrid(Grid):
    """The grid as one job sees it: only its own nodes (one SuperLink serves every job)."""

    def __init__(self, grid: Grid, sites: Mapping[int, str]) -> None:
        self._grid = grid
        self._node_ids = list(sites)

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    @property
    def run(self) -> Run:
        return self._grid.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        live = set(self._grid.get_node_ids())
        return [node_id for node_id in self._node_ids if node_id in live]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)
