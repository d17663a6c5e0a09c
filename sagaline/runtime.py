"""Running a long-lived process: signals, graceful stop, supervised loops, logging, telemetry."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from consumers import logcontext
from consumers.diagnostics import bounded
from consumers.errors import classify
from sagaline.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RESTART_BACKOFF_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_RESET_AFTER_S = 60.0


def run_service(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Run a long-lived process's coroutine to completion on the chosen event loop
    (`SAGALINE_EVENT_LOOP`): uvloop, or the standard library's. What start-up built (modules,
    message schemas and their validators, settings) lives as long as the process, so it is
    frozen out of the garbage collector's reach: a full collection then walks only what the
    process made since, instead of pausing every loop for the whole heap."""
    gc.collect()
    gc.freeze()
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


LOG_LINE_LIMIT = 4000


class BoundedFormatter(logging.Formatter):
    """Caps every line: a record's text may come from outside (an exception message, a
    header), and one of them must not write megabytes into the log."""

    def format(self, record: logging.LogRecord) -> str:
        return bounded(super().format(record), LOG_LINE_LIMIT)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts` (UTC, ISO 8601), `level`, `service`, `logger`,
    `message`; `trace_id` and `span_id` of the current span (or, on a line about a message
    outside any span, of the message's trace context); and on a line about a message its
    `group`, `topic`, `partition`, `offset`, `event_id`, `event_type` and `saga_id`
    (consumers.logcontext). Text that may come from outside (the message, an exception) is
    bounded, so a line stays parseable and short."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "service": self.service,
            "logger": record.name,
            "message": bounded(record.getMessage(), LOG_LINE_LIMIT),
        }
        about = logcontext.current()
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"], line["span_id"] = f"{span.trace_id:032x}", f"{span.span_id:016x}"
        elif about and about.get("traceparent"):
            parts = str(about["traceparent"]).split("-")
            if len(parts) == 4:
                line["trace_id"], line["span_id"] = parts[1], parts[2]
        if about:
            line.update((k, v) for k, v in about.items() if k != "traceparent" and v is not None)
        if record.exc_info:
            line["exception"] = bounded(self.formatException(record.exc_info), LOG_LINE_LIMIT)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str, log_format: str = "text", service: str = "sagaline") -> None:
    """Logging for a command: `json` lines (for services: machines read them) or `text`
    (a terminal), both bounded (LOG_LINE_LIMIT)."""
    logging.basicConfig(level=level.upper())
    formatter: logging.Formatter = (
        JsonFormatter(service)
        if log_format == "json"
        else BoundedFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


def configure_tracing(settings: Settings, service: str) -> Callable[[], None]:
    """Install the OpenTelemetry SDK for this process when `SAGALINE_TRACES_EXPORTER` asks
    for an exporter; return what flushes and stops it (call it on the way out).

    The OTLP exporter reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers,
    timeout); OTEL_RESOURCE_ATTRIBUTES adds resource attributes to `service.name`.
    """
    if settings.traces_exporter == "none":
        return lambda: None
    name = f"{settings.service_name}-{service}"
    provider = TracerProvider(
        resource=Resource.create({"service.name": name}),
        # a trace begun upstream keeps its sampling decision; one begun here is kept at the ratio
        sampler=ParentBased(TraceIdRatioBased(settings.traces_sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings.traces_exporter)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _exporter(kind: str) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    backoff_s: float = RESTART_BACKOFF_S,
) -> None:
    """Run one of a service's loops until `stop`. A transient failure (PostgreSQL or Kafka
    unavailable, a timeout) restarts the loop after a backoff, doubling up to 30 s, instead of
    ending the service; anything else ends it (and the service exits non-zero)."""
    delay = backoff_s
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception as exc:
            if classify(exc) != "transient" or stop.is_set():
                raise
            if time.monotonic() - started > RESTART_RESET_AFTER_S:
                delay = backoff_s  # it ran well for a while: this is a new outage
            log.warning("%s failed transiently (%r); restarting it in %.1fs", name, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return
            delay = min(delay * 2, RESTART_BACKOFF_MAX_S)


def awaiting(task: asyncio.Task[Any]) -> str:
    """Where a task is suspended: its chain of awaits, outermost first (`function:line`), down
    to the innermost coroutine — what a task that will not stop is stuck in."""
    chain: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(chain) < 50:
        code = getattr(awaited, "cr_code", None) or getattr(awaited, "gi_code", None)
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if code is None:  # a future or another awaitable: the end of the chain
            chain.append(type(awaited).__name__)
            break
        chain.append(f"{code.co_qualname}:{frame.f_lineno if frame else '?'}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return " > ".join(chain) or "nothing"


async def until_stopped(tasks: list[asyncio.Task[None]], stop: asyncio.Event, deadline_s: float) -> None:
    """Run until stop (or a task fails); then give the tasks `deadline_s` to finish."""
    stop_waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    finished, unfinished = await asyncio.wait(tasks, timeout=deadline_s)
    for task in unfinished:
        log.error(
            "%s did not stop within %.0fs: abandoning its batch (it will be redelivered); it was awaiting %s",
            task.get_name(),
            deadline_s,
            awaiting(task),
        )
        task.cancel()
    stop_waiter.cancel()
    for task in finished:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error
