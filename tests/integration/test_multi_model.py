"""Several models on one agent, each addressed by its alias with its own settings."""

from __future__ import annotations

from pathlib import Path

import grpc
import httpx
import pytest

from agent.settings import ModelSettings
from outpost.v1 import inference_pb2 as pb
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import llama_factory


def test_each_alias_is_its_own_model(demo_model: Path) -> None:
    models = [
        ModelSettings(path=demo_model, alias="wide", context_length=1024),
        ModelSettings(path=demo_model, alias="narrow", context_length=256),
    ]
    prompt = "word " * 300  # about 300 tokens: fits the wide context, not the narrow one
    with RunningAgent(agent_settings(models), llama_factory()) as agent:
        agent.wait_until_serving()
        with agent.channel() as channel:
            stub = agent.inference_stub(channel)
            listed = stub.ListModels(pb.ListModelsRequest(), timeout=10).models
            wide = list(
                stub.Generate(
                    pb.GenerateRequest(
                        model="wide", prompt=prompt, sampling=pb.SamplingParams(max_tokens=2)
                    ),
                    timeout=60,
                )
            )
            with pytest.raises(grpc.RpcError) as narrow:
                list(stub.Generate(pb.GenerateRequest(model="narrow", prompt=prompt), timeout=60))
        http_models = httpx.get(f"{agent.http_base}/v1/models").json()["data"]
    assert {(m.alias, m.context_length) for m in listed} == {("wide", 1024), ("narrow", 256)}
    assert wide[-1].usage.completion_tokens == 2
    assert narrow.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context is 256 tokens" in narrow.value.details()
    assert sorted(m["id"] for m in http_models) == ["narrow", "wide"]
