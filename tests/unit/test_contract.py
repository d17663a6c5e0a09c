"""The published contract: up to date, valid AsyncAPI, and breaking changes are caught."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from schemas.compat import check
from schemas.contract import COMMITTED_CONTRACT, asyncapi, current_schemas, export, load_schemas

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = ROOT / "tools" / "asyncapi"


def test_the_committed_contract_matches_the_code(tmp_path: Path) -> None:
    export(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.json"))
    committed = sorted(p.relative_to(COMMITTED_CONTRACT) for p in COMMITTED_CONTRACT.rglob("*.json"))
    assert generated == committed
    for relative in generated:
        assert (tmp_path / relative).read_text() == (COMMITTED_CONTRACT / relative).read_text(), (
            f"{relative} is stale: run `sagaline schemas export schemas/contract`"
        )


def test_asyncapi_names_every_topic_and_message() -> None:
    doc = asyncapi()
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {"sagaline.ingress", "orders.events", "payments.events", "inventory.events"}
    assert set(doc["components"]["messages"]) == set(current_schemas())
    placed = doc["components"]["messages"]["OrderPlaced"]
    assert placed["headers"]["properties"]["ce_type"] == {"const": "io.sagaline.OrderPlaced"}
    assert placed["bindings"]["kafka"]["key"]["type"] == "string"


def test_the_official_asyncapi_parser_accepts_the_document_and_rejects_a_broken_one(tmp_path: Path) -> None:
    assert shutil.which("node"), "Node.js is missing: `make test` installs it (tools/system-deps.sh)"
    assert (VALIDATOR / "node_modules" / "@asyncapi" / "parser").is_dir(), "run `make test` to install it"
    good = subprocess.run(
        ["node", "validate.mjs", str(COMMITTED_CONTRACT / "asyncapi.json")],
        cwd=VALIDATOR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "VALID: asyncapi 3.0.0, 4 channels, 13 messages" in good.stdout

    broken = asyncapi()
    broken["channels"]["ordersEvents"]["messages"]["OrderPlaced"] = {"$ref": "#/components/messages/Nope"}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    bad = subprocess.run(
        ["node", "validate.mjs", str(tmp_path / "broken.json")],
        cwd=VALIDATOR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert bad.returncode == 1
    assert "INVALID" in bad.stdout


def _current() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(current_schemas())


def test_identical_contracts_are_compatible() -> None:
    assert check(load_schemas(COMMITTED_CONTRACT), current_schemas()) == []


def test_a_removed_type_is_breaking() -> None:
    new = _current()
    del new["StockReleased"]
    assert [str(p) for p in check(_current(), new)] == ["StockReleased: message type removed"]


def test_a_removed_field_is_breaking() -> None:
    new = _current()
    del new["PaymentFailed"]["properties"]["reason"]
    new["PaymentFailed"]["required"].remove("reason")
    assert [str(p) for p in check(_current(), new)] == ["PaymentFailed.reason: field removed"]


def test_a_retyped_field_is_breaking_even_when_nested() -> None:
    new = _current()
    new["OrderPlaced"]["$defs"]["Money"]["properties"]["amount_minor"] = {"type": "string"}
    problems = [str(p) for p in check(_current(), new)]
    assert problems == ["OrderPlaced.total.amount_minor: type changed from integer to string"]


def test_a_new_required_field_is_breaking() -> None:
    new = _current()
    new["OrderConfirmed"]["properties"]["confirmed_by"] = {"type": "string"}
    new["OrderConfirmed"]["required"].append("confirmed_by")
    assert [str(p) for p in check(_current(), new)] == ["OrderConfirmed.confirmed_by: new required field"]


def test_removed_enum_values_and_tightened_bounds_are_breaking() -> None:
    new = _current()
    reason = new["OrderCancelled"]["properties"]["reason"]
    reason["enum"] = [v for v in reason["enum"] if v != "deadline_expired"]
    new["PlaceOrder"]["properties"]["items"]["maxItems"] = 10
    problems = {str(p) for p in check(_current(), new)}
    assert problems == {
        "OrderCancelled.reason: enum values removed: ['deadline_expired']",
        "PlaceOrder.items: maxItems tightened from 100 to 10",
    }


def test_additive_changes_pass() -> None:
    new = _current()
    new["OrderConfirmed"]["properties"]["note"] = {"type": "string", "default": ""}
    new["PlaceOrder"]["properties"]["items"]["maxItems"] = 500
    new["ShipmentSent"] = {"type": "object", "properties": {}}
    assert check(_current(), new) == []


def test_a_version_bump_needs_an_upcaster() -> None:
    new = _current()
    new["OrderConfirmed"]["x-sagaline-schema-version"] = 2
    assert [str(p) for p in check(_current(), new)] == [
        "OrderConfirmed: version 1 -> 2 without upcaster from v1"
    ]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagaline", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_schemas_check_cli_fails_with_the_reason_and_passes_when_compatible(tmp_path: Path) -> None:
    assert _cli("schemas", "check").returncode == 0
    shutil.copytree(COMMITTED_CONTRACT, tmp_path / "old")
    old_file = tmp_path / "old" / "json-schema" / "PaymentRefunded.v1.json"
    old = json.loads(old_file.read_text())
    old["properties"]["refund_channel"] = {"type": "string"}  # the code no longer has this field
    old_file.write_text(json.dumps(old))
    result = _cli("schemas", "check", "--against", str(tmp_path / "old"))
    assert result.returncode == 1
    assert "PaymentRefunded.refund_channel: field removed" in result.stdout + result.stderr


def test_schemas_export_cli_writes_the_contract(tmp_path: Path) -> None:
    result = _cli("schemas", "export", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["written"]) == 14
    assert (tmp_path / "out" / "asyncapi.json").exists()
