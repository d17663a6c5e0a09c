"""The whole platform as child processes: one `sagaline worker NAME` per service and the
DLQ indexer, each with its own metrics port, supervised until stopped (or one dies)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sagaline.bootstrap import Endpoints
from sagas.config import SERVICES


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path


class Platform:
    def __init__(
        self, ends: Endpoints, log_dir: Path, base_port: int, services: tuple[str, ...] = (*SERVICES, "dlq")
    ) -> None:
        self.ends = ends
        self.log_dir = log_dir
        self.base_port = base_port
        self.services = services
        self.children: list[Child] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "SAGALINE_KAFKA_BOOTSTRAP": self.ends.kafka.bootstrap_servers,
            "SAGALINE_POSTGRES_DSN": self.ends.postgres_dsn,
        }
        for number, name in enumerate(self.services, start=1):
            port = self.base_port + number
            log = self.log_dir / f"{name}.log"
            with log.open("ab") as out:
                command = ["dlq", "index"] if name == "dlq" else ["worker", name]
                process = subprocess.Popen(
                    [sys.executable, "-m", "sagaline", *command, "--metrics-port", str(port)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            self.children.append(Child(name, port, process, log))

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Every child answers /readyz (it has partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        pending = list(self.children)
        while pending:
            self.check_alive()
            pending = [c for c in pending if not await _ready(c.port)]
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names} (see {self.log_dir})")
            if pending:
                await asyncio.sleep(0.3)

    def check_alive(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                tail = " | ".join(child.log.read_text(errors="replace").strip().splitlines()[-3:])
                raise RuntimeError(f"worker {child.name} exited with {code}: {tail}")

    def stop(self, deadline_s: float = 30.0) -> dict[str, int]:
        """SIGTERM every child, SIGKILL what is left after the deadline; returns exit codes."""
        for child in self.children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        end = time.monotonic() + deadline_s
        codes: dict[str, int] = {}
        for child in self.children:
            try:
                codes[child.name] = child.process.wait(timeout=max(end - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                codes[child.name] = child.process.wait()
        return codes


async def _ready(port: int) -> bool:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout=2)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), timeout=2)
        return b" 200 " in status
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
