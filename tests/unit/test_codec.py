"""The codec: every message round-trips; any input either decodes or raises a DecodeError."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import errors
from schemas.codec import decode, encode
from schemas.envelope import Envelope
from schemas.messages import ALL_MESSAGES, Message, OrderConfirmed, PlaceOrder
from schemas.registry import MessageRegistry
from schemas.values import LineItem, Money
from tests.unit.strategies import MESSAGE_STRATEGIES, envelopes

REASONS = {
    cls.reason
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.DecodeError)
}


def test_every_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(ALL_MESSAGES)


@given(envelopes())
@settings(max_examples=300)
def test_encode_then_decode_is_the_identity(envelope: Envelope[Message]) -> None:
    record = encode(envelope)
    assert record.key == envelope.data.order_id.encode()
    assert decode(record.value, record.headers) == envelope


@given(
    st.one_of(st.none(), st.binary(max_size=300)),
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40))),
)
@settings(max_examples=500)
def test_arbitrary_bytes_and_headers_raise_only_decode_errors(
    value: bytes | None, headers: list[Any]
) -> None:
    _decodes_or_raises_a_typed_error(value, headers)


def _decodes_or_raises_a_typed_error(value: bytes | None, headers: list[Any]) -> None:
    outcome: Envelope[Message] | errors.DecodeError
    try:
        outcome = decode(value, headers)
    except errors.DecodeError as exc:
        outcome = exc
    if isinstance(outcome, errors.DecodeError):
        assert outcome.reason in REASONS
        assert str(outcome)
    else:
        assert isinstance(outcome.data, Message)


@given(envelopes(), st.data())
@settings(max_examples=300)
def test_mutated_valid_records_raise_only_decode_errors(
    envelope: Envelope[Message], data: st.DataObject
) -> None:
    record = encode(envelope)
    headers = list(record.headers)
    index = data.draw(st.integers(0, len(headers) - 1))
    action = data.draw(st.sampled_from(["drop", "garble", "dup"]))
    if action == "drop":
        headers.pop(index)
    elif action == "garble":
        headers[index] = (headers[index][0], data.draw(st.binary(max_size=30)))
    else:
        headers.append(headers[index])
    value = data.draw(st.sampled_from([record.value, record.value[:-1], b"{}", b"[]", b"\xff"]))
    _decodes_or_raises_a_typed_error(value, headers)


def _order_confirmed() -> Envelope[OrderConfirmed]:
    return Envelope.new(OrderConfirmed(order_id="o-1", total=Money(amount_minor=500, currency="EUR")), "/t")


def _headers_with(**changes: str | None) -> list[tuple[str, bytes]]:
    headers = dict(encode(_order_confirmed()).headers)
    for name, value in changes.items():
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value.encode()
    return list(headers.items())


@pytest.mark.parametrize(
    ("value", "headers", "error", "text"),
    [
        (b"{not json", _headers_with(), errors.NotJson, "not JSON"),
        (None, _headers_with(), errors.NotJson, "tombstone"),
        (b"[1]", _headers_with(), errors.NotJson, "not an object"),
        ('{"order_id": "o-1"}'.encode("utf-16"), _headers_with(), errors.NotJson, "UTF-8"),  # RFC 8259
        (b"[" * 100_000, _headers_with(), errors.NotJson, "recursion limit"),
        (b"{}", _headers_with(ce_type=None), errors.MissingHeader, "ce_type"),
        (b"{}", _headers_with(ce_type="io.sagaline.Nope"), errors.UnknownMessageType, "io.sagaline.Nope"),
        (b"{}", _headers_with(ce_schemaversion="7"), errors.UnsupportedVersion, "newer"),
        (b"{}", _headers_with(ce_schemaversion="x"), errors.InvalidHeader, "positive integer"),
        (b"{}", _headers_with(ce_time="yesterday"), errors.InvalidHeader, "RFC 3339"),
        (b"{}", _headers_with(ce_specversion="0.3"), errors.InvalidHeader, "specversion"),
        (b"{}", _headers_with(**{"content-type": "text/plain"}), errors.InvalidHeader, "content-type"),
    ],
)
def test_each_failure_has_its_own_typed_error(
    value: bytes | None, headers: list[tuple[str, bytes]], error: type[errors.DecodeError], text: str
) -> None:
    with pytest.raises(error, match=text):
        decode(value, headers)


def test_a_leading_byte_order_mark_is_ignored() -> None:
    """RFC 8259 lets a parser ignore a UTF-8 BOM that some writers put first."""
    record = encode(_order_confirmed())
    assert decode(b"\xef\xbb\xbf" + record.value, record.headers) == decode(record.value, record.headers)


def test_validation_failure_names_the_field_path() -> None:
    bad = {"order_id": "o-1", "total": {"amount_minor": -5, "currency": "EUR"}}
    with pytest.raises(errors.ContractViolation) as caught:
        decode(json.dumps(bad).encode(), _headers_with())
    assert caught.value.errors[0][0] == "total.amount_minor"
    assert "total.amount_minor" in str(caught.value)


def test_message_errors_are_reported_before_envelope_errors() -> None:
    """The envelope and its message are validated in one call; what is wrong with the
    message is named by the message's type and paths inside it, and only an envelope whose
    message is valid is reported as the envelope's fault."""
    bad_message = {"order_id": "o-1", "total": {"amount_minor": -5, "currency": "EUR"}}
    long_source = "x" * 300  # over the envelope's 256 characters
    with pytest.raises(errors.ContractViolation, match=r"^OrderConfirmed failed validation") as caught:
        decode(json.dumps(bad_message).encode(), _headers_with(ce_source=long_source))
    assert [path for path, _ in caught.value.errors] == ["total.amount_minor"]
    good = encode(_order_confirmed())
    with pytest.raises(errors.ContractViolation, match=r"^envelope failed validation") as caught:
        decode(good.value, _headers_with(ce_source=long_source))
    assert [path for path, _ in caught.value.errors] == ["source"]


