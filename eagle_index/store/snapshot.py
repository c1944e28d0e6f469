"""A read-only view of an embedded (DuckDB) catalog for one-shot reads: `stats`, `search` from the CLI.

Such a command opens the catalog, reads a little and exits. Through `Catalog` it would import
SQLAlchemy, its DuckDB dialect and the ORM models first: 0.5 s of a 0.8 s `stats --json` on a
quiet machine (issue 20 item 4 asks for 0.5 s in all). A `CatalogSnapshot` answers the same reads
with the same code (`CatalogReads`, plain SQL) over a read-only DuckDB connection, so what a
reader sees cannot differ between the two; it cannot write (DuckDB refuses on a read-only
connection) and has nothing to keep in step with, since no process can write the file while it
is open read-only.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from eagle_index.errors import CatalogError
from eagle_index.store import schema
from eagle_index.store.catalog_reads import CatalogReads


class CatalogSnapshot(CatalogReads):
    """The catalog's reads over a read-only DuckDB connection (no writes, no commits, no listeners)."""

    def __init__(self, path: Path):
        import duckdb

        self.path = Path(path)
        try:
            self._connection = duckdb.connect(str(self.path), read_only=True)
        except Exception as exc:  # duckdb.IOException for a held lock, duckdb.Error for a file that is not a catalog
            message = str(exc).splitlines()[0]
            if "lock" in message.lower():
                raise CatalogError(schema.lock_message(self.path, message)) from None
            raise CatalogError(f"cannot open catalog {self.path}: {message}") from None
        self._lock = threading.Lock()  # one DuckDB connection: statements one at a time
        self._init_reads()
        try:
            schema.check_revision(self._current_revision(), self.path)
        except BaseException:
            self.close()
            raise

    def _current_revision(self) -> str | None:
        exists = self.read_rows("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = ?", (schema.VERSION_TABLE,))
        if not exists[0][0]:
            return None
        return schema.single_revision([r[0] for r in self.read_rows(f"SELECT version_num FROM {schema.VERSION_TABLE}")])

    def read_rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._connection.execute(sql, list(params)).fetchall()

    @contextmanager
    def read_snapshot(self):
        """Nothing can write the file while it is open read-only: every read already sees one state."""
        yield self.read_rows

    def add_commit_listener(self, listener) -> None:
        """Nothing commits through a snapshot: there is nothing to follow."""

    def add_tile_listener(self, listener) -> None:
        """Nothing commits through a snapshot: there is nothing to follow."""

    def close(self) -> None:
        self._connection.close()
