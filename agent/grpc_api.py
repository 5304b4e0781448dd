"""The agent's gRPC front end: InferenceService and grpc.health.v1 on one asyncio server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from agent.inference import Inference
from common.errors import (
    InvalidArgument,
    NotFound,
    OutpostError,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from common.inference import EventStream, GenerationFailed
from common.policy.gate import Credentials, credentials_from
from common.proto_convert import (
    chat_request_from_pb,
    completion_request_from_pb,
    event_to_pb,
    model_info_to_pb,
)
from outpost.v1 import inference_pb2 as pb
from outpost.v1 import inference_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["InferenceService"].full_name

_STATUS_CODES: dict[type[OutpostError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_code_for(error: OutpostError) -> grpc.StatusCode:
    for kind, code in _STATUS_CODES.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        start = self._inference.start_completion(
            completion_request_from_pb(request), _credentials(context)
        )
        async for message in _relay(start, context):
            yield message

    async def Chat(
        self, request: pb.ChatRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateResponse]:
        start = self._inference.start_chat(chat_request_from_pb(request), _credentials(context))
        async for message in _relay(start, context):
            yield message

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[model_info_to_pb(m) for m in self._inference.models()])


def _credentials(context: grpc.aio.ServicerContext) -> Credentials:
    metadata = {key: value for key, value in context.invocation_metadata() or ()}

    def text(name: str) -> str | None:
        value = metadata.get(name)
        return value if isinstance(value, str) else None  # binary (-bin) values are bytes

    return credentials_from(text)


async def _relay(
    start: Awaitable[EventStream], context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.GenerateResponse]:
    """Admits the request, then forwards its events. A cancelled RPC (client gone, deadline)
    closes the stream, which stops the generation."""
    try:
        stream = await start
    except OutpostError as exc:
        await context.abort(status_code_for(exc), str(exc))
    try:
        async with aclosing(stream) as events:
            async for event in events:
                yield event_to_pb(event)
    except GenerationFailed as exc:
        await context.abort(grpc.StatusCode.INTERNAL, f"generation failed: {exc}")


MAX_ANSWER_BYTES = 4 * 1024 * 1024


class GrpcFrontEnd:
    """Owns the grpc.aio server, its port and the health status of the inference service."""

    def __init__(self, inference: Inference, *, max_message_bytes: int) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                # Answers may be larger than requests: artifact chunks for peers are 1 MiB.
                ("grpc.max_send_message_length", max(max_message_bytes, MAX_ANSWER_BYTES)),
            ]
        )
        servicer = InferenceServicer(inference)
        pb_grpc.add_InferenceServiceServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        await self.set_serving(False)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        await self.server.start()
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def stop(self, grace_seconds: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_seconds)
