"""The one typed settings object, read from `SAGALINE_*` environment variables.

Inner packages never read the environment: the bootstrap builds `Settings` once and
passes plain values (or the `KafkaConnection` below) inward. Tests build `Settings`
directly with keyword arguments or an injected mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from producers.connection import KafkaConnection

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Every sagaline option. Each field is documented in docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="SAGALINE_", extra="ignore", frozen=True)

    # --- Kafka -----------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Kafka bootstrap servers (host:port,...). Unset: the local stack's broker.",
    )
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted SAGALINE_KAFKA_SSL_KEYFILE."
    )
    kafka_passwords_dir: Path | None = Field(
        default=None,
        description="Least privilege: a folder with one password file per Kafka user (`order`, "
        "`payment`, `inventory`, `tracker`, `dlq`, `upstream`, `admin`). Set, every service "
        "authenticates (SASL) as its own user, the DLQ tooling as `dlq`, publishers as `upstream` "
        "and admin steps as `admin`; SAGALINE_KAFKA_SASL_USERNAME/PASSWORD are then not used.",
    )
    kafka_client_id: str = "sagaline"

    # --- PostgreSQL ------------------------------------------------------------------
    postgres_dsn: SecretStr | None = Field(
        default=None,
        description="PostgreSQL DSN. Unset: the local stack's database.",
    )
    postgres_password_file: Path | None = Field(
        default=None,
        description="The password of SAGALINE_POSTGRES_DSN's user, from this file's first line "
        "instead of the DSN: an admin step's (`db roles`, `topics ensure`, the demo's seeding) "
        "without the password in any environment.",
    )
    postgres_pool_min: int = Field(default=1, ge=0)
    postgres_pool_max: int = Field(default=10, ge=1)
    postgres_idle_in_transaction_timeout_s: float = Field(
        default=30.0,
        ge=0,
        description="A service's PostgreSQL session that sits idle inside a transaction this long "
        "is ended by the server, its locks released (PostgreSQL's "
        "idle_in_transaction_session_timeout): a frozen or stalled process then stops holding "
        "the rows another process of its group needs. 0: never. A unit of work is idle in its "
        "transaction only between statements (well under a second); CLI commands are not affected.",
    )
    postgres_role_passwords_dir: Path | None = Field(
        default=None,
        description="Least privilege: a folder with one password file per role (`sagaline db roles` "
        "writes missing ones). Set, every service connects as its own role, the DLQ tooling as "
        "the dlq role and the demo's invariant check as the read-only role; "
        "SAGALINE_POSTGRES_DSN then names the admin, used only by admin steps.",
    )

    # --- Service / operations --------------------------------------------------------
    service_name: str = Field(
        default="sagaline", description="Prefix of `service.name` in traces (`sagaline-order`, ...)."
    )
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    shutdown_deadline_s: float = Field(default=20.0, gt=0)
    worker_max_records: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Records one poll returns and one unit of work applies (one transaction when "
        "nothing fails). Also bounds the work a graceful stop finishes.",
    )
    worker_commit_interval_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="Longest a worker holds applied records' offsets before committing them to "
        "Kafka (0: after every unit of work). Offsets are committed only after the database "
        "commit, and always on an idle poll, a rebalance and a stop; what a crash leaves "
        "uncommitted is delivered again and dropped by the inbox.",
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="How long-running processes (workers, relay, DLQ indexer, `up`) log: JSON lines "
        "with trace, saga and message fields, or `text` for a terminal.",
    )
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The event loop of long-running processes (workers, relay, DLQ indexer): "
        "uvloop (libuv; cheaper socket I/O, which is most of a worker's CPU) or the standard "
        "library's asyncio loop.",
    )
    traces_exporter: Literal["none", "otlp", "console"] = Field(
        default="none",
        description="Where spans go: nowhere (trace context still propagates), OTLP over HTTP "
        "(endpoint from OTEL_EXPORTER_OTLP_ENDPOINT), or the console (stderr).",
    )
    traces_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of traces begun in this process that are recorded (parent-based: a trace "
        "begun upstream keeps the sampling decision its traceparent carries).",
    )

    failpoints: str = Field(
        default="",
        description="Fault injection for tests: `name=exit|raise|fail|on|stall[@n],...` "
        "(e.g. `dlq.after-send=exit`). "
        "Never set in production.",
    )

    # --- The saga ----------------------------------------------------------------------
    saga_prefix: str = Field(
        default="",
        pattern=r"^([a-z_][a-z0-9_]*)?$",
        description="Prefix of the services' PostgreSQL schemas and consumer groups "
        "(lowercase letters, digits, underscores; not starting with a digit).",
    )
    topic_prefix: str = Field(default="", description="Prefix of every topic name.")
    topic_partitions: int = Field(default=6, ge=1, le=1000)
    topic_replication: int = Field(default=3, ge=1, le=5)
    payment_timeout_s: float = Field(default=30.0, gt=0)
    stock_timeout_s: float = Field(default=30.0, gt=0)
    worker_linger_ms: int = Field(
        default=30,
        ge=0,
        le=1000,
        description="While records reach a service fast enough that a fetch would gather at least "
        "four of them in this many ms, its fetches wait up to this long on the broker for records "
        "to pile up (while the machine's CPUs are under 70% busy, only until 70% of what such a "
        "wait is expected to gather is there: a burst of events from the service upstream ends "
        "the wait), so one unit of work (transaction, relay pass, produce) serves many records; "
        "below half that rate every record is reacted to at once (0: always). Under load it costs "
        "up to this much per hop and saves far more in queueing (docs/benchmarks.md).",
    )
    outbox_dispatch: bool = Field(
        default=True,
        description="A worker hands the events its unit of work staged to its own process's "
        "relay right after the commit, which sends them at once (no NOTIFY, no pass statement) "
        "when per-key order allows; false: every event waits for a relay pass "
        "(docs/publishing.md, dispatch after commit).",
    )
    worker_stall_after_s: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="A worker whose assigned partition has had no read position this long "
        "(its consumer keeps failing to look up where to read) replaces its consumer with a new "
        "one: fresh metadata, a fresh join (docs/consumers.md, the position watchdog).",
    )
    tracker_batch_wait_ms: int = Field(
        default=200,
        ge=0,
        le=5000,
        description="How long the tracker's fetches wait for records to pile up (0: none): its "
        "projection trails the saga by up to this much, and costs far less at low load.",
    )
    saga_stuck_after_s: float = Field(
        default=300.0,
        gt=0,
        le=30 * 86400,
        description="An open saga unchanged this long counts as stuck (`sagaline_sagas_stuck`, "
        "the SagasStuck alert).",
    )
    retry_delays_s: Annotated[tuple[float, ...], NoDecode] = Field(
        default=(1.0, 10.0, 60.0), min_length=1, description="Delays of the retry lanes, e.g. `1,10,60`."
    )

    @model_validator(mode="after")
    def _kafka_security_cannot_fail_open(self) -> Settings:
        """A credential or a TLS file that the protocol would not use is a mistake, not a
        default: a client that silently connects in PLAINTEXT is the failure this prevents.
        Errors name the settings, never their values."""
        protocol = self.kafka_security_protocol
        sasl: dict[str, object] = {
            "SAGALINE_KAFKA_SASL_MECHANISM": self.kafka_sasl_mechanism,
            "SAGALINE_KAFKA_SASL_USERNAME": self.kafka_sasl_username,
            "SAGALINE_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
            "SAGALINE_KAFKA_PASSWORDS_DIR": self.kafka_passwords_dir,
        }
        tls: dict[str, object] = {
            "SAGALINE_KAFKA_SSL_CAFILE": self.kafka_ssl_cafile,
            "SAGALINE_KAFKA_SSL_CERTFILE": self.kafka_ssl_certfile,
            "SAGALINE_KAFKA_SSL_KEYFILE": self.kafka_ssl_keyfile,
            "SAGALINE_KAFKA_SSL_KEY_PASSWORD": self.kafka_ssl_key_password,
        }
        if not protocol.startswith("SASL_"):
            for name, value in sasl.items():
                if value is not None:
                    raise ValueError(
                        f"{name} is set but SAGALINE_KAFKA_SECURITY_PROTOCOL is {protocol}, which"
                        " sends no credentials: set the protocol to SASL_SSL, or unset it"
                    )
        elif self.kafka_passwords_dir is None:
            for name in ("SAGALINE_KAFKA_SASL_USERNAME", "SAGALINE_KAFKA_SASL_PASSWORD"):
                if sasl[name] is None:
                    raise ValueError(
                        f"SAGALINE_KAFKA_SECURITY_PROTOCOL is {protocol} but {name} (or "
                        "SAGALINE_KAFKA_PASSWORDS_DIR) is not set"
                    )
        elif not self.kafka_passwords_dir.is_dir():
            raise ValueError("SAGALINE_KAFKA_PASSWORDS_DIR names a folder that does not exist")
        if protocol not in ("SSL", "SASL_SSL"):
            for name, value in tls.items():
                if value is not None:
                    raise ValueError(
                        f"{name} is set but SAGALINE_KAFKA_SECURITY_PROTOCOL is {protocol}, which"
                        " does not use TLS: set the protocol to SSL or SASL_SSL, or unset it"
                    )
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("SAGALINE_KAFKA_SSL_KEYFILE is set without SAGALINE_KAFKA_SSL_CERTFILE")
        if self.kafka_ssl_key_password and not self.kafka_ssl_certfile:
            raise ValueError("SAGALINE_KAFKA_SSL_KEY_PASSWORD is set without SAGALINE_KAFKA_SSL_CERTFILE")
        for name, path in tls.items():
            if isinstance(path, Path) and not path.is_file():
                raise ValueError(f"{name} names a file that does not exist or cannot be read")
        return self

    @model_validator(mode="after")
    def _postgres_password_file_is_usable(self) -> Settings:
        path = self.postgres_password_file
        if path is not None:
            if self.postgres_dsn is None:
                raise ValueError(
                    "SAGALINE_POSTGRES_PASSWORD_FILE is set without SAGALINE_POSTGRES_DSN"
                    " (whose user it is for)"
                )
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ValueError(
                    "SAGALINE_POSTGRES_PASSWORD_FILE names a file that does not exist or cannot be read"
                )
        return self

    @field_validator("retry_delays_s", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(float(part) for part in value.strip("[]() ").split(",") if part.strip())
        return value

    # --- Retention ------------------------------------------------------------------
    inbox_retention_s: float = Field(
        default=14 * 24 * 3600.0,
        ge=3600,
        description="How long a service remembers an applied event id. Must exceed any "
        "redelivery window; `dlq replay` refuses entries older than it.",
    )
    dlq_retention_s: float = Field(
        default=90 * 24 * 3600.0,
        ge=3600,
        description="How long replayed, resolved and archived dead letters stay in the index "
        "(`new` ones stay until an operator acts).",
    )
    prune_interval_s: float = Field(default=300.0, gt=0, description="How often retention is applied.")

    # --- Operators ------------------------------------------------------------------
    operator: str | None = Field(
        default=None, description="Who runs DLQ actions, for the audit trail (default: the OS user)."
    )
    redact_fields: tuple[str, ...] = Field(
        default=("customer_id",),
        description="Fields masked in `dlq show` payloads and in exception text written to "
        'dead-letter headers and logs (`name=value`, `"name": "value"`).',
    )

    # --- Local stack (`sagaline dev ...`) --------------------------------------------
    state_dir: Path = Field(
        default=Path(".sagaline"),
        description="Where the local stack keeps its data, logs and pid files.",
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "sagaline",
        description="Where Kafka's jars are cached (shared by every checkout on the machine).",
    )
    local_kafka_port: int = Field(default=19092, ge=1024, le=65000)
    local_kafka_heap: str = "1g"
    local_postgres_port: int = Field(default=15432, ge=1024, le=65535)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from an explicit mapping instead of `os.environ` (for tests)."""
        prefix = "SAGALINE_"
        values: dict[str, Any] = {
            key[len(prefix) :].lower(): value
            for key, value in environ.items()
            if key.startswith(prefix) and key[len(prefix) :].lower() in cls.model_fields
        }
        return cls.model_validate(values)

    def kafka(self, bootstrap: str | None = None) -> KafkaConnection:
        """The Kafka connection options every client is built from."""
        servers = bootstrap or self.kafka_bootstrap
        if servers is None:
            raise ValueError("no Kafka bootstrap servers: set SAGALINE_KAFKA_BOOTSTRAP")
        password = self.kafka_sasl_password
        return KafkaConnection(
            bootstrap_servers=servers,
            client_id=self.kafka_client_id,
            security_protocol=self.kafka_security_protocol,
            sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username,
            sasl_password=password.get_secret_value() if password else None,
            ssl_cafile=str(self.kafka_ssl_cafile) if self.kafka_ssl_cafile else None,
            ssl_certfile=str(self.kafka_ssl_certfile) if self.kafka_ssl_certfile else None,
            ssl_keyfile=str(self.kafka_ssl_keyfile) if self.kafka_ssl_keyfile else None,
            ssl_key_password=(
                self.kafka_ssl_key_password.get_secret_value() if self.kafka_ssl_key_password else None
            ),
        )


def describe_invalid(error: ValidationError) -> str:
    """A settings error in one line: each problem with the environment variable it is about,
    never the value given (it may be a secret)."""
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        field = ".".join(str(part) for part in item["loc"])
        message = str(item["msg"]).removeprefix("Value error, ")
        problems.append(f"SAGALINE_{field.upper()}: {message}" if field else message)
    return "invalid settings: " + "; ".join(problems)
