"""The published contract, generated from the code: a JSON Schema per message and one
AsyncAPI 3.0 document for every topic, message, header and key.

A service in any language can publish and read sagaline events from these files alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from schemas.codec import EXT_CAUSATION_ID, EXT_IDEMPOTENCY_KEY, EXT_SAGA_ID, EXT_SCHEMA_VERSION, SPECVERSION
from schemas.envelope import DATA_CONTENT_TYPE, DATASCHEMA_BASE
from schemas.messages import ALL_MESSAGES, Message
from schemas.registry import ce_type
from schemas.topics import INGRESS, PRODUCERS, ROUTES, TopicMap

ASYNCAPI_FILE = "asyncapi.json"
JSON_SCHEMA_DIR = "json-schema"
KAFKA_BINDING_VERSION = "0.5.0"
COMMITTED_CONTRACT = Path(__file__).parent / "contract"


def schema_file_name(cls: type[Message]) -> str:
    return f"{cls.__name__}.v{cls.schema_version}.json"


def json_schema(cls: type[Message]) -> dict[str, Any]:
    schema = cls.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{DATASCHEMA_BASE}{cls.__name__}/v{cls.schema_version}.json",
        "x-sagaline-type": ce_type(cls),
        "x-sagaline-schema-version": cls.schema_version,
        "x-sagaline-kind": cls.kind,
        **schema,
    }


def _headers_schema(cls: type[Message]) -> dict[str, Any]:
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "CloudEvents 1.0 attributes (Kafka binding, binary mode) and W3C trace context.",
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_subject",
            "content-type",
        ],
        "properties": {
            "ce_specversion": {"const": SPECVERSION},
            "ce_id": {**text, "description": "Unique event id; consumers deduplicate on it."},
            "ce_source": {**text, "description": "URI-reference of the producing service."},
            "ce_type": {"const": ce_type(cls)},
            "ce_time": {**text, "format": "date-time"},
            "ce_subject": {**text, "description": "The order id (equal to the record key)."},
            "ce_dataschema": {"const": f"{DATASCHEMA_BASE}{cls.__name__}/v{cls.schema_version}.json"},
            f"ce_{EXT_SAGA_ID}": {**text, "description": "Saga (correlation) id; defaults to the order id."},
            f"ce_{EXT_CAUSATION_ID}": {**text, "description": "Id of the event that caused this one."},
            f"ce_{EXT_IDEMPOTENCY_KEY}": {**text, "description": "Upstream idempotency key (requests)."},
            f"ce_{EXT_SCHEMA_VERSION}": {"const": str(cls.schema_version)},
            "content-type": {"const": DATA_CONTENT_TYPE},
            "traceparent": {**text, "description": "W3C trace context."},
            "tracestate": {**text, "description": "W3C trace context."},
        },
    }


def _channel_id(base: str) -> str:
    head, _, tail = base.partition(".")
    return head + tail.capitalize()


def asyncapi(topics: TopicMap | None = None, version: str = "0.1.0") -> dict[str, Any]:
    topics = topics or TopicMap()
    _, defs = models_json_schema(
        [(cls, "validation") for cls in ALL_MESSAGES], ref_template="#/components/schemas/{model}"
    )
    messages: dict[str, Any] = {}
    for cls in ALL_MESSAGES:
        messages[cls.__name__] = {
            "name": cls.__name__,
            "title": cls.__name__,
            "summary": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
            "contentType": DATA_CONTENT_TYPE,
            "headers": _headers_schema(cls),
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
            "correlationId": {"location": f"$message.header#/ce_{EXT_SAGA_ID}"},
            "bindings": {
                "kafka": {
                    "key": {"type": "string", "description": "The order id."},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in topics.specs():
        base = spec.name.removeprefix(topics.prefix)
        channel = _channel_id(base)
        on_topic = topics.messages_on(base)
        channels[channel] = {
            "address": spec.name,
            "description": f"Produced by the {PRODUCERS[base]}. Key: order id.",
            "messages": {c.__name__: {"$ref": f"#/components/messages/{c.__name__}"} for c in on_topic},
            "bindings": {
                "kafka": {
                    "topic": spec.name,
                    "partitions": spec.partitions,
                    "replicas": spec.replication,
                    "topicConfiguration": {"retention.ms": topics.retention_ms, "cleanup.policy": ["delete"]},
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            },
        }
        action = "receive" if base == INGRESS else "send"
        operations[f"{action}{channel[0].upper()}{channel[1:]}"] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": f"{'The order service receives' if action == 'receive' else 'Published by'} "
            f"{'upstream requests' if action == 'receive' else 'the ' + PRODUCERS[base]}.",
            "messages": [{"$ref": f"#/channels/{channel}/messages/{c.__name__}"} for c in on_topic],
        }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "sagaline",
            "version": version,
            "description": "Choreographed order saga on Apache Kafka: order, payment and inventory services. "
            "Every record follows the CloudEvents 1.0 Kafka protocol binding in binary mode.",
        },
        "defaultContentType": DATA_CONTENT_TYPE,
        "servers": {
            "local": {
                "host": "127.0.0.1:19092",
                "protocol": "kafka",
                "description": "The local stack (`sagaline dev up`).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": defs["$defs"]},
    }


def export(directory: Path) -> list[Path]:
    """Write the contract under `directory`; returns the files written."""
    schema_dir = directory / JSON_SCHEMA_DIR
    schema_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for cls in ALL_MESSAGES:
        path = schema_dir / schema_file_name(cls)
        path.write_text(json.dumps(json_schema(cls), indent=2, sort_keys=True) + "\n")
        written.append(path)
    doc = directory / ASYNCAPI_FILE
    doc.write_text(json.dumps(asyncapi(), indent=2) + "\n")
    written.append(doc)
    return written


def load_schemas(directory: Path) -> dict[str, dict[str, Any]]:
    """The JSON Schemas of a contract directory, by message type name (latest version)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((directory / JSON_SCHEMA_DIR).glob("*.json")):
        schema = json.loads(path.read_text())
        name = path.name.split(".v")[0]
        if (
            name not in found
            or schema["x-sagaline-schema-version"] > found[name]["x-sagaline-schema-version"]
        ):
            found[name] = schema
    return found


def current_schemas() -> dict[str, dict[str, Any]]:
    return {cls.__name__: json_schema(cls) for cls in ALL_MESSAGES}


__all__ = [
    "COMMITTED_CONTRACT",
    "ROUTES",
    "asyncapi",
    "current_schemas",
    "export",
    "json_schema",
    "load_schemas",
]
