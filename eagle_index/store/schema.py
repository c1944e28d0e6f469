"""Open the catalog database and keep its schema at the Alembic head.

The application never creates tables behind the user's back: a new catalog is created by
running every revision, and an older one is refused with the command that upgrades it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.ddl.impl import DefaultImpl
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine

from eagle_index.errors import CatalogError


class DuckDBImpl(DefaultImpl):
    """Alembic has no built-in DuckDB dialect; registering this class (by defining it) adds one."""

    __dialect__ = "duckdb"
    transactional_ddl = True


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


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def head_revision() -> str:
    script = ScriptDirectory(str(migrations_dir()))
    return script.get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply revisions up to `revision` (in place, inside a transaction)."""
    config = alembic_config(engine)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def make_engine(url: str) -> Engine:
    """An engine for a catalog URL, with a clear error when another process holds the file."""
    try:
        engine = create_engine(url, poolclass=None)
        with engine.connect():
            pass
    except Exception as exc:  # duckdb raises IOException for a held lock
        message = str(exc).splitlines()[0]
        if "lock" in message.lower():
            raise CatalogError(_lock_message(Path(url.removeprefix("duckdb:///")), message)) from None
        raise CatalogError(f"cannot open catalog {url}: {message}") from None
    return engine


def _lock_message(catalog: Path, message: str) -> str:
    """Name who holds DuckDB's lock: this data folder's eagle-index owner, or another program."""
    import re

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


def ensure_current(engine: Engine, catalog_path: Path | None = None, create: bool = True) -> None:
    """A new (empty) catalog is created at head; an older one must be upgraded explicitly."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None and create:
        upgrade(engine)
        return
    where = f" --data-dir {catalog_path.parent}" if catalog_path else ""
    raise CatalogError(
        f"catalog {catalog_path or engine.url} is at schema revision {current}, this version needs {head}: "
        f"run `eagle-index db upgrade{where}`"
    )
