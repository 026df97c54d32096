"""Query text that may leave the process: literals gone, shape kept."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_render.db.query import MAX_QUERY_TEXT, describe, sanitize


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("SELECT * FROM users WHERE password = 'hunter2'", "SELECT * FROM users WHERE password = ?"),
        ("SELECT 'it''s', E'a\\'b', N'x', X'ff'", "SELECT ?, ?, ?, ?"),
        ("SELECT $$secret body$$, $tag$also $$ secret$tag$", "SELECT ?, ?"),
        ("UPDATE t SET n = 42, f = -3.5e10, h = 0x1F WHERE id = :id", "UPDATE t SET n = ?, f = -?, h = ? WHERE id = :id"),
        ("SELECT a FROM t -- token=abc\nWHERE b = %(b)s /* api_key 123 */", "SELECT a FROM t WHERE b = %(b)s"),
        ('SELECT "col1", t2.x FROM "t1", t2 WHERE y = $1', 'SELECT "col1", t2.x FROM "t1", t2 WHERE y = $1'),
        ("SELECT ARRAY[1, 2]", "SELECT ARRAY[?, ?]"),
        ("INSERT INTO t VALUES (?, ?)", "INSERT INTO t VALUES (?, ?)"),
    ],
)
def test_literals_and_comments_are_replaced_placeholders_and_identifiers_kept(statement, expected):
    assert sanitize(statement) == expected


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="'\\"), min_size=6))
def test_no_string_literal_content_survives(secret):
    for statement in (f"SELECT * FROM t WHERE a = '{secret}'", f"SELECT E'{secret}'", f"SELECT $q${secret}$q$"):
        text = describe(statement).text
        assert secret.strip() == "" or secret not in text


def test_an_unterminated_literal_is_dropped_to_the_end():
    assert sanitize("SELECT 'never closed password") == "SELECT ?"


def test_very_long_statements_are_cut():
    text = sanitize("SELECT " + ", ".join(f"col{i}" for i in range(2000)) + " FROM t")
    assert len(text) == MAX_QUERY_TEXT and text.endswith("...")


@pytest.mark.parametrize(
    ("statement", "operation", "collection"),
    [
        ("SELECT items.id FROM items WHERE items.id = %(pk)s", "SELECT", "items"),
        ('INSERT INTO "public"."items" (name) VALUES (?)', "INSERT", "public.items"),
        ("update items set name = ?", "UPDATE", "items"),
        ("DELETE FROM items WHERE id = 1", "DELETE", "items"),
        ("SELECT a.x FROM a JOIN b ON a.id = b.id", "SELECT", None),
        ("SELECT x FROM a, b", "SELECT", None),
        ("SELECT x FROM a WHERE id IN (SELECT id FROM b)", "SELECT", None),
        ("SELECT 1", "SELECT", None),
        ("WITH q AS (SELECT 1) SELECT * FROM q", "WITH", None),
        ("CREATE TABLE t (id int)", "CREATE", None),
        ("   ", None, None),
    ],
)
def test_operation_and_single_table(statement, operation, collection):
    info = describe(statement)
    assert (info.operation, info.collection) == (operation, collection)
