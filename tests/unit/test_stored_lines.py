"""An order's items and a reservation's lines as the services store them (a JSON array in a
jsonb column): what one version wrote, the next reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from pydantic import TypeAdapter, ValidationError

from schemas.values import LINE_ITEMS, STOCK_LINES, LineItem, StockLine
from tests.unit.strategies import line_items, stock_lines


@given(line_items)
def test_items_round_trip_and_read_what_earlier_versions_wrote(items: list[LineItem]) -> None:
    stored = LINE_ITEMS.dump_json(tuple(items)).decode()
    assert LINE_ITEMS.validate_json(stored) == tuple(items)
    # earlier versions wrote json.dumps of each item's model_dump; jsonb gives it back reformatted
    assert json.loads(stored) == [item.model_dump() for item in items]
    assert LINE_ITEMS.validate_json(_as_jsonb_prints(json.dumps([i.model_dump() for i in items]))) == tuple(
        items
    )


@given(stock_lines)
def test_stock_lines_round_trip_and_read_what_earlier_versions_wrote(lines: list[StockLine]) -> None:
    stored = STOCK_LINES.dump_json(tuple(lines)).decode()
    assert STOCK_LINES.validate_json(stored) == tuple(lines)
    assert json.loads(stored) == [line.model_dump() for line in lines]
    assert STOCK_LINES.validate_json(_as_jsonb_prints(json.dumps([x.model_dump() for x in lines]))) == tuple(
        lines
    )


@pytest.mark.parametrize("adapter", [LINE_ITEMS, STOCK_LINES], ids=["items", "stock lines"])
@pytest.mark.parametrize(
    "text", ['[{"sku": "A", "quantity": 0, "unit_price_minor": 1}]', '[{"sku": "A"}]', "{}", "[1]"]
)
def test_a_stored_value_that_is_not_lines_is_refused(adapter: TypeAdapter[Any], text: str) -> None:
    with pytest.raises(ValidationError):
        adapter.validate_json(text)


def _as_jsonb_prints(text: str) -> str:
    """PostgreSQL prints a jsonb object's keys shortest first, with a space after each colon
    and comma."""
    value: Any = json.loads(text)
    return json.dumps([dict(sorted(item.items(), key=lambda kv: (len(kv[0]), kv[0]))) for item in value])
