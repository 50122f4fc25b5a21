"""bench.tcp_proxy: forwards bytes, cut() drops and refuses like a stopped server, restore()."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from bench.tcp_proxy import TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()


async def _roundtrip(
    port: int, payload: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 2) == payload
    return reader, writer


async def test_forwards_both_ways(proxy: TcpProxy) -> None:
    assert proxy.port != 0
    assert not proxy.is_cut
    _, writer = await _roundtrip(proxy.port, b"x" * 200_000)
    writer.close()


async def test_cut_closes_open_connections_and_refuses_new_ones(proxy: TcpProxy) -> None:
    reader, writer = await _roundtrip(proxy.port, b"hello")
    await proxy.cut()
    assert proxy.is_cut
    assert proxy.open_connections == 0
    # The open connection is closed by the proxy: EOF (or a reset) on the client's side.
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(100), 2) == b""
    writer.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)


async def test_restore_listens_again_on_the_same_port(proxy: TcpProxy) -> None:
    port = proxy.port
    _, writer = await _roundtrip(port, b"before")
    await proxy.cut()
    writer.close()
    await proxy.restore()
    assert not proxy.is_cut
    assert proxy.port == port
    _, writer = await _roundtrip(port, b"after")
    writer.close()
