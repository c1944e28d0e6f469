"""Open the catalog database and keep its schema at the Alembic head.

The application never creates tables behind the user's back: a new catalog is created by
running every revision, and an older one is refused with the command that upgrades it.

Reads never import Alembic (issue 20 item 4: it cost a read command a third of its start-up):
the catalog's revision is read from its `alembic_version` table with one query, and the head
revision is found from the revision files' own `revision` / `down_revision` lines
(`head_revision`; tests/test_cli_startup.py checks it against Alembic's answer). Alembic is
imported only to upgrade (and its DuckDB implementation registered then, `_alembic`). SQLAlchemy is
imported only by the functions that take an engine, so a `CatalogSnapshot` (store/snapshot.py) checks
the revision without it.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from eagle_index.errors import CatalogError

if TYPE_CHECKING:
    from sqlalchemy import Engine

VERSION_TABLE = "alembic_version"  # Alembic's default, which migrations/env.py keeps


def _alembic():
    """Import Alembic and register its DuckDB implementation (defining the class registers it)."""
    from alembic.ddl.impl import DefaultImpl, _impls

    if "duckdb" not in _impls:
        class DuckDBImpl(DefaultImpl):
            """Alembic has no built-in DuckDB dialect; this adds one."""

            __dialect__ = "duckdb"
            transactional_ddl = True


if "alembic" in sys.modules:  # imported by migrations/env.py under a plain `alembic` command
    _alembic()


def migrations_dir() -> Path:
    """The `migrations/` folder: beside the package in a source tree or editable install."""
    candidates = [Path(__file__).resolve().parents[2] / "migrations"]
    try:
        import migrations as installed  # the revisions shipped as package data

        candidates.append(Path(installed.__file__).resolve().parent)
    except ImportError:
        pass
    for path in candidates:
        if (path / "env.py").is_file() and (path / "versions" / "0001_core_tables.py").is_file():
            return path
    raise CatalogError("the eagle-index Alembic revisions (migrations/) are missing from this installation")


def alembic_config(engine: "Engine"):
    from alembic.config import Config

    _alembic()
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


_REVISION = re.compile(r"^revision\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", re.MULTILINE)
_DOWN = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(None|['\"]([^'\"]+)['\"])", re.MULTILINE)


@functools.lru_cache(maxsize=None)
def head_revision() -> str:
    """The head revision id, from the revision files (`revision = "..."`, `down_revision = ...`) without
    importing Alembic: the one revision no other revision names as its `down_revision`."""
    revisions, downs = set(), set()
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        source = path.read_text(encoding="utf-8")
        found = _REVISION.search(source)
        if found is None:
            continue  # __init__.py
        down = _DOWN.search(source)
        if down is None:
            raise CatalogError(f"revision file {path.name} has no down_revision line")
        revisions.add(found.group(1))
        if down.group(2):
            downs.add(down.group(2))
    heads = sorted(revisions - downs)
    if len(heads) != 1:
        raise CatalogError(f"the schema revisions have {len(heads)} heads ({', '.join(heads) or 'none'}), expected one")
    return heads[0]


def current_revision(engine: "Engine") -> str | None:
    """The catalog's schema revision (its `alembic_version` row), None for a catalog without one."""
    from sqlalchemy import text

    with engine.connect() as conn:
        exists = conn.execute(text("SELECT COUNT(*) FROM information_schema.tables WHERE table_name = :t"),
                              {"t": VERSION_TABLE}).scalar()
        if not exists:
            return None
        rows = [r[0] for r in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()]
    return single_revision(rows)


def single_revision(rows: list[str]) -> str | None:
    """The one revision an `alembic_version` table records (None: empty)."""
    if len(rows) > 1:
        raise CatalogError(f"the catalog records {len(rows)} schema revisions ({', '.join(rows)}), expected one")
    return rows[0] if rows else None


def upgrade(engine: "Engine", revision: str = "head") -> None:
    """Apply revisions up to `revision` (in place, inside a transaction)."""
    from alembic import command

    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def make_engine(url: str) -> "Engine":
    """An engine for a catalog URL, with a clear error when another process holds the file."""
    from sqlalchemy import create_engine

    try:
        engine = create_engine(url, poolclass=None)
        with engine.connect():
            pass
    except Exception as exc:  # duckdb raises IOException for a held lock
        message = str(exc).splitlines()[0]
        if "lock" in message.lower():
            raise CatalogError(lock_message(Path(url.removeprefix("duckdb:///")), message)) from None
        raise CatalogError(f"cannot open catalog {url}: {message}") from None
    return engine


def lock_message(catalog: Path, message: str) -> str:
    """Name who holds DuckDB's lock: this data folder's eagle-index owner, or another program."""
    from eagle_index.owner import current_owner

    found = re.search(r"held in (.+?) \(PID (\d+)\)", message)
    program, pid = (found.group(1), int(found.group(2))) if found else (None, None)
    owner = current_owner(catalog.parent)
    if owner is not None and (pid is None or owner.pid == pid):
        return (f"catalog {catalog} is held by {owner.describe()}: stop it first "
                "(search, stats, status, ingest and labels import go through it automatically)")
    who = f"{Path(program).name} (PID {pid})" if pid is not None else "another process"
    return (f"catalog {catalog} is locked by {who}, not an eagle-index server or daemon of this data folder: "
            f"close that program and try again ({message})")


def ensure_current(engine: "Engine", catalog_path: Path | None = None, create: bool = True) -> None:
    """A new (empty) catalog is created at head; an older one must be upgraded explicitly."""
    current = current_revision(engine)
    if current is None and create:
        upgrade(engine)
        return
    check_revision(current, catalog_path or engine.url)


def check_revision(current: str | None, catalog) -> None:
    """Refuse a catalog not at the head revision, with the command that upgrades it (`catalog`: its path or URL)."""
    head = head_revision()
    if current == head:
        return
    where = f" --data-dir {catalog.parent}" if isinstance(catalog, Path) else ""
    raise CatalogError(
        f"catalog {catalog} is at schema revision {current}, this version needs {head}: "
        f"run `eagle-index db upgrade{where}`"
    )
