"""The fleet relay: agent relay -> mTLS control-plane relay -> a real upstream HTTP server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import h11
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.control.identity import build_csr, generate_key
from common.embedded_http import bind_listener, embedded_server
from common.fleet_relay import FleetRelay
from common.fleet_relay_tls import client_ssl_context, server_ssl_context
from controlplane.pki import CertificateAuthority

AGENT_ID = str(uuid.uuid4())
WAIT_S = 10.0


@dataclass(frozen=True)
class Pki:
    ca_pem: bytes
    server_key: bytes
    server_chain: bytes
    agent_key: bytes
    agent_cert: bytes
    stranger_key: bytes  # an agent certificate from another CA
    stranger_cert: bytes
    impostor_key: bytes  # a server certificate for 127.0.0.1 from that other CA
    impostor_chain: bytes
    localhost_key: bytes  # a server certificate from the right CA, for another name only
    localhost_chain: bytes

    def agent_context(self) -> ssl.SSLContext:
        return client_ssl_context(
            ca_pem=self.ca_pem, cert_pem=self.agent_cert, key_pem=self.agent_key
        )


def _agent_cert(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    key = generate_key()
    _, issued = ca.sign_agent_csr(
        build_csr(key, AGENT_ID), expected_agent_id=AGENT_ID, valid_for=timedelta(days=1)
    )
    return key, issued.pem


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, _ = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("ca"))
    other, _ = CertificateAuthority.load_or_create(tmp_path_factory.mktemp("other-ca"))
    server_key, server_chain = ca.issue_server_certificate(["127.0.0.1", "localhost"])
    agent_key, agent_cert = _agent_cert(ca)
    stranger_key, stranger_cert = _agent_cert(other)
    return Pki(
        ca.certificate_pem,
        server_key,
        server_chain,
        agent_key,
        agent_cert,
        stranger_key,
        stranger_cert,
        *other.issue_server_certificate(["127.0.0.1"]),
        *ca.issue_server_certificate(["localhost"]),
    )


@dataclass
class Received:
    method: str
    raw_path: bytes
    headers: dict[bytes, bytes]
    body: bytes


@dataclass
class Upstream:
    port: int
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)


def _recording_app(upstream: Upstream) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {bytes(k).lower(): bytes(v) for k, v in scope["headers"]}
        upstream.received.append(Received(scope["method"], scope["raw_path"], headers, body))
        if scope["path"] == "/v1/fleet/slow":
            await upstream.release.wait()
        status = 418 if scope["path"] == "/v1/fleet/teapot" else 200
        response_headers = [(b"content-type", b"application/x-echo"), (b"x-upstream", b"yes")]
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": body})

    return app


@asynccontextmanager
async def upstream_server() -> AsyncIterator[Upstream]:
    listener = bind_listener("127.0.0.1", 0)
    upstream = Upstream(listener.getsockname()[1])
    server = embedded_server(_recording_app(upstream))
    task = asyncio.create_task(server.serve(sockets=[listener]))  # the socket already listens
    try:
        yield upstream
    finally:
        upstream.release.set()
        server.should_exit = True
        await task
        listener.close()


@dataclass
class Chain:
    upstream: Upstream
    cp_port: int  # the control plane's mTLS relay
    agent_port: int  # the agent's loopback relay
    authorized: list[bytes | None]

    @property
    def agent_url(self) -> str:
        return f"http://127.0.0.1:{self.agent_port}"


@asynccontextmanager
async def relay_chain(
    pki: Pki, refuse: str | None = None, **agent_options: Any
) -> AsyncIterator[Chain]:
    authorized: list[bytes | None] = []

    def authorize(der: bytes | None) -> str | None:
        authorized.append(der)
        return refuse

    async with upstream_server() as upstream:
        cp = FleetRelay(
            host="127.0.0.1",
            port=0,
            upstream=f"http://127.0.0.1:{upstream.port}",
            server_ssl=server_ssl_context(
                cert_chain_pem=pki.server_chain, key_pem=pki.server_key, ca_pem=pki.ca_pem
            ),
            authorize=authorize,
        )
        cp_port = await cp.start()
        agent = FleetRelay(
            host="127.0.0.1",
            port=0,
            upstream=f"https://127.0.0.1:{cp_port}",
            upstream_ssl=pki.agent_context(),
            **agent_options,
        )
        agent_port = await agent.start()
        try:
            yield Chain(upstream, cp_port, agent_port, authorized)
        finally:
            await agent.close()
            await cp.close()


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 60))


async def raw_exchange(port: int, data: bytes, context: ssl.SSLContext | None = None) -> bytes:
    """Sends bytes as they are; returns all the relay answers until it closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), WAIT_S)
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_the_chain_forwards_fleet_calls_unchanged(pki: Pki) -> None:
    body = os.urandom(5 * 1024 * 1024)

    async def main() -> None:
        async with relay_chain(pki) as chain, httpx.AsyncClient(base_url=chain.agent_url) as client:
            response = await client.post(
                "/v1/fleet/push-object",
                content=body,
                headers={
                    "content-type": "application/protobuf",
                    "flwr-public-key": "a2V5",
                    "connection": "keep-alive, x-private",
                    "x-private": "hop",
                    "proxy-authorization": "Basic c2VjcmV0",
                    "te": "trailers",
                },
            )
            assert response.status_code == 200
            assert response.content == body
            assert response.headers["content-type"] == "application/x-echo"
            assert response.headers["x-upstream"] == "yes"
            teapot = await client.post("/v1/fleet/get-run", content=b"\x08\x01")
            assert teapot.status_code == 200
            assert (await client.post("/v1/fleet/teapot", content=b"x")).status_code == 418
            first, second, third = chain.upstream.received
            assert (first.method, first.raw_path, first.body) == (
                "POST",
                b"/v1/fleet/push-object",
                body,
            )
            assert first.headers[b"content-type"] == b"application/protobuf"
            assert first.headers[b"flwr-public-key"] == b"a2V5"
            assert first.headers[b"content-length"] == str(len(body)).encode()
            for hop in (b"x-private", b"proxy-authorization", b"te", b"transfer-encoding"):
                assert hop not in first.headers
            assert (second.raw_path, second.body) == (b"/v1/fleet/get-run", b"\x08\x01")
            assert third.raw_path == b"/v1/fleet/teapot"
            # one mTLS connection for all three calls, authorized once with the agent's cert
            der = x509.load_pem_x509_certificate(pki.agent_cert).public_bytes(
                serialization.Encoding.DER
            )
            assert chain.authorized == [der]

    run(main())


