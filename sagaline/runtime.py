"""Running a long-lived process: signals, graceful stop, logging, telemetry setup."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from sagaline.settings import Settings


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings.traces_exporter)))
    trace.set_tracer_provider(provider)
    return provider.shutdown


def _exporter(kind: str) -> SpanExporter:
    if kind == "console":
        return ConsoleSpanExporter(out=sys.stderr)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()
