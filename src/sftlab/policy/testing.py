"""Test helpers for the policy application: throw-away databases on SQLite and, when
`$SFTLAB_TEST_PG_URL` is set, on PostgreSQL (each in its own schema, dropped afterwards).

    for url in database_urls(tmp_path): ...
    with temporary_database(kind, tmp_path) as url: engine = open_db(url)
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

PG_ENV = "SFTLAB_TEST_PG_URL"


def database_kinds() -> list[str]:
    """"sqlite" always, plus "postgresql" when $SFTLAB_TEST_PG_URL names a server."""
    return ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])


@contextlib.contextmanager
def temporary_database(kind: str, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file in `tmp_path`, or a fresh PostgreSQL schema."""
    if kind == "sqlite":
        yield f"sqlite:///{Path(tmp_path) / f'policy-{uuid.uuid4().hex[:8]}.db'}"
        return
    from sqlalchemy import create_engine, text

    base = os.environ[PG_ENV]
    schema = f"sftlab_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
