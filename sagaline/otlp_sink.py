"""A local OTLP/HTTP receiver that accepts span exports and keeps only their count and size:
what the benchmark exports to when it measures the cost of tracing (the exporters do all
their work — encode, batch, send — and the receiver costs next to nothing).

Binds 127.0.0.1 only; answers every `POST /v1/traces` with an empty success response
(an empty ExportTraceServiceResponse is zero bytes of protobuf), keeps connections alive.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

MAX_BODY = 64 * 2**20


@dataclass
class OtlpSink:
    host: str = "127.0.0.1"
    port: int = 0
    requests: int = 0
    bytes: int = 0
    _server: asyncio.Server | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if length > MAX_BODY:
                    return
                await reader.readexactly(length)
                self.requests += 1
                self.bytes += length
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"
                )
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