def test_a_chunked_request_body_is_forwarded_with_its_length(pki: Pki) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"alpha-", b"beta-", b"gamma"):
            yield part

    async def main() -> None:
        async with relay_chain(pki) as chain, httpx.AsyncClient(base_url=chain.agent_url) as client:
            response = await client.post("/v1/fleet/push-messages", content=chunks())
            assert response.status_code == 200
            assert response.content == b"alpha-beta-gamma"
            (received,) = chain.upstream.received
            assert received.body == b"alpha-beta-gamma"
            assert received.headers[b"content-length"] == b"16"
            assert b"transfer-encoding" not in received.headers

    run(main())


REFUSED_TARGETS = [
    b"/v1/control/start-run",
    b"/v1/runtime/pull-messages",
    b"/v1/fleet/../control/start-run",
    b"/v1/fleet/%2e%2e/control/start-run",
    b"/v1/fleet/%2E%2E%2Fcontrol%2Fstart-run",
    b"/v1/fleet/get-run/../../control/start-run",
    b"/v1/fleet/get-run?x=1",
    b"/v1/fleet/get-run#frag",
    b"/v1/fleet/",
    b"/v1/fleet/Get-Run",
    b"//v1/fleet/get-run",
    b"/v1/fleet//get-run",
    b"/v1/fleet/get-run/",
    b"http://127.0.0.1/v1/fleet/get-run",
    b"*",
]


def test_anything_but_a_fleet_path_is_404_and_never_forwarded(pki: Pki) -> None:
    async def main() -> None:
        async with relay_chain(pki) as chain:
            for port, context in ((chain.agent_port, None), (chain.cp_port, pki.agent_context())):
                for target in REFUSED_TARGETS:
                    request = (
                        b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
                    )
                    response = await raw_exchange(port, request, context)
                    assert status_of(response) == 404, target
                get = b"GET /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\n\r\n"
                response = await raw_exchange(port, get, context)
                assert status_of(response) == 405
                assert b"\r\nallow: POST\r\n" in response
            assert chain.upstream.received == []

    run(main())


