"""Relays only `POST /v1/fleet/<name>` to a Flower SuperLink over HTTP/1.1, optionally mTLS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
from collections.abc import Callable

import h11
import httpx

__all__ = ["FleetRelay"]

logger = logging.getLogger(__name__)

FLEET_PATH = re.compile(rb"/v1/fleet/[a-z0-9-]+")
MAX_HEAD_BYTES = 16 * 1024
READ_CHUNK = 64 * 1024
# Never forwarded in either direction (RFC 9110 7.6.1), plus what httpx/h11 frame themselves.
HOP_BY_HOP = frozenset(
    b"connection keep-alive proxy-authenticate proxy-authorization proxy-connection te trailer"
    b" transfer-encoding upgrade host content-length expect".split()
)

Authorize = Callable[[bytes | None], str | None]


class _Closed(Exception):
    """The client went away, or sent something after which the connection cannot go on."""


def _forwardable(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    lowered = [(name.lower(), value) for name, value in headers]
    return [(n, v) for n, v in lowered if n not in HOP_BY_HOP and n not in named]


class FleetRelay:
    """An HTTP/1.1 server that relays the Flower Fleet API, and nothing else, to `upstream`.

    Bodies are buffered (at most `max_body_bytes`). Upstream connections idle for 5 s are
    dropped (httpx's keep-alive expiry): an upstream relay's `read_timeout_s` must be longer."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        upstream: str,
        server_ssl: ssl.SSLContext | None = None,
        upstream_ssl: ssl.SSLContext | None = None,
        authorize: Authorize | None = None,
        max_body_bytes: int = 256 * 1024 * 1024,
        timeout_s: float = 120.0,
        read_timeout_s: float = 60.0,
    ) -> None:
        self._host, self._port = host, port
        self._upstream = upstream.rstrip("/")
        self._server_ssl, self._upstream_ssl = server_ssl, upstream_ssl
        self._authorize = authorize
        self._max_body = max_body_bytes
        self._timeout_s = timeout_s  # a whole upstream exchange
        # Each client read or write; also the whole wait for a request head (idle keep-alive too).
        self._read_timeout_s = read_timeout_s
        self._server: asyncio.Server | None = None
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listens; returns the bound port (port 0 takes a free one)."""
        self._client = httpx.AsyncClient(
            verify=self._upstream_ssl if self._upstream_ssl is not None else True,
            timeout=httpx.Timeout(self._timeout_s),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=32),
            trust_env=False,
            follow_redirects=False,
        )
        self._server = await asyncio.start_server(
            self._serve,
            self._host,
            self._port,
            ssl=self._server_ssl,
            ssl_handshake_timeout=self._read_timeout_s if self._server_ssl else None,
            limit=READ_CHUNK,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()

    def _refusal(self, writer: asyncio.StreamWriter) -> str | None:
        if self._authorize is None:
            return None
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        try:
            return self._authorize(der)
        except Exception:
            logger.exception("the fleet relay's authorize callback failed; refusing")
            return "authorization failed"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            refusal = self._refusal(writer)
            if refusal is not None:
                logger.info("fleet relay refused %s: %s", peer, refusal)
            connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
            while await self._exchange(connection, reader, writer, refusal):
                connection.start_next_cycle()
        except (_Closed, OSError, TimeoutError, h11.LocalProtocolError):
            pass
        except asyncio.CancelledError:
            pass  # close(): this task is the connection's own; ending it quietly is the point
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    async def _next_event(
        self, connection: h11.Connection, reader: asyncio.StreamReader, deadline: float | None
    ) -> h11.Event:
        loop = asyncio.get_running_loop()
        while True:
            event = connection.next_event()
            if event is h11.PAUSED:
                raise _Closed
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                return event
            timeout = self._read_timeout_s
            if deadline is not None:
                timeout = min(timeout, deadline - loop.time())
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                data = await reader.read(READ_CHUNK)
            connection.receive_data(data)

    async def _exchange(
        self,
        connection: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        refusal: str | None,
    ) -> bool:
        """Serves one request; True when the connection can carry another one."""
        deadline = asyncio.get_running_loop().time() + self._read_timeout_s
        try:
            event = await self._next_event(connection, reader, deadline)
        except h11.RemoteProtocolError as error:
            await self._reply(connection, writer, error.error_status_hint, "bad request")
            return False
        except TimeoutError:
            if connection.trailing_data[0]:  # half a request head: say so before hanging up
                await self._reply(connection, writer, 408, "request timeout")
            return False
        if not isinstance(event, h11.Request):
            return False  # ConnectionClosed between requests
        head = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
        if head > MAX_HEAD_BYTES:  # h11 bounds only heads that arrive over several reads
            await self._reply(connection, writer, 431, "request header fields too large")
            return False
        peer = writer.get_extra_info("peername")
        if refusal is not None:
            await self._reply(connection, writer, 403, "forbidden")
            return False
        if not FLEET_PATH.fullmatch(event.target):
            logger.info("fleet relay refused %r %r from %s", event.method, event.target[:200], peer)
            await self._reply(connection, writer, 404, "not found")
            return False
        if event.method != b"POST":
            await self._reply(connection, writer, 405, "method not allowed", [(b"allow", b"POST")])
            return False
        try:
            body = await self._read_body(connection, reader, writer, event)
        except h11.RemoteProtocolError as error:
            await self._reply(connection, writer, error.error_status_hint, "bad request")
            return False
        except TimeoutError:
            await self._reply(connection, writer, 408, "request timeout")
            return False
        if body is None:
            await self._reply(connection, writer, 413, "request body too large")
            return False
        status, headers, content = await self._forward(event, body)
        await self._send(connection, writer, status, headers, content)
        return connection.our_state is h11.DONE and connection.their_state is h11.DONE

    async def _read_body(
        self,
        connection: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
    ) -> bytes | None:
        """The request body (Content-Length or chunked); None once it exceeds the limit."""
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self._max_body:
                return None
        if connection.they_are_waiting_for_100_continue:
            writer.write(
                connection.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        body = bytearray()
        while True:
            event = await self._next_event(connection, reader, None)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self._max_body:
                    return None
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body)
            else:
                raise _Closed

    async def _forward(
        self, request: h11.Request, body: bytes
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        assert self._client is not None
        headers = _forwardable(list(request.headers))
        if not any(name == b"accept-encoding" for name, _ in headers):
            headers.append((b"accept-encoding", b"identity"))  # not httpx's default gzip
        url = self._upstream + request.target.decode("ascii")
        try:
            async with asyncio.timeout(self._timeout_s):
                upstream = self._client.build_request("POST", url, content=body, headers=headers)
                response = await self._client.send(upstream, stream=True)
                try:
                    raw = b"".join([chunk async for chunk in response.aiter_raw()])
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError):
            logger.warning("fleet relay: %s timed out", url)
            return 504, [(b"content-type", b"text/plain")], b"upstream timed out\n"
        except httpx.HTTPError as error:
            logger.warning("fleet relay: %s failed: %s", url, error)
            return 502, [(b"content-type", b"text/plain")], b"upstream unreachable\n"
        return response.status_code, _forwardable(list(response.headers.raw)), raw

    async def _reply(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        text: str,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """A short text answer of the relay's own, after which the connection closes."""
        if connection.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return
        headers = [(b"content-type", b"text/plain"), (b"connection", b"close"), *(extra or [])]
        await self._send(connection, writer, status, headers, text.encode() + b"\n")

    async def _send(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        status: int,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        if status in (204, 304):
            body = b""
        else:
            headers = [*headers, (b"content-length", str(len(body)).encode())]
        writer.write(connection.send(h11.Response(status_code=status, headers=headers)) or b"")
        if body:
            writer.write(connection.send(h11.Data(data=body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        async with asyncio.timeout(self._read_timeout_s):
            await writer.drain()
