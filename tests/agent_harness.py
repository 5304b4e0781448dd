"""Runs a real AgentServer on 127.0.0.1 port 0 in a background thread for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent.engine.protocol import BackendDescription, ModelBackend, ResolvedSampling
from agent.model_pool import BackendFactory
from agent.server import AgentServer, BoundPorts, Companion, PolicySource
from agent.settings import AgentSettings, ModelSettings
from common.inference import ChatMessage, Finished, GenerationEvent
from outpost.v1 import inference_pb2_grpc as pb_grpc
from tests.server_thread import START_TIMEOUT_S, ServerThread


@dataclass
class GenerationLog:
    """What backends finished with, in order: lets tests see server-side outcomes."""

    finished: list[Finished] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    def record(self, event: Finished) -> None:
        with self.changed:
            self.finished.append(event)
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Finished]:
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.finished) >= count, timeout):
                raise TimeoutError(f"expected {count} finished generations, saw {self.finished}")
            return list(self.finished)


class RecordingBackend:
    """Delegates to a real backend and logs every Finished event it produces."""

    def __init__(self, inner: ModelBackend, log: GenerationLog) -> None:
        self._inner = inner
        self._log = log

    def describe(self) -> BackendDescription:
        return self._inner.describe()

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        return self._inner.render_chat(messages)

    def tokenize(self, text: str) -> list[int]:
        return self._inner.tokenize(text)

    def generate(
        self, prompt_tokens: Sequence[int], sampling: ResolvedSampling, cancelled: threading.Event
    ) -> Iterator[GenerationEvent]:
        for event in self._inner.generate(prompt_tokens, sampling, cancelled):
            if isinstance(event, Finished):
                self._log.record(event)
            yield event

    def self_test(self) -> None:
        self._inner.self_test()

    def close(self) -> None:
        self._inner.close()


class RunningAgent:
    """An AgentServer on its own event loop thread; use as a context manager."""

    def __init__(
        self,
        settings: AgentSettings,
        factory: BackendFactory,
        companion: Companion | None = None,
        *,
        policy: PolicySource | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.server = AgentServer(settings, factory, companion, policy=policy, environ=environ)
        self.ports = BoundPorts(0, 0)
        self._thread = ServerThread(self.server, "agent-under-test")

    def __enter__(self) -> RunningAgent:
        self.ports = self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self._thread.stop()

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    def channel(self, **options: int) -> grpc.Channel:
        return grpc.insecure_channel(self.grpc_target, options=list(options.items()))

    def wait_until_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        """Follows grpc.health.v1 Watch until SERVING (no polling, no sleeps)."""
        with self.channel() as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            for response in stub.Watch(request, timeout=timeout):
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        raise RuntimeError("health stream ended before SERVING")

    def inference_stub(self, channel: grpc.Channel) -> pb_grpc.InferenceServiceStub:
        return pb_grpc.InferenceServiceStub(channel)  # type: ignore[no-untyped-call]


def agent_settings(models: Sequence[ModelSettings], **overrides: int) -> AgentSettings:
    values: dict[str, int] = {"grpc_port": 0, "http_port": 0}
    values.update(overrides)
    return AgentSettings(models=tuple(models), host="127.0.0.1", **values)  # type: ignore[arg-type]
