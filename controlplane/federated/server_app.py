"""The Flower ServerApp of a federated fine-tuning job: finds the job's nodes, runs the rounds
with `SiteRounds`, evaluates the final adapter at every site, and leaves the results in the
job's directory (run_plan) for the control plane's runner."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg, Strategy

from common.federated.adapter_tensors import Adapter, initial_adapter, load_adapter, save_adapter
from common.federated.flower_messages import (
    ADAPTER_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    NUM_EXAMPLES,
    SITE_KEY,
    RoundSettings,
)
from common.federated.gguf_lora import lora_shapes_from_gguf
from controlplane.federated.run_plan import (
    EVALUATION_FILE,
    FINAL_ADAPTER,
    NODES_FILE,
    PLAN_FILE,
    RESULT_FILE,
    RunPlan,
    write_json,
)
from controlplane.federated.server_rounds import RoundFailed, SiteRounds, error_reason

log = logging.getLogger(__name__)

app = ServerApp()

QUERY_TIMEOUT_S = 120.0  # a node's ClientApp starts in a fresh process: allow for a slow site
POLL_S = 2.0
MAX_ADAPTER_BYTES = 1024**3


class ParticipantsMissing(RuntimeError):
    """Fewer usable sites than the job's minimum came within its wait."""


def _settings(plan: RunPlan, server_round: int = 0) -> RoundSettings:
    return RoundSettings(
        job_id=plan.job_id,
        server_round=server_round,
        rank=plan.rank,
        alpha=plan.alpha,
        targets=plan.targets,
        learning_rate=plan.learning_rate,
        local_steps=plan.local_steps,
        batch_size=plan.batch_size,
        max_seq_len=plan.max_seq_len,
        seed=plan.seed,
        freeze_a=plan.aggregation == "frozen-a",
    )


def find_sites(grid: Grid, plan: RunPlan) -> dict[int, str]:
    """Asks every connected node which job and agent it serves, until the planned agents have
    answered (or `participant_wait_s` passed with at least `min_participants` usable)."""
    deadline = time.monotonic() + plan.participant_wait_s
    asked: set[int] = set()
    sites: dict[int, str] = {}
    refused: dict[str, str] = {}
    wanted = set(plan.agents)
    query = RecordDict({CONFIG_KEY: ConfigRecord({"job-id": plan.job_id})})
    while True:
        new = [n for n in grid.get_node_ids() if n not in asked]
        if new:
            asked.update(new)
            messages = [Message(content=query, message_type="query", dst_node_id=n) for n in new]
            replies = list(grid.send_and_receive(messages, timeout=QUERY_TIMEOUT_S))
            # A node that did not answer in time is asked again with a new message: e.g. after
            # a control-plane restart, a SuperNode still busy with the old run's message.
            asked.difference_update(set(new) - {r.metadata.src_node_id for r in replies})
            for reply in replies:
                if reply.has_error():
                    asked.discard(reply.metadata.src_node_id)  # asked again next time
                    continue
                site = reply.content.config_records[SITE_KEY]
                agent = str(site.get("agent-id", ""))
                if site.get("job-id") != plan.job_id or agent not in wanted:
                    continue  # another job's node
                if site.get("ready"):
                    sites[reply.metadata.src_node_id] = agent
                    refused.pop(agent, None)
                else:
                    refused[agent] = str(site.get("reason", ""))[:300]
                    asked.discard(reply.metadata.src_node_id)  # its data may be fixed meanwhile
        answered = set(sites.values()) | set(refused)
        if set(sites.values()) >= wanted or (
            answered >= wanted and len(sites) >= plan.min_participants
        ):
            break
        if time.monotonic() >= deadline:
            if len(sites) >= plan.min_participants:
                break
            missing = sorted(wanted - answered)
            details = [f"{a}: {r}" for a, r in sorted(refused.items())]
            details += [f"{a}: no SuperNode connected" for a in missing]
            raise ParticipantsMissing(
                f"{len(sites)} of the required {plan.min_participants} participants are ready "
                f"after {plan.participant_wait_s:.0f} s ({'; '.join(details)})"
            )
        time.sleep(POLL_S)
    write_json(
        plan.directory / NODES_FILE,
        {"sites": {str(n): a for n, a in sites.items()}, "left_out": refused},
    )
    return sites


