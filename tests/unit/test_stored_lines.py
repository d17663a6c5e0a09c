"""An order's items and a reservation's lines as the services store them (a JSON array in a
jsonb column): what one version wrote, the next reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from schemas.values import LINE_ITEMS, STOCK_LINES
from tests.unit.strategies import line_items, stock_lines


@pytest.mark.parametrize(
    ("adapter", "lines"), [(LINE_ITEMS, line_items), (STOCK_LINES, stock_lines)], ids=["items", "stock lines"]
)
@given(data=st.data())
def test_lines_round_trip_and_read_what_earlier_versions_wrote(
    adapter: TypeAdapter[tuple[Any, ...]], lines: st.SearchStrategy[list[Any]], data: st.DataObject
) -> None:
    values = tuple(data.draw(lines))
    stored = adapter.dump_json(values).decode()
    assert adapter.validate_json(stored) == values
    # earlier versions wrote json.dumps of each line's model_dump; jsonb gives it back reformatted
    assert json.loads(stored) == [value.model_dump() for value in values]
    assert adapter.validate_json(_as_jsonb_prints(json.dumps([v.model_dump() for v in values]))) == values


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
