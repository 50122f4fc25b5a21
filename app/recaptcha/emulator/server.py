"""Serving the emulator on a real socket: `run()` for the command line, EmulatorServer for
tests (a uvicorn server on an ephemeral 127.0.0.1 port, in a thread of its own)."""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.recaptcha.emulator.app import create_emulator_app
from app.recaptcha.emulator.faults import DROP_EXTENSION
from app.recaptcha.emulator.state import EmulatorState


class DroppableHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, plus a scope extension that aborts the TCP connection.

    The only way for the app to end a connection without an HTTP answer (faults.py)."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {DROP_EXTENSION: {"drop": self.transport.abort}}


def _config(state: EmulatorState, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        create_emulator_app(state),
        host=host,
        port=port,
        http=DroppableHttpProtocol,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


def run(host: str = "127.0.0.1", port: int = 8085, state: EmulatorState | None = None) -> None:
    """Serve the emulator until interrupted (what `chargegate emulator` should call)."""
    emulator = state if state is not None else EmulatorState()
    emulator.base_url = f"http://{host}:{port}"
    uvicorn.Server(_config(emulator, host, port)).run()


class EmulatorServer:
    """The emulator on a free 127.0.0.1 port, served from its own thread and event loop.

    A thread keeps the emulator's work (delays included) off the caller's loop, like a real
    remote service.

        with EmulatorServer() as server:
            server.state.add_project("acme")
            ... http calls to server.url ...
    """

    def __init__(self, state: EmulatorState | None = None) -> None:
        self.state = state if state is not None else EmulatorState()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.state.base_url = self.url
        self._server = uvicorn.Server(_config(self.state, "127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, name="recaptcha-emulator", daemon=True)

    def start(self) -> None:
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the emulator did not start")
            self._thread.join(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()

    def _serve(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._sock]))

    def __enter__(self) -> EmulatorServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
