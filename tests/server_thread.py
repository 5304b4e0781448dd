"""Runs a server object (`run(on_listening)`, `request_stop()`) on its own loop in a thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, Protocol, TypeVar

START_TIMEOUT_S = 60.0

PortsT = TypeVar("PortsT")


class ListeningServer(Protocol[PortsT]):
    def request_stop(self) -> None: ...

    async def run(self, on_listening: asyncio.Future[PortsT] | None = None) -> None: ...


class ServerThread(Generic[PortsT]):
    """`start()` returns once the server listens (raising if it failed); `stop()` joins."""

    def __init__(self, server: ListeningServer[PortsT], name: str) -> None:
        self._server = server
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._listening = threading.Event()
        self._ports: PortsT | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        async def main() -> None:
            listening: asyncio.Future[PortsT] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._server.run(listening))
            either: set[asyncio.Future[Any]] = {listening, task}
            done, _ = await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if listening in done:
                self._ports = listening.result()
                self._listening.set()
            await task

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced to the test thread
            self.error = exc
        finally:
            self._listening.set()

    def start(self) -> PortsT:
        self._thread.start()
        if not self._listening.wait(START_TIMEOUT_S) or self._ports is None:
            raise RuntimeError(f"{self._thread.name} did not start: {self.error!r}")
        return self._ports

    def stop(self) -> None:
        self._server.request_stop()
        self._thread.join(START_TIMEOUT_S)
