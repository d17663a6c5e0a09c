"""The operations endpoint every long-running sagaline process serves:
`/metrics` (Prometheus text format, or OpenMetrics — with exemplars — to a client that asks
for it in `Accept`, as Prometheus does), `/healthz` (the process runs) and `/readyz` (it can
do its work: connected, assigned, not shutting down).

It shares the process with the Kafka and PostgreSQL clients, so it defends itself: GET and
HEAD only (405 otherwise), a request line and headers of bounded size and count (414/431),
the whole request read within a deadline (a client trickling header lines is cut off), and
a cap on open connections (more are closed at once). Nothing a client sends is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import platform
from collections.abc import Callable
from importlib import metadata

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics

ReadyCheck = Callable[[], bool]

LINE_LIMIT = 8192  # bytes in the request line or one header line
MAX_HEADERS = 100
REQUEST_DEADLINE_S = 5.0
MAX_CONNECTIONS = 32


def process_registry(service: str) -> CollectorRegistry:
    """A process's metrics registry: the standard process, platform and garbage-collector
    collectors and `sagaline_build_info{service, version, python}` (always 1), to which the
    process adds its own metrics."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    info = Gauge(
        "sagaline_build_info",
        "Always 1: which sagaline version and Python a process runs, as labels.",
        ["service", "version", "python"],
        registry=registry,
    )
    info.labels(service, _version(), platform.python_version()).set(1)
    return registry


def _version() -> str:
    try:
        return metadata.version("sagaline")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Refused(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


class OpsServer:
    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        ready: ReadyCheck,
        *,
        max_connections: int = MAX_CONNECTIONS,
        deadline_s: float = REQUEST_DEADLINE_S,
    ) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.ready = ready
        self.max_connections = max_connections
        self.deadline_s = deadline_s
        self.open_connections = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start serving; returns the bound port (useful with port 0)."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=LINE_LIMIT)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.open_connections >= self.max_connections:
            writer.close()  # over the cap: no work at all for this one
            return
        self.open_connections += 1
        try:
            try:
                async with asyncio.timeout(self.deadline_s):
                    method, path, accept = await self._read_request(reader)
                status, ctype, body = self._respond(method, path, accept)
            except _Refused as refused:
                status, ctype, body, method = (
                    refused.status,
                    "text/plain",
                    refused.status.encode() + b"\n",
                    "GET",
                )
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                + ("Allow: GET, HEAD\r\n" if status.startswith("405") else "")
                + "Connection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else body))
            async with asyncio.timeout(self.deadline_s):
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass  # a client that stalls or goes away is cut off, not our problem
        finally:
            self.open_connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                async with asyncio.timeout(1):
                    await writer.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, str]:
        """Method, path and the Accept header (the only one read)."""
        request_line = await _line(reader, "414 URI Too Long")
        parts = request_line.decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _Refused("400 Bad Request")
        accept = ""
        for _ in range(MAX_HEADERS + 1):
            line = await _line(reader, "431 Request Header Fields Too Large")
            if line in (b"\r\n", b"\n", b""):
                return parts[0], parts[1].split("?")[0], accept
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        raise _Refused("431 Request Header Fields Too Large")

    def _respond(self, method: str, path: str, accept: str = "") -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/metrics":
            if "application/openmetrics-text" in accept:
                exposed: bytes = openmetrics.generate_latest(self.registry)  # type: ignore[no-untyped-call]
                return "200 OK", openmetrics.CONTENT_TYPE_LATEST, exposed
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self.registry)
        if path == "/healthz":
            return "200 OK", "text/plain", b"ok\n"
        if path == "/readyz":
            ok = self.ready()
            return (
                ("200 OK", "text/plain", b"ready\n")
                if ok
                else ("503 Service Unavailable", "text/plain", b"not ready\n")
            )
        return "404 Not Found", "text/plain", b"not found\n"


async def _line(reader: asyncio.StreamReader, too_long: str) -> bytes:
    try:
        return await reader.readline()
    except ValueError:  # the line is longer than the stream's limit
        raise _Refused(too_long) from None
