"""Runs an ASGI app with uvicorn inside an existing asyncio loop, on a socket bound up front."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

GRACEFUL_SHUTDOWN_S = 5


class EmbeddedUvicorn(uvicorn.Server):
    """Leaves signal handling to the process that embeds it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def embedded_server(app: Any) -> EmbeddedUvicorn:
    return EmbeddedUvicorn(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening TCP socket; port 0 takes a free one (read it back with getsockname).

    Created with protocol IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off
    (TCP_NODELAY) only on sockets that say they are TCP, and accepted sockets inherit it.
    Without it a small answer on a kept-alive connection waits for the client's delayed ACK
    (about 40 ms on Linux)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock
