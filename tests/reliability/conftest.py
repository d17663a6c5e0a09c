"""Fixtures of the reliability tier: servers a test may break without touching others."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sagaline.localstack import postgres
from sagaline.localstack.stack import ensure_database
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def own_postgres(unique: str) -> AsyncIterator[postgres.PostgresServer]:
    # under the checkout, not /tmp/pytest-of-root: the server runs as the postgres user
    server = postgres.PostgresServer(ROOT / ".sagaline" / f"pg-outage-{unique}", free_port())
    await asyncio.to_thread(postgres.init, server)
    await asyncio.to_thread(postgres.start, server)
    try:
        await ensure_database(server)
        yield server
    finally:
        await asyncio.to_thread(postgres.stop, server)
        shutil.rmtree(server.home, ignore_errors=True)