def test_the_saga_id_defaults_to_the_order_id() -> None:
    record = encode(_order_confirmed())
    envelope = decode(record.value, _headers_with(ce_sagaid=None))
    assert envelope.saga_id == envelope.data.order_id == "o-1"
    with pytest.raises(errors.ContractViolation, match="order_id"):  # no order id: no saga id either
        decode(b'{"total": {"amount_minor": 5, "currency": "EUR"}}', _headers_with(ce_sagaid=None))


def test_subject_must_match_the_order_id() -> None:
    with pytest.raises(errors.InvalidHeader, match="ce_subject"):
        decode(encode(_order_confirmed()).value, _headers_with(ce_subject="o-2"))


def test_older_versions_are_upcast_and_missing_upcasters_are_permanent_errors() -> None:
    class Shipped(Message):
        schema_version = 3
        carrier: str

    registry = MessageRegistry.of([Shipped])

    @registry.upcaster("Shipped", from_version=1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": data["order"], "carrier_name": data["by"]}

    @registry.upcaster("Shipped", from_version=2)
    def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        return {"order_id": data["order_id"], "carrier": data["carrier_name"].upper()}

    headers = encode(Envelope.new(Shipped(order_id="o-9", carrier="DHL"), "/t")).headers
    v1 = [(k, b"1" if k == "ce_schemaversion" else v) for k, v in headers]
    decoded = decode(json.dumps({"order": "o-9", "by": "dhl"}).encode(), v1, registry)
    assert decoded.data == Shipped(order_id="o-9", carrier="DHL")

    del registry.upcasters[("Shipped", 1)]
    with pytest.raises(errors.UnsupportedVersion, match="no upcaster"):
        decode(json.dumps({"order": "o-9", "by": "dhl"}).encode(), v1, registry)

    registry.upcaster("Shipped", from_version=1)(v1_to_v2)

    @registry.upcaster("Shipped", from_version=2)
    def broken(data: dict[str, Any]) -> Any:
        return [data]  # not an object: a contract violation, not an AttributeError

    with pytest.raises(errors.ContractViolation, match=r"^Shipped failed validation"):
        decode(json.dumps({"order": "o-9", "by": "dhl"}).encode(), v1, registry)


def test_place_order_rules() -> None:
    item = LineItem(sku="sku-1", quantity=2, unit_price_minor=250)
    order = PlaceOrder(
        order_id="o-1", idempotency_key="key-12345", customer_id="c-1", currency="EUR", items=[item]
    )
    assert order.total == Money(amount_minor=500, currency="EUR")
    with pytest.raises(ValueError, match="each sku may appear once"):
        PlaceOrder(
            order_id="o", idempotency_key="key-12345", customer_id="c", currency="EUR", items=[item, item]
        )
    with pytest.raises(ValueError, match="items"):
        PlaceOrder(order_id="o", idempotency_key="key-12345", customer_id="c", currency="EUR", items=[])
    with pytest.raises(ValueError, match="quantity"):
        LineItem(sku="s", quantity=0, unit_price_minor=1)
    with pytest.raises(ValueError, match="currency"):
        Money(amount_minor=1, currency="euro")
