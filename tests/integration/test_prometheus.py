"""Observability against a running platform, through Debian's Prometheus with the project's
own scrape config (deploy/prometheus.yml, targets pointed at this run's processes) and alert
rules (deploy/alerts.yml): every target up; every /metrics passes `promtool check metrics`;
injected poison fires the dead-letter alert; a stopped worker fires the service-down alert;
a saga held by it shows as stuck, then — past its deadline — as a cancelled saga; and every
expression of the Grafana dashboard parses and names only series the platform exposes."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml
from aiokafka import AIOKafkaProducer

from producers.admin import ensure_topics
from producers.connection import KafkaConnection
from producers.publisher import Publisher
from sagaline.bootstrap import Endpoints, create_pool, saga_config
from sagaline.demo import DemoOptions, run_demo
from sagaline.platform import Platform
from sagaline.settings import Settings
from sagas import seed
from sagas.config import SagaConfig
from tests.saga_support import order
from tests.support import free_port_block, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sagaline.json"
METRIC_NAME = re.compile(r"\b(sagaline_[a-z_]+|process_[a-z_]+|python_[a-z_]+|up)\b")


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    async def get(self, path: str, **params: str) -> Any:
        url = self.base + path + (f"?{urlencode(params)}" if params else "")

        def fetch() -> Any:
            try:
                with urllib.request.urlopen(url, timeout=10) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:  # a bad query: the body says why
                return json.loads(error.read())

        return await asyncio.to_thread(fetch)

    async def query(self, expr: str) -> list[dict[str, Any]]:
        body = await self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def ready(self) -> bool:
        def probe() -> bool:
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=5) as response:
                    return bool(response.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        return await asyncio.to_thread(probe)

    async def firing(self, alertname: str) -> list[dict[str, str]]:
        body = await self.get("/api/v1/alerts")
        return [
            a["labels"]
            for a in body["data"]["alerts"]
            if a["labels"]["alertname"] == alertname and a["state"] == "firing"
        ]


@pytest.fixture
def settings(
    kafka: KafkaConnection, postgres_dsn: str, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    for name, value in {
        "SAGALINE_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
        "SAGALINE_POSTGRES_DSN": postgres_dsn,
        "SAGALINE_SAGA_PREFIX": f"p{unique}_",
        "SAGALINE_TOPIC_PREFIX": f"p{unique}.",
        "SAGALINE_TOPIC_REPLICATION": "1",
        "SAGALINE_SAGA_STUCK_AFTER_S": "1",
        "SAGALINE_PAYMENT_TIMEOUT_S": "15",
    }.items():
        monkeypatch.setenv(name, value)
    return Settings()


@pytest.fixture
async def platform(
    settings: Settings, kafka: KafkaConnection, postgres_dsn: str, tmp_path: Path
) -> AsyncIterator[Platform]:
    await ensure_topics(kafka, saga_config(settings).topics.specs())
    running = Platform(Endpoints(kafka, postgres_dsn, local=False), tmp_path / "logs", free_port_block(10))
    running.start()
    try:
        await running.wait_ready(timeout_s=180)
        yield running
    finally:
        running.stop(deadline_s=30)


@pytest.fixture
async def prometheus(platform: Platform, tmp_path: Path) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: tools/system-deps.sh installs Debian's package"
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(ROOT / "deploy" / "alerts.yml")]
    ports = {child.service: child.port for child in platform.children}
    scraped = set()
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            service = static["labels"]["service"]
            static["targets"] = [f"127.0.0.1:{ports[service]}"]
            scraped.add(service)
    assert scraped == set(ports), "deploy/prometheus.yml must scrape every process of the platform"
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config))
    port = free_port_block(1)
    with (tmp_path / "prometheus.log").open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        server = Prometheus(port)
        await wait_until(server.ready, timeout_s=60, interval_s=0.5)
        yield server
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=30)


async def test_prometheus_sees_the_platform_and_its_alerts_fire(
    settings: Settings, platform: Platform, prometheus: Prometheus, kafka: KafkaConnection, postgres_dsn: str
) -> None:
    config = saga_config(settings)

    async def all_up() -> bool:
        body = await prometheus.get("/api/v1/targets")
        targets = body.get("data", {}).get("activeTargets", [])
        return len(targets) == len(platform.children) and all(t["health"] == "up" for t in targets)

    await wait_until(all_up, timeout_s=60, interval_s=0.5)

    pool = await create_pool(settings, postgres_dsn)
    try:
        result = await run_demo(kafka, pool, config, DemoOptions(orders=20, seed=11))
        assert result.ok, result.as_dict()
        for child in platform.children:
            await _promtool_check_metrics(child.port)

        async def dispatched() -> bool:  # the services' relays sent rows their workers handed over
            return (await prometheus.value("sum(sagaline_outbox_dispatched_total)") or 0) > 0

        await wait_until(dispatched, timeout_s=30, interval_s=0.5)

        # poison on the ingress topic: the order service dead-letters it, the alert fires
        producer = AIOKafkaProducer(**kafka.client_kwargs(), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            await producer.send_and_wait(config.topics.ingress, b"{not json", key=b"poison")
        finally:
            await producer.stop()

        async def dead_letter_alert() -> bool:
            return any(
                (labels.get("group"), labels.get("failure_class")) == (config.group("order"), "permanent")
                for labels in await prometheus.firing("SagalineDeadLetters")
            )

        await wait_until(dead_letter_alert, timeout_s=60, interval_s=1)

        # payment stops: a saga waits for it (stuck), and after a minute the alert fires
        async with pool.acquire() as conn:
            await seed.add_accounts(conn, config, [("held-customer", "EUR", 100_000)])
            await seed.add_stock(conn, config, [("held-sku", 10)])
        assert platform.stop_child("payment") == 0
        async with Publisher(kafka, source="/tests/storefront", topics=config.topics) as publisher:
            await publisher.publish(order("o-held", customer="held-customer", items=[("held-sku", 1, 900)]))

        async def stuck() -> bool:
            return (await prometheus.value("max(sagaline_sagas_stuck)") or 0) >= 1

        await wait_until(stuck, timeout_s=30, interval_s=1)

        async def payment_down() -> bool:
            return any(a.get("service") == "payment" for a in await prometheus.firing("SagalineServiceDown"))

        await wait_until(payment_down, timeout_s=120, interval_s=2)

        # past its 15 s deadline the order is cancelled; payment back, the saga ends
        platform.start_child("payment")
        await _order_status(pool, config, "o-held", "CANCELLED")
        cancelled = 'sum(sagaline_saga_completed_total{status="CANCELLED", reason="deadline_expired"})'

        async def counted() -> bool:
            ended = await prometheus.value(cancelled)
            return ended == 1 and await prometheus.value("max(sagaline_sagas_stuck)") == 0

        await wait_until(counted, timeout_s=30, interval_s=1)
    finally:
        await pool.close()

    # the dashboard: every expression parses and names only series this platform exposes
    names = set((await prometheus.get("/api/v1/label/__name__/values"))["data"])
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        await prometheus.query(expr.replace("$__rate_interval", "1m"))
        for name in METRIC_NAME.findall(expr):
            assert name in names, f"the dashboard queries {name}, which no process exposes: {expr}"


async def _promtool_check_metrics(port: int) -> None:
    def check() -> subprocess.CompletedProcess[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            exposition = response.read().decode()
        promtool = shutil.which("promtool")
        assert promtool
        return subprocess.run(
            [promtool, "check", "metrics"], input=exposition, capture_output=True, text=True, timeout=60
        )

    checked = await asyncio.to_thread(check)
    assert checked.returncode == 0, f"port {port}: {checked.stdout}{checked.stderr}"


async def _order_status(pool: Any, config: SagaConfig, order_id: str, status: str) -> None:
    async def reached() -> bool:
        current = await pool.fetchval(
            f'SELECT status FROM "{config.schema("order")}".orders WHERE order_id = $1', order_id
        )
        return bool(current == status)

    await wait_until(reached, timeout_s=90, interval_s=0.5)
