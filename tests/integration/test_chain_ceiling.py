"""The bench's latency ceiling (sagaline.chain) does the work it stands for, against real
Kafka and PostgreSQL: every record published goes through the four hops, and with a
transaction a hop each relay claimed, saved and staged every record and marked it sent."""

from __future__ import annotations

import asyncpg
import pytest

from producers.connection import KafkaConnection
from sagaline.bench import discard_run
from sagaline.bootstrap import Endpoints
from sagaline.chain import ChainOptions, run_chain

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.mark.parametrize("transactional", [False, True])
async def test_every_record_goes_through_the_four_hops(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, transactional: bool
) -> None:
    ends = Endpoints(kafka=kafka, postgres_dsn=postgres_dsn, local=False)
    token = f"b{unique[:8]}"
    try:
        report = await run_chain(
            ends, ChainOptions(rate=100, seconds=2, transactional=transactional), token, [], None
        )
        conn = await asyncpg.connect(postgres_dsn)
        try:
            schema = await conn.fetchval(
                "SELECT nspname FROM pg_namespace WHERE nspname = $1", f"{token}_chain"
            )
            tables = {}
            if schema is not None:
                for role in ("order", "payment", "inventory"):
                    tables[role] = tuple(
                        await conn.fetchrow(
                            f"SELECT (SELECT count(*) FROM {schema}.{role}_inbox),"
                            f" (SELECT count(*) FROM {schema}.{role}_outbox WHERE sent),"
                            f" (SELECT count(*) FROM {schema}.{role}_outbox WHERE NOT sent),"
                            f" (SELECT sum(applied) FROM {schema}.{role}_state)"
                        )
                        or ()
                    )
        finally:
            await conn.close()
    finally:
        await discard_run(ends, token)

    assert (report["published"], report["records"]) == (200, 200)
    assert 0 < report["p50"] <= report["p99"]
    assert report["cpu_ms_per_record"]["relays"] > 0
    if transactional:
        # the order service's relay takes two hops of each record: the request and the reply
        assert tables == {
            "order": (400, 400, 0, 400),
            "payment": (200, 200, 0, 200),
            "inventory": (200, 200, 0, 200),
        }
    else:
        assert schema is None
