"""Alembic environment for the eagle-index catalog.

Run through `eagle-index db upgrade` (eagle_index.store.schema), which passes the connection
in `config.attributes["connection"]`; a plain `alembic` call works too with `sqlalchemy.url`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from eagle_index.store import schema  # noqa: F401  (registers Alembic's DuckDB implementation)
from eagle_index.store.models import Base


def run_migrations_online() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
