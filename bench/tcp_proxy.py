"""A small asyncio TCP proxy with a "the database is down" switch.

In-process (tests, bench scripts):

    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()          # listens on 127.0.0.1:<proxy.port>
    await proxy.cut()            # every proxied connection closed, new connects refused
    await proxy.restore()        # listens again on the same port
    await proxy.close()

`cut()` behaves like a stopped PostgreSQL: the open connections are closed at once and the
listening socket is closed too, so a new connect gets ECONNREFUSED (not a hang).

As a command (SIGUSR1 cuts, SIGUSR2 restores, SIGINT/SIGTERM end it):

    .venv/bin/python -m bench.tcp_proxy --target 127.0.0.1:5432 [--port 0]

It prints `listening 127.0.0.1:<port> pid <pid>` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from types import TracebackType

_CHUNK = 64 * 1024


class TcpProxy:
    """Forwards every connection made to 127.0.0.1:`port` to `target_host`:`target_port`."""

    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port  # the ephemeral port once start() has run
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._cut = False
        self.accepted = 0  # connections accepted while not cut (for figures)

    @property
    def is_cut(self) -> bool:
        return self._cut

    @property
    def open_connections(self) -> int:
        return len(self._handlers)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the proxy is already listening")
        await self._listen()
        self._cut = False

    async def cut(self) -> None:
        """Close every open proxied connection at once and refuse new connections."""
        self._cut = True
        await self._stop_listening()
        await self._drop_connections()

    async def restore(self) -> None:
        """Listen again on the same port and forward new connections."""
        if self._server is None:
            await self._listen()
        self._cut = False

    async def close(self) -> None:
        self._cut = True
        await self._stop_listening()
        await self._drop_connections()

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _listen(self) -> None:
        # reuse_address (asyncio's default on Unix) lets restore() bind the same port again
        # although the connections just closed may sit in TIME_WAIT.
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the listening socket: new connects are refused from here on
            # (wait_closed() would also wait for the open connections on Python >= 3.12.1;
            # _drop_connections() ends those.)

    async def _drop_connections(self) -> None:
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.gather(*handlers, return_exceptions=True)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if self._cut or task is None:
            client.transport.abort()
            return
        self._handlers.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream = await asyncio.open_connection(
                self.target_host, self.target_port
            )
            self.accepted += 1
            pumps = [
                asyncio.create_task(_pump(client_reader, upstream)),
                asyncio.create_task(_pump(upstream_reader, client)),
            ]
            try:
                # One side ends (EOF or error): the whole connection ends, as the other side
                # would see it from a real server.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass  # the target refused or went away: the client sees its connection closed
        except asyncio.CancelledError:
            pass  # cut() or close()
        finally:
            client.transport.abort()
            if upstream is not None:
                upstream.transport.abort()
            self._handlers.discard(task)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()


async def _serve(target_host: str, target_port: int, port: int) -> None:
    proxy = TcpProxy(target_host, target_port, port=port)
    await proxy.start()
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()

    async def act(action: str) -> None:
        dropped = proxy.open_connections
        await (proxy.cut() if action == "cut" else proxy.restore())
        print(f"{action} done ({dropped} open connections before)", flush=True)

    def run(action: str) -> None:
        task = loop.create_task(act(action))
        pending.add(task)
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGUSR1, run, "cut")
    loop.add_signal_handler(signal.SIGUSR2, run, "restore")
    loop.add_signal_handler(signal.SIGINT, done.set)
    loop.add_signal_handler(signal.SIGTERM, done.set)
    print(f"listening {proxy.host}:{proxy.port} pid {os.getpid()}", flush=True)
    try:
        await done.wait()
    finally:
        await proxy.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="127.0.0.1:5432", help="host:port to forward to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        parser.error("--target must be host:port")
    asyncio.run(_serve(host, int(port), args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
