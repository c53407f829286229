"""Database access for the hot paths (catch-up writes, the authorize-payment reads and insert).

Django's own cursors bind parameters client-side: every value is quoted into the SQL text in
Python and PostgreSQL parses and plans each statement again. The hot paths instead use a plain
psycopg cursor on Django's connection (so inside Django's transaction) with server-side
binding: 10,000-element arrays go over as parameters (binary with `%b`) instead of text, and a
statement run on every request can be prepared once per connection with psycopg's own
`execute(..., prepare=True)` (psycopg keeps the per-connection cache of prepared statements;
settings.DATABASES sets the connection's prepare_threshold so nothing else is prepared, and
DATABASE_PREPARED_STATEMENTS=false turns them off behind a transaction-mode pooler).
Errors still surface as django.db errors.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

import psycopg
from django.db import connection


@contextmanager
def server_binding_cursor():
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        yield cursor


def json_value(value) -> dict:
    """A jsonb column as psycopg hands it back on a raw cursor: text (Django has psycopg return
    jsonb as text, which its JSONField parses), parsed here."""
    if value == "{}":
        return {}  # a booking the chain sync never touched: most of a catch-up
    if isinstance(value, str):
        return json.loads(value)
    return value or {}
