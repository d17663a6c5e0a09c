"""`sagaline up --replicas 2`: two OS processes per saga service share its consumer group —
each is assigned partitions — and the saga completes with the invariants intact."""

from __future__ import annotations

from pathlib import Path

import pytest

from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from sagaline.bootstrap import Endpoints, create_pool, saga_config
from sagaline.demo import DemoOptions, run_demo
from sagaline.platform import Platform
from sagaline.settings import Settings
from sagas.config import SERVICES
from tests.support import free_port_block

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


async def test_two_processes_per_service_share_the_work(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in {
        "SAGALINE_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "SAGALINE_POSTGRES_DSN": postgres_dsn,
        "SAGALINE_SAGA_PREFIX": f"r{unique}_",
        "SAGALINE_TOPIC_PREFIX": f"r{unique}.",
        "SAGALINE_TOPIC_REPLICATION": "1",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    config = saga_config(settings)
    await ensure_topics(kafka, config.topics.specs())
    ends = Endpoints(kafka, postgres_dsn, local=False)
    platform = Platform(ends, tmp_path, free_port_block(10), services=SERVICES, replicas=2)
    platform.start()
    pool = await create_pool(settings, postgres_dsn)
    try:
        assert sorted(c.name for c in platform.children) == sorted(
            [*SERVICES, *(f"{service}-2" for service in SERVICES)]
        )
        await platform.wait_ready(timeout_s=180)  # every process has partitions of its group's topics
        result = await run_demo(kafka, pool, config, DemoOptions(orders=60, seed=5))
        assert result.ok, result.as_dict()
        assert platform.supervise() == []  # nobody crashed
    finally:
        await pool.close()
        codes = platform.stop(deadline_s=30)
    assert set(codes.values()) == {0}, codes
