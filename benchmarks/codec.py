"""Codec cost per event vs a bare json.dumps + json.loads of the same payload (the ceiling).

python -m benchmarks codec [--events N] [--rounds R]
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

from schemas.codec import decode, encode
from schemas.envelope import Envelope
from schemas.messages import PlaceOrder
from schemas.values import LineItem


def _sample(i: int) -> Envelope[PlaceOrder]:
    order = PlaceOrder(
        order_id=f"order-{i:08d}",
        idempotency_key=f"idem-key-{i:08d}",
        customer_id=f"customer-{i % 97}",
        currency="EUR",
        items=[LineItem(sku=f"sku-{j}", quantity=j + 1, unit_price_minor=199 * (j + 1)) for j in range(3)],
    )
    return Envelope.new(
        order, "/upstream/bench", traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    )


def _best_per_event(fn: Callable[[], None], events: int, rounds: int) -> tuple[float, float]:
    """(best, median) seconds per event over `rounds` runs."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) / events)
    return min(samples), statistics.median(samples)


def run(events: int = 20_000, rounds: int = 5) -> dict[str, float]:
    envelopes = [_sample(i) for i in range(events)]
    payloads = [json.loads(e.data.model_dump_json()) for e in envelopes]

    def codec_round_trip() -> None:
        for envelope in envelopes:
            record = encode(envelope)
            decode(record.value, record.headers)

    def bare_json_round_trip() -> None:
        for payload in payloads:
            json.loads(json.dumps(payload))

    codec_best, codec_median = _best_per_event(codec_round_trip, events, rounds)
    json_best, json_median = _best_per_event(bare_json_round_trip, events, rounds)
    result = {
        "events": events,
        "codec_us_per_event": codec_best * 1e6,
        "codec_median_us": codec_median * 1e6,
        "bare_json_us_per_event": json_best * 1e6,
        "bare_json_median_us": json_median * 1e6,
        "ratio_vs_bare_json": codec_best / json_best,
    }
    print(
        f"codec encode+decode: {result['codec_us_per_event']:.1f} µs/event "
        f"(median {result['codec_median_us']:.1f}); bare json.dumps+loads of the same payload: "
        f"{result['bare_json_us_per_event']:.1f} µs/event; ratio {result['ratio_vs_bare_json']:.1f}x "
        f"({events} events, best of {rounds})"
    )
    return result