def test_the_control_plane_relay_requires_a_certificate_from_its_ca(pki: Pki) -> None:
    no_certificate = ssl.create_default_context(cadata=pki.ca_pem.decode())
    stranger = client_ssl_context(
        ca_pem=pki.ca_pem, cert_pem=pki.stranger_cert, key_pem=pki.stranger_key
    )

    async def main() -> None:
        async with relay_chain(pki) as chain:
            url = f"https://127.0.0.1:{chain.cp_port}/v1/fleet/get-run"
            for context in (no_certificate, stranger):
                async with httpx.AsyncClient(verify=context) as client:
                    with pytest.raises(httpx.TransportError):
                        await client.post(url, content=b"x")
            assert chain.upstream.received == []
            assert chain.authorized == []  # the handshake failed before any authorization
            async with httpx.AsyncClient(verify=pki.agent_context()) as client:
                assert (await client.post(url, content=b"x")).status_code == 200
            assert len(chain.upstream.received) == 1

    run(main())


def test_the_agent_relay_accepts_only_the_pinned_ca_and_the_right_host(pki: Pki) -> None:
    async def main() -> None:
        async with upstream_server() as upstream:
            for key, chain in (
                (pki.impostor_key, pki.impostor_chain),
                (pki.localhost_key, pki.localhost_chain),
            ):
                cp = FleetRelay(
                    host="127.0.0.1",
                    port=0,
                    upstream=f"http://127.0.0.1:{upstream.port}",
                    server_ssl=server_ssl_context(
                        cert_chain_pem=chain, key_pem=key, ca_pem=pki.ca_pem
                    ),
                )
                agent = FleetRelay(
                    host="127.0.0.1",
                    port=0,
                    upstream=f"https://127.0.0.1:{await cp.start()}",
                    upstream_ssl=pki.agent_context(),
                )
                port = await agent.start()
                try:
                    async with httpx.AsyncClient() as client:
                        url = f"http://127.0.0.1:{port}/v1/fleet/get-run"
                        response = await client.post(url, content=b"x")
                    assert response.status_code == 502
                finally:
                    await agent.close()
                    await cp.close()
            assert upstream.received == []

    run(main())


