"""The operations endpoint against real sockets on the loopback: it answers GET and HEAD,
and a hostile client (wrong method, huge request line, trickled headers, a pile of idle
connections) cannot make it log a traceback or hold connections without bound."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from sagaline.ops import OpsServer


@pytest.fixture
async def ops() -> AsyncIterator[tuple[OpsServer, int]]:
    registry = CollectorRegistry()
    Counter("sagaline_test_things", "Things.", registry=registry).inc()
    server = OpsServer(registry, "127.0.0.1", 0, ready=lambda: True, max_connections=4, deadline_s=0.5)
    port = await server.start()
    yield server, port
    await server.stop()


async def _request(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return response


async def test_get_and_head_answer_and_other_methods_are_refused(ops: tuple[OpsServer, int]) -> None:
    _, port = ops
    metrics = await _request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert metrics.startswith(b"HTTP/1.1 200 OK")
    assert b"sagaline_test_things_total 1.0" in metrics
    head = await _request(port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert head.endswith(b"\r\n\r\n")  # no body
    post = await _request(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert post.startswith(b"HTTP/1.1 405 Method Not Allowed")
    assert b"Allow: GET, HEAD" in post
    assert (await _request(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")


async def test_oversized_requests_are_refused_without_a_traceback(
    ops: tuple[OpsServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, port = ops
    with caplog.at_level(logging.DEBUG):
        long_line = await _request(port, b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n")
        many = await _request(port, b"GET /metrics HTTP/1.1\r\n" + b"X-A: b\r\n" * 500 + b"\r\n")
    assert long_line.startswith(b"HTTP/1.1 414")
    assert many.startswith(b"HTTP/1.1 431")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_trickling_headers_is_cut_off_at_the_deadline(ops: tuple[OpsServer, int]) -> None:
    server, port = ops
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    closed_after = None
    for _ in range(40):  # one header line every 0.1 s, for up to 4 s
        try:
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        if await _closed(reader, 0.1):
            closed_after = loop.time() - started
            break
    writer.close()
    assert closed_after is not None, "the slow client kept its connection"
    assert closed_after < 2.0
    assert server.open_connections == 0


async def _closed(reader: asyncio.StreamReader, wait_s: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(1), timeout=wait_s)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


async def test_idle_connections_beyond_the_cap_are_closed_at_once(ops: tuple[OpsServer, int]) -> None:
    server, port = ops
    idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(server.max_connections)]
    await asyncio.sleep(0.1)
    assert server.open_connections == server.max_connections
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _closed(reader, 0.3)  # closed without waiting for the deadline
    writer.close()
    for _, idle_writer in idle:
        idle_writer.close()
    await asyncio.sleep(0.7)  # the idle ones hit their deadline
    assert server.open_connections == 0
    assert (await _request(port, b"GET /readyz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200")
