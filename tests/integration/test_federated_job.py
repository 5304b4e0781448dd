"""A real federated fine-tuning job on loopback: a control plane with its SuperLink, three
enrolled agents with three different small datasets and a SuperNode each (real processes),
two rounds; the adapter is exported, checked against torch, evaluated, and served per request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import numpy as np
import pytest
from gguf import GGUFReader

from common.federated.adapter_tensors import load_adapter
from controlplane.federated.outcome import ADAPTER_FILE
from controlplane.federated.run_plan import FINAL_ADAPTER
from tests.conftest import DEMO_SHA256, seed_torch_cache
from tests.controlplane_harness import (
    RunningControlPlane,
    controlplane_settings,
    managed_agent,
    wait_until,
)
from tests.integration.test_gguf_lora_verify import llama_logits

pytestmark = pytest.mark.model

SITES = ("north", "south", "east")
TOPICS = {
    "north": ("printer", "toner", "paper tray"),
    "south": ("laptop", "battery", "charger"),
    "east": ("badge", "door", "reception"),
}
JOB_TIMEOUT_S = 600.0
ALPHA = 8
TOLERANCE = 0.05  # llama.cpp with the exported adapter vs torch + peft, on an F32 copy


def write_dataset(directory: Path, site: str) -> None:
    """A small support-ticket dataset, different at each site: chats and plain text."""
    directory.mkdir(parents=True)
    lines: list[dict[str, Any]] = []
    for i in range(14):
        thing = TOPICS[site][i % 3]
        question = f"Ticket {i}: the {thing} on floor {i % 4} at {site} does not work."
        answer = f"Thanks. The {site} team will check the {thing} on floor {i % 4} today."
        if i % 2:
            lines.append({"messages": [{"role": "user", "content": question},
                                       {"role": "assistant", "content": answer}]})  # fmt: skip
        else:
            lines.append({"text": f"{question} {answer}"})
    (directory / "tickets.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


@dataclass(frozen=True)
class FinishedJob:
    job: dict[str, Any]
    job_dir: Path
    adapter: dict[str, Any]  # its registry entry
    served: dict[str, Any]  # a completion answered with the adapter
    base_answer: dict[str, Any]


def completion(base: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "Ticket 3: the", "max_tokens": 8, "temperature": 0}
    return httpx.post(f"{base}/v1/completions", json=body, timeout=60)


@pytest.fixture(scope="module")
def finished_job(
    demo_model: Path, torch_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FinishedJob]:
    root = tmp_path_factory.mktemp("federated")
    settings = controlplane_settings(root / "cp", None)
    with RunningControlPlane(settings) as cp, ExitStack() as stack:
        agents = []
        for site in SITES:
            state = root / site
            write_dataset(state / "datasets" / "support", site)
            seed_torch_cache(torch_cache, state)
            running, companion = managed_agent(
                state, cp.enroll_address, cp.create_token(site="hq"), cp.fingerprint
            )
            stack.enter_context(running)
            running.wait_until_serving()
            wait_until(companion.link.connected.is_set, f"the {site} agent is connected")
            agents.append(running)
        with cp.api() as api:
            listed = api.get("/agents").json()["agents"]
            assert all("federated-training" in a["capabilities"] for a in listed)
            ids = [a["id"] for a in listed]
            cp.assign_demo_model(demo_model, site="hq")
            created = api.post(
                "/fl/jobs",
                json={
                    "model": "smollm2",
                    "agents": ids,
                    "dataset": "support",
                    "rounds": 2,
                    "local_steps": 4,
                    "batch_size": 2,
                    "max_seq_len": 48,
                    "learning_rate": 0.005,
                    "lora": {"rank": 4, "alpha": ALPHA, "targets": ["q_proj", "v_proj"]},
                    "participant_wait_s": 300,
                    "gate": {"min_heldout_loss_drop_pct": 1.0},
                    "training": {"threads": 1, "nice": 0},
                    "deploy": {"adapter_name": "support"},
                },
            )
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]

            def ended() -> bool:
                state = api.get(f"/fl/jobs/{job_id}").json()["state"]
                return state in ("succeeded", "failed", "cancelled")

            wait_until(ended, "the federated job ends", timeout=JOB_TIMEOUT_S)
            job = api.get(f"/fl/jobs/{job_id}").json()
            assert job["state"] == "succeeded", job["reason"]
            adapter = api.get("/models/support").json()

        def served() -> bool:
            return completion(agents[0].http_base, "smol:support").status_code == 200

        wait_until(served, "an agent serves smol:support", timeout=180)
        yield FinishedJob(
            job,
            settings.data_dir / "federated" / "jobs" / job_id,
            adapter,
            completion(agents[0].http_base, "smol:support").json(),
            completion(agents[0].http_base, "smol").json(),
        )


def test_every_site_trained_in_both_rounds(finished_job: FinishedJob) -> None:
    job = finished_job.job
    train = [r for r in job["round_reports"] if r["phase"] == "train"]
    assert [r["round"] for r in train] == [1, 2]
    for report in train:
        assert len(report["participants"]) == 3, report["dropped"]
        assert report["dropped"] == {}
        assert report["bytes_down"] > 0
        assert report["bytes_up"] > 0
        for site in report["sites"].values():
            assert site["examples"] > 0
            assert site["train_loss"] is not None
            assert np.isfinite(site["train_loss"])


def test_the_adapter_beats_the_base_on_every_sites_heldout_data(
    finished_job: FinishedJob,
) -> None:
    evaluation = next(r for r in finished_job.job["round_reports"] if r["phase"] == "evaluate")
    assert len(evaluation["sites"]) == 3
    for site in evaluation["sites"].values():
        assert site["heldout_loss"] < site["base_heldout_loss"]
    assert finished_job.job["metrics"]["heldout_loss_drop_pct"] >= 1.0


def test_the_adapter_is_registered_with_its_lineage(finished_job: FinishedJob) -> None:
    adapter = finished_job.adapter
    assert adapter["kind"] == "adapter"
    assert adapter["name"] == "support"
    assert adapter["id"] == finished_job.job["adapter_model_id"]
    exported = GGUFReader(finished_job.job_dir / ADAPTER_FILE)
    fields = {
        name: str(bytes(field.parts[field.data[0]]), "utf-8")
        for name, field in exported.fields.items()
        if name.startswith("outpost.")
    }
    assert fields["outpost.base_sha256"] == DEMO_SHA256
    assert fields["outpost.federated_job"] == finished_job.job["id"]
    assert fields["outpost.rounds"] == "2"


def test_the_adapter_is_served_per_request(finished_job: FinishedJob) -> None:
    assert finished_job.served["model"] == "smol:support"
    assert (
        finished_job.served["choices"][0]["text"] != finished_job.base_answer["choices"][0]["text"]
    )


def test_llama_cpp_with_the_exported_adapter_matches_torch(
    finished_job: FinishedJob, f32_demo_model: Path
) -> None:
    from agent.training.gguf_model import load_gguf_model
    from agent.training.lora_training import adapted_logits

    f32 = f32_demo_model
    tensors = load_adapter(finished_job.job_dir / FINAL_ADAPTER, 1 << 30)
    vocab = llama_cpp.Llama(str(f32), vocab_only=True, n_ctx=64, verbose=False)
    tokens = vocab.tokenize(b"Ticket 3: the printer on floor", add_bos=False)
    vocab.close()
    torch_model = load_gguf_model(f32, threads=2)
    expected = adapted_logits(torch_model.model, tokens, tensors, alpha=ALPHA)
    base = adapted_logits(torch_model.model, tokens, None, alpha=ALPHA)
    got = llama_logits(f32, tokens, finished_job.job_dir / ADAPTER_FILE)
    effect = float(np.abs(expected - base).max())
    error = float(np.abs(got - expected).max())
    print(f"\nadapter effect {effect:.4f}, llama.cpp vs torch {error:.4f}")
    assert effect > 4 * TOLERANCE  # the adapter moves the logits well beyond the tolerance
    assert error < TOLERANCE
