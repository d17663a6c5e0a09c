"""compose.yaml: the services exist, images are pinned, nothing binds a public interface."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from sagaline.localstack import postgres

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
LOCAL = ROOT / "tools" / "containers" / "compose.local.yaml"
BUILD_IMAGES = ROOT / "tools" / "containers" / "build-images.sh"
SECURE = ROOT / "deploy" / "compose.secure.yaml"


def _services(path: Path = COMPOSE) -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(path.read_text())["services"]
    return services


def test_the_platform_services_are_there() -> None:
    assert {"kafka", "postgres", "prometheus", "grafana", "jaeger"} <= set(_services())
    for worker in ("order", "payment", "inventory", "tracker"):
        assert _services()[worker]["command"][:3] == ["sagaline", "worker", worker]


def test_postgres_runs_with_the_local_stacks_workload_settings_in_both_modes() -> None:
    """One set of settings, wherever PostgreSQL runs (sagaline.localstack.postgres)."""
    expected = [f"{name}={value}" for name, value in postgres.WORKLOAD_SETTINGS.items()]
    for path in (COMPOSE, SECURE):
        command = _services(path)["postgres"]["command"]
        assert command[0] == "postgres"
        settings = [value for flag, value in zip(command[1::2], command[2::2], strict=True) if flag == "-c"]
        assert [s for s in settings if s.split("=")[0] in postgres.WORKLOAD_SETTINGS] == expected, path


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


def test_the_local_override_only_swaps_images_for_ones_built_here() -> None:
    local, base = _services(LOCAL), _services()
    assert set(local) <= set(base), "the override must not add services"
    built = BUILD_IMAGES.read_text()
    for name, service in local.items():
        if "image" in service:
            image = service["image"]
            assert image.startswith("sagaline/"), f"{name}: {image} would need a registry"
            assert f"sagaline/{image.split('/', 1)[1].split(':')[0]}:" in built, (
                f"{name}: {image} is not built"
            )
    # every registry image left in compose.yaml is either swapped or kept out of the default profile
    for name, service in base.items():
        image = service.get("image", "")
        if image and not image.startswith("sagaline"):
            override = local.get(name, {})
            assert "image" in override or "registry" in override.get("profiles", []), name
    assert local["topics"]["build"]["args"]["BASE"] == "sagaline/python:3.11"
    # Jaeger does not run there, so no service may try to export spans to it
    for name, service in base.items():
        if service.get("environment", {}).get("SAGALINE_TRACES_EXPORTER", "none") != "none":
            assert local[name]["environment"]["SAGALINE_TRACES_EXPORTER"] == "none", name


@pytest.mark.parametrize(
    "files",
    [[COMPOSE], [COMPOSE, LOCAL], [COMPOSE, SECURE], [COMPOSE, LOCAL, SECURE]],
    ids=["compose", "compose+local", "compose+secure", "compose+local+secure"],
)
def test_docker_compose_accepts_the_files(files: list[Path]) -> None:
    assert shutil.which("docker-compose"), (
        "docker-compose is missing: `make test` installs it (tools/system-deps.sh)"
    )
    args = [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(
        ["docker-compose", *args, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_the_services_stop_before_kafka_and_postgres() -> None:
    """compose stops a service's dependencies after it: a worker that depends only on the
    finished `topics` job would see Kafka and PostgreSQL vanish under its final commit."""
    for worker in ("order", "payment", "inventory", "tracker"):
        assert {"kafka", "postgres"} <= set(_services()[worker]["depends_on"]), worker


def _merged(*files: Path) -> dict[str, Any]:
    """The services as docker-compose merges the files."""
    args = [arg for path in files for arg in ("-f", str(path))]
    result = subprocess.run(
        ["docker-compose", *args, "config"], capture_output=True, text=True, timeout=60, check=True
    )
    services: dict[str, Any] = yaml.safe_load(result.stdout)["services"]
    return services


def test_the_secure_mode_runs_each_service_as_its_own_uid_without_an_admin_secret() -> None:
    """deploy/compose.secure.yaml: every service its own uid (so file modes keep each from the
    others' passwords), TLS and SASL on, no password in any environment, and the PostgreSQL
    superuser's password only where an admin step runs."""
    services = _merged(COMPOSE, SECURE)
    workers = ("order", "payment", "inventory", "tracker", "dlq")
    uids = {services[name]["user"] for name in workers}
    assert len(uids) == len(workers), uids
    assert "0:0" not in uids
    for name, service in services.items():
        environment = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        for key, value in environment.items():
            if "PASSWORD" in key:  # a file or a folder of files, never the secret itself
                assert key.endswith(("_FILE", "_DIR")) or not value, f"{name}: {key} in the environment"
            if key == "SAGALINE_POSTGRES_DSN":
                assert "sslmode=verify-full" in value, name
                assert urlsplit(value).password is None, name
        if name in workers:
            assert environment["SAGALINE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL", name
            assert "SAGALINE_POSTGRES_PASSWORD_FILE" not in environment, name
            assert environment["SAGALINE_KAFKA_PASSWORDS_DIR"].startswith("/secrets/"), name
    kafka = services["kafka"]["environment"]
    assert "PLAINTEXT" not in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    owners = " ".join(services["secrets"]["command"])
    for name, uid in (("order", "10001"), ("payment", "10002"), ("dlq", "10005")):
        assert f"--owner={name}={uid}" in owners
        assert services[name]["user"] == f"{uid}:{uid}"
