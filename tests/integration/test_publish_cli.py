"""`sagaline publish` as an upstream operator runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from producers.connection import KafkaConnection
from tests.support import create_topic_map, decoded, read_all

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ORDER = {
    "order_id": "o-cli-1",
    "idempotency_key": "cli-key-0001",
    "customer_id": "c-9",
    "currency": "EUR",
    "items": [{"sku": "sku-1", "quantity": 2, "unit_price_minor": 999}],
}


def _publish(env: dict[str, str], *args: str, stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaline", "publish", *args],
        input=stdin,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_publish_validates_then_sends_and_reports_the_ack(
    kafka: KafkaConnection, kafka_bootstrap: str, postgres_dsn: str, unique: str
) -> None:
    topics = await create_topic_map(kafka, f"cli{unique}.")
    env = {"SAGALINE_KAFKA_BOOTSTRAP": kafka_bootstrap, "SAGALINE_POSTGRES_DSN": postgres_dsn}
    prefix = ["--topic-prefix", topics.prefix, "--json"]

    ok = _publish(env, "PlaceOrder", *prefix, stdin=json.dumps(ORDER))
    assert ok.returncode == 0, ok.stderr
    ack = json.loads(ok.stdout)
    assert ack["published"] is True
    assert ack["topic"] == topics.ingress

    bad = _publish(env, "PlaceOrder", *prefix, stdin=json.dumps({**ORDER, "currency": "eur"}))
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["errors"] == [
        {"path": "currency", "problem": "String should match pattern '^[A-Z]{3}$'"}
    ]

    not_json = _publish(env, "PlaceOrder", "--topic-prefix", topics.prefix, stdin="{oops")
    assert not_json.returncode == 1
    assert "payload is not JSON" in not_json.stderr

    unknown = _publish(env, "ShipIt", "--topic-prefix", topics.prefix, stdin="{}")
    assert unknown.returncode == 1
    assert "unknown message type 'ShipIt'" in unknown.stderr

    [envelope] = decoded(await read_all(kafka, topics.ingress, at_least=1))
    assert envelope.id == ack["event_id"]
    assert envelope.idempotency_key == "cli-key-0001"