def test_an_authorize_callback_that_raises_refuses(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[bytes | None] = []

    def authorize(der: bytes | None) -> str | None:
        calls.append(der)
        raise RuntimeError("database down")

    async def main() -> None:
        async with upstream_server() as upstream:
            relay = FleetRelay(
                host="127.0.0.1",
                port=0,
                upstream=f"http://127.0.0.1:{upstream.port}",
                authorize=authorize,
            )
            port = await relay.start()
            try:
                async with httpx.AsyncClient() as client:
                    url = f"http://127.0.0.1:{port}/v1/fleet/get-run"
                    assert (await client.post(url, content=b"x")).status_code == 403
            finally:
                await relay.close()
            assert upstream.received == []

    run(main())
    assert calls == [None]  # no TLS on this listener: no peer certificate
    assert "database down" in caplog.text


def test_a_refused_agent_gets_403_and_nothing_is_forwarded(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="common.fleet_relay")

    async def main() -> None:
        async with relay_chain(pki, refuse="certificate revoked") as chain:
            async with httpx.AsyncClient(base_url=chain.agent_url) as client:
                response = await client.post("/v1/fleet/register-node", content=b"x")
            assert response.status_code == 403
            assert chain.upstream.received == []
            assert len(chain.authorized) == 1

    run(main())
    assert "certificate revoked" in caplog.text
    assert "127.0.0.1" in caplog.text


def test_an_oversized_body_is_413(pki: Pki) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"x" * 400

    async def main() -> None:
        async with relay_chain(pki, max_body_bytes=1000) as chain:
            async with httpx.AsyncClient(base_url=chain.agent_url) as client:
                exact = await client.post("/v1/fleet/push-object", content=b"x" * 1000)
                assert exact.status_code == 200
                too_big = await client.post("/v1/fleet/push-object", content=b"x" * 1001)
                assert too_big.status_code == 413
                chunked = await client.post("/v1/fleet/push-object", content=chunks())
                assert chunked.status_code == 413
            # refused on the declared length alone, without waiting for the body
            announced = (
                b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n"
            )
            assert status_of(await raw_exchange(chain.agent_port, announced)) == 413
            assert [r.body for r in chain.upstream.received] == [b"x" * 1000]

    run(main())


MALFORMED = [
    (b"NONSENSE\r\n\r\n", 400),
    (b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
    (b"POST /v1/fleet/get-run HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 400),  # no Host
    (b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
]


def test_a_malformed_request_is_400(pki: Pki) -> None:
    async def main() -> None:
        async with relay_chain(pki) as chain:
            for request, status in MALFORMED:
                assert status_of(await raw_exchange(chain.agent_port, request)) == status
            assert chain.upstream.received == []

    run(main())


def test_an_unreachable_upstream_is_502() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    async def main() -> None:
        relay = FleetRelay(host="127.0.0.1", port=0, upstream=f"http://127.0.0.1:{closed_port}")
        port = await relay.start()
        try:
            async with httpx.AsyncClient() as client:
                response = await client.post(f"http://127.0.0.1:{port}/v1/fleet/get-run")
            assert response.status_code == 502
            assert response.text == "upstream unreachable\n"
        finally:
            await relay.close()

    run(main())


def test_a_slow_upstream_is_504() -> None:
    async def main() -> None:
        async with upstream_server() as upstream:
            relay = FleetRelay(
                host="127.0.0.1",
                port=0,
                upstream=f"http://127.0.0.1:{upstream.port}",
                timeout_s=0.5,
            )
            port = await relay.start()
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.post(f"http://127.0.0.1:{port}/v1/fleet/slow")
                assert response.status_code == 504
                assert [r.raw_path for r in upstream.received] == [b"/v1/fleet/slow"]
            finally:
                await relay.close()

    run(main())


def test_a_stalled_client_is_cut_off_without_blocking_others(pki: Pki) -> None:
    async def stalled(data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", chain_port)
        writer.write(data)
        await writer.drain()
        return reader, writer

    chain_port = 0

    async def main() -> None:
        nonlocal chain_port
        async with relay_chain(pki, read_timeout_s=0.5) as chain:
            chain_port = chain.agent_port
            half_head = await stalled(b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\n")
            half_body = await stalled(
                b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"
            )
            idle = await stalled(b"")
            async with httpx.AsyncClient(base_url=chain.agent_url) as client:
                response = await client.post("/v1/fleet/get-run", content=b"ok")
            assert response.status_code == 200
            for (reader, writer), expected in ((half_head, 408), (half_body, 408), (idle, None)):
                answer = await asyncio.wait_for(reader.read(), WAIT_S)  # EOF: the relay hung up
                writer.close()
                if expected is None:
                    assert answer == b""
                else:
                    assert status_of(answer) == expected
            assert [r.body for r in chain.upstream.received] == [b"ok"]

    run(main())


def test_keep_alive_serves_several_requests_on_one_connection(pki: Pki) -> None:
    async def main() -> None:
        async with relay_chain(pki) as chain:
            reader, writer = await asyncio.open_connection("127.0.0.1", chain.agent_port)
            client = h11.Connection(h11.CLIENT)
            answers = []
            for payload in (b"first", b"second"):
                headers = [(b"host", b"x"), (b"content-length", str(len(payload)).encode())]
                request = h11.Request(
                    method="POST", target="/v1/fleet/pull-messages", headers=headers
                )
                writer.write(client.send(request) or b"")
                writer.write(client.send(h11.Data(data=payload)) or b"")
                writer.write(client.send(h11.EndOfMessage()) or b"")
                status, body = 0, b""
                while True:
                    event = client.next_event()
                    if event is h11.NEED_DATA:
                        client.receive_data(await asyncio.wait_for(reader.read(65536), WAIT_S))
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                answers.append((status, body))
                client.start_next_cycle()  # raises unless the relay kept the connection open
            writer.close()
            assert answers == [(200, b"first"), (200, b"second")]
            assert [r.body for r in chain.upstream.received] == [b"first", b"second"]

    run(main())


def test_ssl_context_helpers_pin_the_ca(pki: Pki) -> None:
    server = server_ssl_context(
        cert_chain_pem=pki.server_chain, key_pem=pki.server_key, ca_pem=pki.ca_pem
    )
    assert server.verify_mode is ssl.CERT_REQUIRED
    assert server.minimum_version is ssl.TLSVersion.TLSv1_2
    client = pki.agent_context()
    assert client.check_hostname
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    assert [c["subject"] for c in client.get_ca_certs()] == [
        c["subject"] for c in server.get_ca_certs()
    ]
    assert len(client.get_ca_certs()) == 1
