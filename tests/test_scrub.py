"""The one scrubber: keys, headers, query strings, URLs, free text."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_render.scrub import REDACTED, Scrubber, default


@pytest.mark.parametrize(
    "key",
    ["Authorization", "cookie", "Set-Cookie", "proxy-authorization", "X-API-Key", "db_password", "PASSWD",
     "client_secret", "access_token", "api_key", "apiKey", "sessionid", "X-CSRF-Token", "aws_credentials",
     "private_key"],
)
def test_sensitive_keys(key):
    assert default.is_sensitive(key)


@pytest.mark.parametrize("key", ["accept", "user-agent", "content-type", "item_id", "q", "x-request-id", "author"])
def test_ordinary_keys(key):
    assert not default.is_sensitive(key)


def test_extra_fragments_extend_the_list():
    assert Scrubber(extra_fragments=["ssn"]).is_sensitive("user_ssn")
    assert not default.is_sensitive("user_ssn")


def test_headers_keep_names_and_redact_values():
    scrubbed = default.headers([("Authorization", "Bearer abc"), ("Accept", "text/html"), ("Cookie", "sid=1"),
                                ("Accept", "application/json")])
    assert scrubbed == {"authorization": REDACTED, "accept": "text/html, application/json", "cookie": REDACTED}


def test_query_string_redacts_values_of_sensitive_keys_only():
    assert default.query_string("q=shoes&api_key=abc123&page=2;token=t&flag") == (
        f"q=shoes&api_key={REDACTED}&page=2;token={REDACTED}&flag"
    )
    assert default.query_string("API%5FKEY=abc") == f"API%5FKEY={REDACTED}"
    assert default.query_string("") == ""


def test_url_password_and_query():
    assert default.url("postgresql://app:s3cret@db:5432/app?password=x&sslmode=require") == (
        f"postgresql://app:{REDACTED}@db:5432/app?password={REDACTED}&sslmode=require"
    )
    assert default.url("https://example.com/a?b=1") == "https://example.com/a?b=1"


def test_exception_text_with_sqlalchemy_parameters_and_dsn():
    message = (
        "(psycopg2.errors.UniqueViolation) duplicate key\n"
        "[SQL: INSERT INTO users (email, password) VALUES (%(email)s, %(password)s)]\n"
        "[parameters: {'email': 'a@b.c', 'password': 'hunter2'}]\n"
        "(Background on this error at: https://sqlalche.me/e/20/gkpj)"
    )
    scrubbed = default.text(message)
    assert "hunter2" not in scrubbed and "a@b.c" not in scrubbed
    assert "[SQL: INSERT INTO users" in scrubbed
    assert default.text("could not connect to postgresql://u:pw123@host/db") == (
        f"could not connect to postgresql://u:{REDACTED}@host/db"
    )


def test_free_text_pairs_json_and_bearer_tokens():
    scrubbed = default.text('password=hunter2 token: abc "api_key": "k-1" Authorization: Bearer eyJhbGci.a.b ok=1')
    for secret in ("hunter2", "abc", "k-1", "eyJhbGci"):
        assert secret not in scrubbed
    assert "ok=1" in scrubbed


def test_mapping_is_scrubbed_recursively():
    data = {"database_url": "postgresql://u:pw@h/d", "nested": {"secret": 1, "list": [{"token": "t", "x": "y"}]}}
    assert default.mapping(data) == {
        "database_url": f"postgresql://u:{REDACTED}@h/d",
        "nested": {"secret": REDACTED, "list": [{"token": REDACTED, "x": "y"}]},
    }


@given(st.text())
def test_text_never_raises_and_is_idempotent(text):
    once = default.text(text)
    assert default.text(once) == once


@given(st.dictionaries(st.sampled_from(["token", "password", "q", "page"]), st.text(min_size=1, alphabet="abcXYZ019-_"), min_size=1))
def test_query_string_never_leaks_a_sensitive_value(params):
    query = "&".join(f"{key}={value}" for key, value in params.items())
    scrubbed = default.query_string(query)
    for key, value in params.items():
        shown = dict(part.split("=", 1) for part in scrubbed.split("&"))[key]
        assert shown == (REDACTED if key in ("token", "password") else value)
