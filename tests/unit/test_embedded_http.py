"""The embedded HTTP server's listening socket: accepted connections send without delay."""

from __future__ import annotations

import asyncio
import socket

from common.embedded_http import bind_listener


def test_accepted_connections_have_nagles_algorithm_off() -> None:
    """asyncio sets TCP_NODELAY only on sockets created as TCP; without it a small answer on
    a kept-alive connection waits for the client's delayed ACK (~40 ms)."""

    async def main() -> int:
        listener = bind_listener("127.0.0.1", 0)
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        class Record(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                transport.close()

        server = await asyncio.get_running_loop().create_server(Record, sock=listener)
        try:
            port = listener.getsockname()[1]
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            value = await asyncio.wait_for(accepted, 10)
            writer.close()
            return value
        finally:
            server.close()
            await server.wait_closed()

    assert asyncio.run(main()) == 1


def test_the_listener_is_a_tcp_socket_on_the_port_it_reports() -> None:
    listener = bind_listener("127.0.0.1", 0)
    try:
        assert listener.proto == socket.IPPROTO_TCP
        assert listener.getsockname()[1] > 0
    finally:
        listener.close()