def _strategy(plan: RunPlan, sites: Mapping[int, str]) -> Strategy:
    # FedAvg weighted by each site's example count. With "frozen-a" every site trains only B
    # over the same A, so the average of the adapters is exactly the average of their updates.
    inner: Strategy = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=len(sites),
        min_available_nodes=len(sites),
        weighted_by_key=NUM_EXAMPLES,
        arrayrecord_key=ADAPTER_KEY,
        configrecord_key=CONFIG_KEY,
    )
    if plan.differential_privacy is not None:
        inner = DifferentialPrivacyServerSideFixedClipping(
            inner,
            noise_multiplier=plan.differential_privacy.noise_multiplier,
            clipping_norm=plan.differential_privacy.clipping_norm,
            num_sampled_clients=len(sites),
        )
    return inner


def _array_record(tensors: Adapter) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in tensors.items()})


def evaluate_sites(grid: Grid, plan: RunPlan, sites: Mapping[int, str], tensors: Adapter) -> None:
    """Held-out loss of the base and of the final adapter at every site."""
    content = RecordDict(
        {ADAPTER_KEY: _array_record(tensors), CONFIG_KEY: _settings(plan).to_config()}
    )
    messages = [Message(content=content, message_type="evaluate", dst_node_id=n) for n in sites]
    results: dict[str, dict[str, float]] = {}
    failed: dict[str, str] = {}
    for reply in grid.send_and_receive(messages, timeout=plan.round_timeout_s):
        agent = sites.get(reply.metadata.src_node_id, str(reply.metadata.src_node_id))
        if reply.has_error():
            failed[agent] = error_reason(reply)
            continue
        metrics = reply.content.metric_records[METRICS_KEY]
        results[agent] = {k: float(v) for k, v in metrics.items()}  # type: ignore[arg-type]
    for agent in sites.values():
        if agent not in results and agent not in failed:
            failed[agent] = "no answer within the timeout"
    write_json(plan.directory / EVALUATION_FILE, {"sites": results, "failed": failed})


@app.main()
def main(grid: Grid, context: Context) -> None:
    directory = Path(str(context.run_config["job-dir"]))
    plan = RunPlan.from_json((directory / PLAN_FILE).read_text(encoding="utf-8"))
    try:
        sites = find_sites(grid, plan)
        shapes = lora_shapes_from_gguf(Path(plan.base_gguf), plan.rank, plan.targets)
        if plan.initial_adapter:
            start = load_adapter(Path(plan.initial_adapter), MAX_ADAPTER_BYTES)
        else:
            start = initial_adapter(shapes, plan.seed)
        final = start  # a run resumed after the last round only evaluates
        if plan.first_round <= plan.rounds:
            rounds = SiteRounds(
                _strategy(plan, sites), sites, shapes, directory, first_round=plan.first_round
            )
            result = rounds.start(
                grid=grid,
                initial_arrays=_array_record(start),
                num_rounds=plan.rounds - plan.first_round + 1,
                timeout=plan.round_timeout_s,
                train_config=_settings(plan).to_config(),
            )
            final = {key: array.numpy() for key, array in result.arrays.items()}
        save_adapter(directory / FINAL_ADAPTER, final)
        evaluate_sites(grid, plan, sites, final)
    except (ParticipantsMissing, RoundFailed) as exc:
        write_json(directory / RESULT_FILE, {"state": "failed", "reason": str(exc)})
        return
    except Exception as exc:
        log.exception("the federated run of job %s failed", plan.job_id)
        write_json(
            directory / RESULT_FILE,
            {"state": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]},
        )
        raise
    write_json(directory / RESULT_FILE, {"state": "succeeded"})
