"""compose.yaml: the services exist, images are pinned, nothing binds a public interface."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_the_platform_services_are_there() -> None:
    assert {"kafka", "postgres", "prometheus", "grafana", "jaeger"} <= set(_services())
    for worker in ("order", "payment", "inventory", "tracker"):
        assert _services()[worker]["command"][:3] == ["sagaline", "worker", worker]


def test_kafka_is_the_official_image_pinned_to_3_9_and_runs_kraft() -> None:
    kafka = _services()["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def test_every_image_is_pinned() -> None:
    for name, service in _services().items():
        image = service.get("image")
        if image is None:
            assert "build" in service, name
            continue
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} is not pinned"


def test_no_port_binds_a_public_interface() -> None:
    for name, service in _services().items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} binds every interface"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
