from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sagaline.bootstrap import service_server_settings
from sagaline.settings import Settings, describe_invalid


def test_settings_come_from_an_injected_mapping() -> None:
    settings = Settings.from_environ(
        {
            "SAGALINE_KAFKA_BOOTSTRAP": "b1:9092,b2:9092",
            "SAGALINE_LOCAL_KAFKA_PORT": "30000",
            "SAGALINE_STATE_DIR": "/tmp/x",
            "OTHER_VAR": "ignored",
        }
    )
    assert settings.kafka_bootstrap == "b1:9092,b2:9092"
    assert settings.local_kafka_port == 30000
    assert settings.state_dir == Path("/tmp/x")


def test_invalid_values_are_rejected_with_the_field_name() -> None:
    with pytest.raises(ValidationError, match="local_kafka_port"):
        Settings.from_environ({"SAGALINE_LOCAL_KAFKA_PORT": "80"})


def test_secrets_never_appear_in_repr_or_connection_repr() -> None:
    settings = Settings.from_environ(
        {
            "SAGALINE_KAFKA_BOOTSTRAP": "b:9093",
            "SAGALINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "SAGALINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
            "SAGALINE_KAFKA_SASL_USERNAME": "svc",
            "SAGALINE_KAFKA_SASL_PASSWORD": "hunter2",
            "SAGALINE_POSTGRES_DSN": "postgresql://u:pw-secret@h/db",
        }
    )
    assert "hunter2" not in repr(settings)
    assert "pw-secret" not in repr(settings)
    connection = settings.kafka()
    assert "hunter2" not in repr(connection)
    kwargs = connection.client_kwargs()
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-256"
    assert kwargs["sasl_plain_password"] == "hunter2"
    assert "ssl_context" not in kwargs


def test_kafka_without_bootstrap_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="SAGALINE_KAFKA_BOOTSTRAP"):
        Settings.from_environ({}).kafka()


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [name for name in Settings.model_fields if f"`SAGALINE_{name.upper()}`" not in doc]
    assert missing == []


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"SAGALINE_KAFKA_SASL_USERNAME": "svc"}, "SAGALINE_KAFKA_SASL_USERNAME is set but"),
        ({"SAGALINE_KAFKA_SASL_PASSWORD": "hunter2"}, "SAGALINE_KAFKA_SASL_PASSWORD is set but"),
        ({"SAGALINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512"}, "SAGALINE_KAFKA_SASL_MECHANISM is set but"),
        ({"SAGALINE_KAFKA_SSL_CAFILE": "{file}"}, "SAGALINE_KAFKA_SSL_CAFILE is set but"),
        ({"SAGALINE_KAFKA_PASSWORDS_DIR": "{file}"}, "SAGALINE_KAFKA_PASSWORDS_DIR is set but"),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SAGALINE_KAFKA_PASSWORDS_DIR": "/no/such/dir"},
            "SAGALINE_KAFKA_PASSWORDS_DIR names a folder that does not exist",
        ),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "SAGALINE_KAFKA_SSL_CAFILE": "{file}",
             "SAGALINE_KAFKA_SASL_USERNAME": "svc", "SAGALINE_KAFKA_SASL_PASSWORD": "hunter2"},
            "SAGALINE_KAFKA_SSL_CAFILE is set but SAGALINE_KAFKA_SECURITY_PROTOCOL is SASL_PLAINTEXT",
        ),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SAGALINE_KAFKA_SASL_PASSWORD": "hunter2"},
            "SAGALINE_KAFKA_SASL_USERNAME (or SAGALINE_KAFKA_PASSWORDS_DIR) is not set",
        ),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "SAGALINE_KAFKA_SASL_USERNAME": "svc"},
            "SAGALINE_KAFKA_SASL_PASSWORD (or SAGALINE_KAFKA_PASSWORDS_DIR) is not set",
        ),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SSL", "SAGALINE_KAFKA_SSL_KEYFILE": "{file}"},
            "SAGALINE_KAFKA_SSL_KEYFILE is set without SAGALINE_KAFKA_SSL_CERTFILE",
        ),
        (
            {"SAGALINE_KAFKA_SECURITY_PROTOCOL": "SSL", "SAGALINE_KAFKA_SSL_CAFILE": "/no/such/ca.pem"},
            "SAGALINE_KAFKA_SSL_CAFILE names a file that does not exist",
        ),
    ],
)  # fmt: skip
def test_kafka_security_settings_cannot_fail_open(
    environ: dict[str, str], named: str, tmp_path: Path
) -> None:
    """A credential or TLS file the protocol would not use is a startup error naming the
    setting, never a client that quietly connects in PLAINTEXT; the value is never shown."""
    file = tmp_path / "x.pem"
    file.write_text("not used")
    values = {k: v.replace("{file}", str(file)) for k, v in environ.items()}
    with pytest.raises(ValidationError) as raised:
        Settings.from_environ(values)
    described = describe_invalid(raised.value)
    assert named in described
    assert "hunter2" not in described
    assert "\n" not in described


def test_mutual_tls_and_an_encrypted_key_are_accepted(tmp_path: Path) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in ("ca", "cert", "key")}
    for path in files.values():
        path.write_text("pem")
    settings = Settings.from_environ(
        {
            "SAGALINE_KAFKA_BOOTSTRAP": "b:9093",
            "SAGALINE_KAFKA_SECURITY_PROTOCOL": "SSL",
            "SAGALINE_KAFKA_SSL_CAFILE": str(files["ca"]),
            "SAGALINE_KAFKA_SSL_CERTFILE": str(files["cert"]),
            "SAGALINE_KAFKA_SSL_KEYFILE": str(files["key"]),
            "SAGALINE_KAFKA_SSL_KEY_PASSWORD": "key-secret",
        }
    )
    connection = settings.kafka()
    assert connection.ssl_key_password == "key-secret"
    assert "key-secret" not in repr(settings)
    assert "key-secret" not in repr(connection)


def test_a_bad_setting_is_described_by_its_variable_without_its_value() -> None:
    with pytest.raises(ValidationError) as raised:
        Settings.from_environ({"SAGALINE_METRICS_PORT": "not-a-port-s3cret"})
    described = describe_invalid(raised.value)
    assert described.startswith("invalid settings: SAGALINE_METRICS_PORT: ")
    assert "s3cret" not in described


def test_a_services_sessions_end_an_idle_transaction_after_the_configured_time() -> None:
    def timeout(value: str | None) -> str:
        environ = {"SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S": value} if value is not None else {}
        return service_server_settings(Settings.from_environ(environ))["idle_in_transaction_session_timeout"]

    assert (timeout(None), timeout("2.5"), timeout("0")) == ("30000", "2500", "0")
    with pytest.raises(ValidationError, match="postgres_idle_in_transaction_timeout_s"):
        Settings.from_environ({"SAGALINE_POSTGRES_IDLE_IN_TRANSACTION_TIMEOUT_S": "-1"})
