"""`sagaline bench` drops what each of its runs made on the stack — that run's schemas and
topics, and nothing of any other run's or deployment's."""

from __future__ import annotations

import asyncpg
import pytest

from producers.admin import ensure_topics, start_admin
from producers.connection import KafkaConnection
from sagaline.bench import discard_run
from sagaline.bootstrap import Endpoints
from schemas.topics import TopicSpec

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_a_run_is_discarded_and_nothing_else(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> None:
    run, other = f"b{unique[:6]}", f"b{unique[4:10]}x"
    schemas = [f"{run}_order", f"{run}_dlq", f"{other}_order", f"{run}x_order"]
    topics = [f"{run}.orders", f"{run}.order.retry.1s", f"{other}.orders", f"x{run}.orders"]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        for schema in schemas:
            await conn.execute(f'CREATE SCHEMA "{schema}"')
            await conn.execute(f'CREATE TABLE "{schema}".t (id int)')
    finally:
        await conn.close()
    await ensure_topics(kafka, [TopicSpec(name, partitions=1, replication=1) for name in topics])

    dropped = await discard_run(Endpoints(kafka=kafka, postgres_dsn=postgres_dsn, local=False), run)

    assert (dropped.schemas, dropped.topics) == (2, 2)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        left = {r["nspname"] for r in await conn.fetch("SELECT nspname FROM pg_namespace")}
    finally:
        await conn.close()
    assert left & set(schemas) == {f"{other}_order", f"{run}x_order"}
    admin = await start_admin(kafka)
    try:
        listed = set(await admin.list_topics())
    finally:
        await admin.close()
    assert listed & set(topics) == {f"{other}.orders", f"x{run}.orders"}


async def test_a_token_that_could_match_other_names_is_refused(
    kafka: KafkaConnection, postgres_dsn: str
) -> None:
    with pytest.raises(ValueError, match="letters and digits"):
        await discard_run(Endpoints(kafka=kafka, postgres_dsn=postgres_dsn, local=False), "b1%")
