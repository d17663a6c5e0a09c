"""The bench report renders what a run measured: every sustained and latency row, with the
costs next to the rates (pure rendering; the measuring is exercised by `sagaline bench`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from sagaline.commands.bench import _tables, markdown


def _result() -> dict[str, Any]:
    return {
        "environment": {
            "date": "2026-11-22 20:00 UTC",
            "cores": 2,
            "memory_gib": 23.5,
            "python": "3.11.7",
            "aiokafka": "0.14.0",
            "asyncpg": "0.32.0",
            "kafka": "3.9.2",
            "settings": "fsync on",
        },
        "ceilings": {"kafka_producer_records_per_s": 170794},
        "sustained": [
            {
                "orders": 13327,
                "seconds": 32.5,
                "sagas_per_s": 420.2,
                "cpu_ms_per_saga": {"order": 0.8, "postgresql": 2.01},
                "cpu_ms_per_saga_total": 4.44,
                "load_generator_cpu_ms_per_saga": 0.13,
                "transactions_per_saga": 0.1,
                "statements_per_saga": 0.9,
                "wal_bytes_per_saga": 14321.5,
                "wal_full_pages_per_saga": 0.4,
                "kafka_records_per_saga": 5.1,
                "invariants_ok": True,
                "replicas": 1,
                "partitions": 6,
                "ratio_to_first": 1.0,
                "tracker_trail_s": 0.43,
                "sagas_per_s_with_tracker": 414.7,
            }
        ],
        "latency": [
            {
                "offered": "25% of sustained",
                "orders_per_s": 105.0,
                "orders": 1575,
                "p50": 187.1,
                "p95": 267.3,
                "p99": 338.4,
                "by_second_ms": {"p99_median": 180.2, "p99_worst": 516.0, "worst_at_s": 16.0},
                "cpu_ms_per_saga_total": 17.9,
                "statements_per_saga": 8.3,
                "transactions_per_saga": 2.2,
                "invariants_ok": False,
                "hops_ms": {
                    "request→order": {"p50": 4.6, "p95": 9.0, "p99": 17.2, "n": 1575},
                    "order→payment": {"p50": 41.0, "p95": 90.0, "p99": 121.4, "n": 1402},
                },
            }
        ],
        "ok": False,
    }


def test_markdown_has_a_row_per_run_with_rates_and_costs() -> None:
    text = markdown(_result())
    assert "### `sagaline bench` — 2026-11-22 20:00 UTC" in text
    assert (
        "| 1 x 6 partitions | 420.2 | 1.0 | 4.44 (order 0.8, postgresql 2.01) | 0.13 | 0.9 | 0.1"
        " | 14.3 (0.4) | 5.1 | 0.43 (414.7/s) | ok |" in text
    )
    assert (
        "| 25% of sustained | 105.0 | 187.1 | 267.3 | 338.4 | 180.2 / 516.0 (16 s) | 17.9 | 8.3 | FAILED |"
        in text
    )
    assert "kafka_producer_records_per_s 170,794" in text
    assert "- 25% of sustained: request→order 5 / 17, order→payment 41 / 121" in text


def test_tables_show_the_same_rows_in_a_terminal() -> None:
    console = Console(width=200, record=True)
    for table in _tables(_result()):
        console.print(table)
    text = console.export_text()
    for cell in (
        "420.2",
        "4.44",
        "0.13",
        "14.3 (0.4)",
        "0.43 (414.7/s)",
        "180.2 / 516.0 (16 s)",
        "17.9",
        "8.3",
        "FAILED",
        "order→payment 41 / 121",
    ):
        assert cell in text


def test_a_run_without_seconds_says_so() -> None:
    """Reports written before the per-second figures (or a run all at once) have none."""
    result = _result()
    del result["latency"][0]["by_second_ms"]
    assert "| 338.4 | n/a | 17.9 |" in markdown(result)


def test_a_run_before_the_tracker_was_waited_for_says_so() -> None:
    result = _result()
    del result["sustained"][0]["tracker_trail_s"]
    assert " | 5.1 | n/a | ok |" in markdown(result)


def _with_ceilings() -> dict[str, Any]:
    result = _result()
    result["latency_ceilings"] = [
        {
            "offered": "25% of sustained",
            "offered_per_s": 105.0,
            "transactional": transactional,
            "records": 2100,
            "p50": p50,
            "p95": 2 * p50,
            "p99": 3 * p50,
            "cpu_ms_per_record": {"kafka": 0.8, "postgresql": pg, "relays": 1.2},
            "saga_p99_ratio": round(338.4 / (3 * p50), 1),
        }
        for transactional, p50, pg in ((False, 10.0, 0.0), (True, 30.0, 0.5))
    ]
    return result


def test_the_latency_ceiling_is_a_row_per_variant_with_the_sagas_ratio() -> None:
    text = markdown(_with_ceilings())
    assert (
        "| 25% of sustained | 105.0 | Kafka only | 10.0 | 20.0 | 30.0"
        " | 2.00 (kafka 0.8, postgresql 0.0, relays 1.2) | 11.3x |" in text
    )
    assert (
        "| 25% of sustained | 105.0 | Kafka and one transaction | 30.0 | 60.0 | 90.0"
        " | 2.50 (kafka 0.8, postgresql 0.5, relays 1.2) | 3.8x |" in text
    )
    console = Console(width=250, record=True)
    for table in _tables(_with_ceilings()):
        console.print(table)
    shown = console.export_text()
    assert "Kafka and one transaction" in shown
    assert "3.8x" in shown


def test_a_report_without_the_ceiling_has_no_ceiling_table() -> None:
    assert "Latency ceiling" not in markdown(_result())
