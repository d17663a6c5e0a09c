"""`sagaline secrets init`: a secure deployment's CA, certificates and passwords, each secret
for the one uid that needs it; and an admin's PostgreSQL password from a file."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from sagaline import deploysecrets
from sagaline.bootstrap import with_password
from sagaline.settings import Settings
from sagas.config import SagaConfig
from schemas.topics import TopicMap

CONFIG = SagaConfig(topics=TopicMap(), prefix="")
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="handing files to other uids needs root")


def _san(cert: Path) -> str:
    return subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


@ROOT_ONLY
def test_each_secret_belongs_to_the_one_uid_that_needs_it(tmp_path: Path) -> None:
    owners = {
        "order": (10001, 10001),
        "payment": (10002, 10002),
        "kafka": (1000, 1000),
        "postgres": (999, 999),
    }
    report = {
        f.path.relative_to(tmp_path).as_posix(): f
        for f in deploysecrets.init(tmp_path, CONFIG, ("kafka", "postgres", "127.0.0.1"), owners)
    }
    assert report["kafka-passwords/order"].uid == 10001
    assert report["pg-passwords/sagaline_order"].uid == 10001
    assert report["kafka-passwords/payment"].uid == 10002
    assert report["tls/broker-keystore.pem"].uid == 1000
    assert report["kafka/scram-users"].uid == 1000
    assert report["kafka-passwords/broker"].uid == 1000
    assert report["tls/postgres.key"].uid == 999
    assert report["pg-passwords/admin"].uid == 999
    assert report["tls/ca.key"].uid == 0
    for name, entry in report.items():
        public = name.endswith(".pem") and "keystore" not in name
        assert entry.mode == (0o644 if public else 0o600), name
        assert stat.S_IMODE(entry.path.stat().st_mode) == entry.mode, name
    for folder in ("", "tls", "kafka-passwords", "pg-passwords", "kafka"):
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o755, folder


def test_the_certificates_name_every_host_and_the_scram_file_every_user(tmp_path: Path) -> None:
    report = deploysecrets.init(tmp_path, CONFIG, ("kafka", "postgres", "127.0.0.1"))
    assert all(f.created for f in report)
    for cert in ("broker.pem", "postgres.pem"):
        san = _san(tmp_path / "tls" / cert)
        for name in ("DNS:kafka", "DNS:postgres", "IP Address:127.0.0.1"):
            assert name in san, (cert, san)
    passwords = {
        user: (tmp_path / "kafka-passwords" / user).read_text().strip() for user in deploysecrets.KAFKA_USERS
    }
    assert len(set(passwords.values())) == len(passwords)  # one each, none shared
    scram = (tmp_path / "kafka" / "scram-users").read_text().splitlines()
    assert sorted(scram) == sorted(
        f"SCRAM-SHA-512=[name={user},password={password}]" for user, password in passwords.items()
    )


def test_a_second_run_keeps_every_secret(tmp_path: Path) -> None:
    deploysecrets.init(tmp_path, CONFIG, ("kafka",))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = deploysecrets.init(tmp_path, CONFIG, ("kafka",))
    assert not any(f.created for f in again)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_an_admin_password_from_a_file_goes_into_the_dsn(tmp_path: Path) -> None:
    assert (
        with_password("postgresql://sagaline@postgres:5432/db?sslmode=verify-full", "p@ss:/w")
        == "postgresql://sagaline:p%40ss%3A%2Fw@postgres:5432/db?sslmode=verify-full"
    )
    assert with_password("postgresql://u:old@h/db", "new") == "postgresql://u:new@h/db"
    secret = tmp_path / "admin"
    secret.write_text("s3cret\n")
    settings = Settings.from_environ(
        {"SAGALINE_POSTGRES_DSN": "postgresql://u@h/db", "SAGALINE_POSTGRES_PASSWORD_FILE": str(secret)}
    )
    assert settings.postgres_password_file == secret


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({"SAGALINE_POSTGRES_PASSWORD_FILE": "/nonexistent/admin"}, "without SAGALINE_POSTGRES_DSN"),
        (
            {
                "SAGALINE_POSTGRES_DSN": "postgresql://u@h/db",
                "SAGALINE_POSTGRES_PASSWORD_FILE": "/nonexistent/admin",
            },
            "does not exist or cannot be read",
        ),
    ],
)
def test_an_unusable_password_file_is_a_startup_error(environ: dict[str, str], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Settings.from_environ(environ)
