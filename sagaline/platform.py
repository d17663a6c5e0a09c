"""The whole platform as child processes: one `sagaline worker NAME` per service (or several:
`replicas`) and the DLQ indexer, each with its own metrics port, supervised until stopped.

A child that exits is restarted after a backoff (0.5 s, doubling up to 15 s) and the
platform says so; one that exits more than `MAX_RESTARTS` times within `RESTART_WINDOW_S`
is given up on with its last log lines, and the platform stops. The others keep running
meanwhile: a crash of the payment service delays payments, it does not stop orders."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sagaline.bootstrap import Endpoints
from sagas.config import SERVICES

MAX_RESTARTS = 5
RESTART_WINDOW_S = 120.0
RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 15.0


@dataclass
class Child:
    name: str  # the service, or `service-N` for its Nth replica
    service: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    exits: list[float] = field(default_factory=list)  # when it exited, within the window
    restart_at: float | None = None

    def tail(self, lines: int = 3) -> str:
        return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])


class Platform:
    def __init__(
        self,
        ends: Endpoints,
        log_dir: Path,
        base_port: int,
        services: tuple[str, ...] = (*SERVICES, "dlq"),
        replicas: int = 1,
    ) -> None:
        """`replicas` processes of each saga service (one consumer group each: Kafka shares
        the partitions among them); the DLQ indexer always runs once."""
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {replicas}")
        self.ends = ends
        self.log_dir = log_dir
        self.base_port = base_port
        self.services = services
        self.replicas = replicas
        self.children: list[Child] = []

    def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        names = [
            (service if n == 1 else f"{service}-{n}", service)
            for service in self.services
            for n in range(1, (1 if service == "dlq" else self.replicas) + 1)
        ]
        for number, (name, service) in enumerate(names, start=1):
            port = self.base_port + number
            log = self.log_dir / f"{name}.log"
            self.children.append(Child(name, service, port, self._spawn(service, port, log), log))

    def _spawn(self, name: str, port: int, log: Path) -> subprocess.Popen[bytes]:
        env = {**os.environ, **self.ends.environment()}
        with log.open("ab") as out:
            command = ["dlq", "index"] if name == "dlq" else ["worker", name]
            return subprocess.Popen(
                [sys.executable, "-m", "sagaline", *command, "--metrics-port", str(port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.name == name)

    def stop_child(self, name: str, deadline_s: float = 30.0) -> int:
        """SIGTERM one child and wait for it (it stays down: `supervise` would restart it)."""
        child = self.child(name)
        child.process.send_signal(signal.SIGTERM)
        return child.process.wait(timeout=deadline_s)

    def start_child(self, name: str) -> None:
        """Start a stopped child again on its port."""
        child = self.child(name)
        child.process = self._spawn(child.service, child.port, child.log)

    def supervise(self) -> list[str]:
        """Restart children that exited, each after its backoff; returns what happened, one
        line per event. RuntimeError when a child exits too often to keep restarting."""
        events: list[str] = []
        now = time.monotonic()
        for child in self.children:
            code = child.process.poll()
            if code is None:
                continue
            if child.restart_at is None:
                child.exits = [t for t in child.exits if now - t < RESTART_WINDOW_S] + [now]
                if len(child.exits) > MAX_RESTARTS:
                    raise RuntimeError(
                        f"worker {child.name} exited {len(child.exits)} times within "
                        f"{RESTART_WINDOW_S:.0f}s (last code {code}), giving up: {child.tail()}"
                    )
                delay = min(RESTART_BACKOFF_S * 2 ** (len(child.exits) - 1), RESTART_BACKOFF_MAX_S)
                child.restart_at = now + delay
                events.append(f"worker {child.name} exited with {code}; restarting it in {delay:.1f}s")
            elif now >= child.restart_at:
                child.process = self._spawn(child.service, child.port, child.log)
                child.restart_at = None
                events.append(f"worker {child.name} restarted (pid {child.process.pid})")
        return events

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
        """While starting: a child that exits is a configuration problem, not a crash."""
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise RuntimeError(f"worker {child.name} exited with {code}: {child.tail()}")

    def stop(self, deadline_s: float = 30.0) -> dict[str, int]:
        """SIGTERM every child, SIGKILL what is left after the deadline; returns exit codes."""
        for child in self.children:
            child.restart_at = None
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
