"""The benchmark's OTLP receiver takes real exports from OpenTelemetry's own OTLP/HTTP
exporter, and counts them."""

from __future__ import annotations

import asyncio

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagaline.otlp_sink import OtlpSink


async def test_the_sink_accepts_and_counts_otlp_exports() -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()  # not installed globally: this test's spans only
    provider.add_span_processor(SimpleSpanProcessor(memory))
    for n in range(3):
        with provider.get_tracer("tests").start_as_current_span(f"span {n}"):
            pass
    spans = memory.get_finished_spans()
    sink = OtlpSink()
    await sink.start()
    try:
        exporter = OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces")
        # the exporter blocks: it runs in a thread, keeping the sink's loop free
        results = [await asyncio.to_thread(exporter.export, [span]) for span in spans]
        assert results == [SpanExportResult.SUCCESS] * 3
        assert sink.requests == 3
        assert sink.bytes > 0
    finally:
        await sink.stop()
