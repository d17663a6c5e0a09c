"""Statements sent together (producers.db.together): parameters renumbered, nothing else."""

from __future__ import annotations

from producers.db import together


def test_statements_become_with_queries_with_their_parameters_renumbered() -> None:
    sql, args = together(
        [
            ("INSERT INTO a (x, y) SELECT * FROM unnest($1::int[], $2::text[])", ([1], ["p"])),
            ("UPDATE b SET n = $1 WHERE id = $2 AND m = $1", (7, "k")),
        ],
        ("SELECT pg_notify($1, $2)", ("channel", "payload")),
    )
    assert sql == (
        "WITH w0 AS (INSERT INTO a (x, y) SELECT * FROM unnest($1::int[], $2::text[])),"
        " w1 AS (UPDATE b SET n = $3 WHERE id = $4 AND m = $3)"
        " SELECT pg_notify($5, $6)"
    )
    assert args == ([1], ["p"], 7, "k", "channel", "payload")


def test_a_lone_statement_is_sent_as_it_is_and_no_statement_leaves_the_final_one() -> None:
    lone = ("DELETE FROM a WHERE id = $1", (3,))
    assert together([lone]) == lone
    assert together([], ("SELECT $1", (1,))) == ("SELECT $1", (1,))


def test_two_digit_parameters_are_renumbered_whole() -> None:
    many = tuple(range(12))
    sql, args = together([("UPDATE a SET x = $1", (0,)), ("UPDATE b SET y = $12, z = $2", many)])
    assert sql == "WITH w0 AS (UPDATE a SET x = $1), w1 AS (UPDATE b SET y = $13, z = $3) SELECT 1"
    assert args == (0, *many)


def test_a_final_statement_with_its_own_with_queries_joins_the_list() -> None:
    sql, args = together(
        [("UPDATE a SET x = $1", (1,))],
        ("WITH s AS (INSERT INTO b VALUES ($1) RETURNING id) SELECT id FROM s WHERE id <> $2", (2, 3)),
    )
    assert sql == (
        "WITH w0 AS (UPDATE a SET x = $1), s AS (INSERT INTO b VALUES ($2) RETURNING id)"
        " SELECT id FROM s WHERE id <> $3"
    )
    assert args == (1, 2, 3)
