"""Fixtures shared by integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from producers.connection import KafkaConnection
from tests.worker_support import LedgerService


@pytest.fixture
async def ledger_service(
    kafka: KafkaConnection, postgres_dsn: str, unique: str
) -> AsyncIterator[LedgerService]:
    """The ledger test service with its own topics, group and schema, and one short retry lane;
    for tests that run its worker in process (`tests.worker_support.running`)."""
    service = LedgerService(kafka, postgres_dsn, unique, delays=(0.5,))
    await service.setup()
    yield service
    await service.close()
