"""The `outpost-agent` command as an operator runs it: start-up checks, serving, shutdown."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.demo_model import SMOLLM2
from agent.engine.protocol import ModelBackend
from agent.model_file import sha256_of
from agent.settings import ModelSettings
from tests.agent_harness import RunningAgent, agent_settings
from tests.conftest import MODEL_ALIAS, llama_factory

AGENT = [sys.executable, "-m", "agent.cli"]


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_missing_model_file_refuses_to_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.gguf"
    result = run_agent("serve", "--model", str(missing), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert str(missing) in result.stderr
    assert "does not exist" in result.stderr


def test_file_that_is_not_gguf_refuses_to_start(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>404 not found</html>")
    result = run_agent("serve", "--model", str(fake), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert str(fake) in result.stderr
    assert "not a GGUF file" in result.stderr


def test_truncated_model_refuses_to_start(tmp_path: Path, demo_model: Path) -> None:
    truncated = tmp_path / "cut.gguf"
    with demo_model.open("rb") as source:
        truncated.write_bytes(source.read(SMOLLM2.size_bytes // 2))
    result = run_agent("serve", "--model", str(truncated), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert str(truncated) in result.stderr
    assert "truncated" in result.stderr


def test_bad_config_file_refuses_to_start(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('grpc_port = "fifty"\n')
    result = run_agent("serve", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "grpc_port" in result.stderr


def test_demo_model_command_prints_the_verified_path(demo_model: Path) -> None:
    result = run_agent("demo-model", "--cache-dir", str(demo_model.parent))
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip())
    assert printed == demo_model
    assert sha256_of(printed) == SMOLLM2.sha256


class AgentProcess:
    """A real `outpost-agent serve` process; ports are read from its log."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [*AGENT, "serve", *args], stderr=subprocess.PIPE, text=True, env=env
        )
        self.log: list[str] = []
        self.ports: dict[str, int] = {}
        self._found = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line)
            match = re.search(r"(gRPC|HTTP) listening on (?:http://)?127\.0\.0\.1:(\d+)", line)
            if match:
                self.ports[match.group(1)] = int(match.group(2))
                if len(self.ports) == 2:
                    self._found.set()
        self._found.set()

    def wait_listening(self) -> None:
        assert self._found.wait(60), self.log
        assert len(self.ports) == 2, "".join(self.log)


@pytest.fixture
def agent_process(tmp_path: Path, demo_model: Path) -> Iterator[AgentProcess]:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'host = "127.0.0.1"\ngrpc_port = 50999\n\n[[models]]\npath = "{demo_model}"\n'
        f'alias = "{MODEL_ALIAS}"\ncontext_length = 512\nthreads = 2\n'
    )
    # The environment overrides the file's port, and the command line overrides both.
    env = {**os.environ, "OUTPOST_AGENT_GRPC_PORT": "0", "OUTPOST_AGENT_HTTP_PORT": "8"}
    process = AgentProcess(["--config", str(config), "--http-port", "0"], env)
    try:
        process.wait_listening()
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()
        process.process.wait(30)


def test_serves_from_config_and_stops_cleanly_on_sigterm(agent_process: AgentProcess) -> None:
    grpc_port, http_port = agent_process.ports["gRPC"], agent_process.ports["HTTP"]
    assert grpc_port not in (0, 50999)
    assert http_port not in (0, 8)
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(), timeout=60
        )
        statuses = []
        for response in watch:
            statuses.append(response.status)
            if response.status == health_pb2.HealthCheckResponse.SERVING:
                break
    assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING
    response = httpx.post(
        f"http://127.0.0.1:{http_port}/v1/completions",
        json={"model": MODEL_ALIAS, "prompt": "Hello", "max_tokens": 5, "temperature": 0},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 5
    agent_process.process.send_signal(signal.SIGTERM)
    assert agent_process.process.wait(30) == 0
    assert any("shutting down" in line for line in agent_process.log)


def test_health_is_not_serving_until_models_are_loaded(demo_model: Path) -> None:
    release = threading.Event()
    real_factory = llama_factory()

    def gated_factory(model: ModelSettings) -> ModelBackend:
        assert release.wait(60)
        return real_factory(model)

    model = ModelSettings(path=demo_model, alias=MODEL_ALIAS, context_length=256)
    with RunningAgent(agent_settings([model]), gated_factory) as agent:
        with grpc.insecure_channel(agent.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            not_ready = httpx.get(f"{agent.http_base}/readyz")
            loading = httpx.post(
                f"{agent.http_base}/v1/completions", json={"model": MODEL_ALIAS, "prompt": "hi"}
            )
            release.set()
            agent.wait_until_serving()
            after = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
        ready = httpx.get(f"{agent.http_base}/readyz")
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert not_ready.status_code == 503
    assert loading.status_code == 503
    assert after == health_pb2.HealthCheckResponse.SERVING
    assert ready.status_code == 200


def test_gguf_that_llama_cpp_cannot_load_refuses_to_start(tmp_path: Path) -> None:
    import numpy as np
    from gguf import GGUFWriter

    odd = tmp_path / "odd.gguf"
    writer = GGUFWriter(odd, "no-such-architecture")
    writer.add_tensor("weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    result = run_agent("serve", "--model", str(odd), "--grpc-port", "0", "--http-port", "0")
    assert result.returncode == 2
    assert f"model file {odd} failed to load" in result.stderr
    assert "Traceback" not in result.stderr
