from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sagaline.settings import Settings


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
