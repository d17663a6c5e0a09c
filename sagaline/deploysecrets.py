"""The secrets of a secure deployment, made in one folder (`sagaline secrets init`): what
compose's secure mode mounts, and a template for any other deployment.

    tls/ca.pem                the CA every client trusts (its key, ca.key, stays with root)
    tls/broker-keystore.pem   the Kafka broker's key and certificate          owner: kafka
    tls/postgres.pem, .key    PostgreSQL's certificate and key                owner: postgres
    kafka-passwords/<user>    one SCRAM password per Kafka user               owner: that user
    kafka/scram-users         the users' SCRAM credentials, for the broker's format step
                                                                             owner: kafka
    pg-passwords/<role>       one password per PostgreSQL role (`sagaline db roles`)
                                                                             owner: its service
    pg-passwords/admin        the PostgreSQL superuser's (POSTGRES_PASSWORD_FILE)
                                                                             owner: postgres

Existing files are kept (made once; rotation is editing them, see docs/operations.md).
Every secret is mode 0600 and, with `owners`, belongs to the one uid that needs it, so
processes sharing the folder as different users cannot read each other's; folders are 0755.
No secret is ever printed: the report lists paths, owners and modes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sagaline import kafkaacls, pgroles, secretfiles
from sagaline.localstack import tls
from sagas.config import SagaConfig

KAFKA_USERS = (*kafkaacls.PRINCIPALS, kafkaacls.ADMIN, "broker")
"""Every SCRAM user of a deployment: the services', dlq, upstream, admin and the broker's."""
PG_ADMIN = "admin"
OWNERS = (*KAFKA_USERS, pgroles.READER, "kafka", "postgres")
"""Who a file may be handed to (`owners`): a Kafka user, the read-only PostgreSQL role, or
the Kafka and PostgreSQL servers' own users."""


@dataclass(frozen=True)
class SecretFile:
    path: Path
    owner: str  # who it is for
    created: bool
    uid: int
    mode: int


def init(
    directory: Path,
    config: SagaConfig,
    hosts: tuple[str, ...],
    owners: dict[str, tuple[int, int]] | None = None,
) -> list[SecretFile]:
    """Make what is missing in `directory`, hand each secret to its owner's uid and gid
    (`owners`: name -> (uid, gid); others stay with the caller), and report every file."""
    owners = owners or {}
    directory.mkdir(parents=True, exist_ok=True)
    made_before = {p for p in directory.rglob("*") if p.is_file()}
    material = tls.ensure(directory / "tls", hosts)
    postgres_cert, postgres_key = material.server_cert("postgres")
    kafka_passwords = directory / "kafka-passwords"
    secretfiles.ensure_password_files(kafka_passwords, list(KAFKA_USERS))
    roles = {pgroles.role_name(config, who): who for who in (*pgroles.OWNERS, pgroles.READER)}
    pg_passwords = directory / "pg-passwords"
    secretfiles.ensure_password_files(pg_passwords, [*roles, PG_ADMIN])
    scram = directory / "kafka" / "scram-users"
    scram.parent.mkdir(exist_ok=True)
    secretfiles.write_private(
        scram,
        "".join(
            f"SCRAM-SHA-512=[name={user},password={secretfiles.read_password(kafka_passwords, user)}]\n"
            for user in KAFKA_USERS
        ),
    )
    placed: list[tuple[Path, str, int]] = [
        (material.ca_cert, "everyone", 0o644),
        (material.ca_key, "root", 0o600),
        (material.broker_keystore, "kafka", 0o600),
        (material.broker_cert, "everyone", 0o644),
        (material.directory / "broker.key", "root", 0o600),
        (postgres_cert, "everyone", 0o644),
        (postgres_key, "postgres", 0o600),  # PostgreSQL demands 0600 (or 0640 owned by root)
        (scram, "kafka", 0o600),
        *((kafka_passwords / user, "kafka" if user == "broker" else user, 0o600) for user in KAFKA_USERS),
        *((pg_passwords / role, who, 0o600) for role, who in roles.items()),
        (pg_passwords / PG_ADMIN, "postgres", 0o600),
    ]
    for folder in (directory, material.directory, kafka_passwords, pg_passwords, scram.parent):
        folder.chmod(0o755)  # traversable: each file's own owner and mode guard it
    report = []
    for path, owner, mode in placed:
        uid, gid = owners.get(owner, (-1, -1))
        if uid >= 0:
            os.chown(path, uid, gid)
        path.chmod(mode)
        info = path.stat()
        report.append(
            SecretFile(path, owner, path not in made_before, info.st_uid, stat.S_IMODE(info.st_mode))
        )
    return report
