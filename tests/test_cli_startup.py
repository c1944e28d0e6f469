"""CLI start-up for reads (issue 20 item 4): read commands import neither SQLAlchemy, Alembic nor the model stack.

Import checks, not timings (the timings are benchmarks/cli_startup_bench.py's, in docs/benchmarks.md):
`stats --json` and `search --json` run offline in a fresh interpreter on a real catalog, and the
modules they imported are listed: they read through a `CatalogSnapshot` (plain DuckDB), not the ORM. The schema revision is read without Alembic, so its two halves
are checked against Alembic itself: the head found from the revision files (a new migration is
picked up without a constant to update) and the revision read from the catalog's table.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import clustered_vectors
from eagle_index.config import Settings

NEVER_ON_READS = ("sqlalchemy", "duckdb_engine", "alembic", "torch", "timm", "umap", "openslide", "mako", "h5py")

RUN = """
import json, sys
from eagle_index.cli import main
try:
    main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as out:
    json.dump({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}, out)
"""


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory):
    from eagle_index.service import EagleService

    data = tmp_path_factory.mktemp("startup") / "data"
    with EagleService(Settings(data_dir=data)) as service:
        def write(session):
            ids = [service.catalog.patient_id(session, f"P{i:03d}", create=True) for i in range(50)]
            service.catalog.put_vectors(session, "eagle", "sig", ids, clustered_vectors(50, 16), source="test")

        service.catalog.write(write)
        service.search(patient="P001", k=3)  # the index file exists: a later search only opens it
    return data


def _imported(tmp_path, *argv) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", RUN, str(out), *argv], check=True, capture_output=True, timeout=300,
                   cwd=tmp_path)
    found = json.loads(out.read_text())
    return found["code"], set(found["modules"])


@pytest.mark.parametrize("argv", [("stats", "--json"), ("search", "--patient", "P001", "-k", "3", "--json")],
                         ids=["stats", "search"])
def test_read_commands_import_no_orm_alembic_nor_models(tmp_path, catalog_dir, argv):
    code, modules = _imported(tmp_path, *argv, "--data-dir", str(catalog_dir))
    assert code in (0, None)
    assert "eagle_index" in modules and "duckdb" in modules  # it did open the catalog
    assert not modules & set(NEVER_ON_READS), sorted(modules & set(NEVER_ON_READS))


def test_head_revision_is_alembics_head():
    """The head is found from the revision files without Alembic; Alembic agrees (so a migration added
    later, 0006 and on, is the head without a constant to update)."""
    from alembic.script import ScriptDirectory

    from eagle_index.store import schema

    script = ScriptDirectory(str(schema.migrations_dir()))
    assert schema.head_revision() == script.get_current_head()
    assert {r.revision for r in script.walk_revisions()} >= {"0001", schema.head_revision()}


def test_current_revision_is_read_like_alembic(tmp_path):
    from alembic.runtime.migration import MigrationContext

    from eagle_index.store import schema

    engine = schema.make_engine(f"duckdb:///{tmp_path / 'c.duckdb'}")
    assert schema.current_revision(engine) is None  # no alembic_version table yet
    schema.upgrade(engine, "0002")
    with engine.connect() as conn:
        assert schema.current_revision(engine) == MigrationContext.configure(conn).get_current_revision() == "0002"
    schema.upgrade(engine)
    assert schema.current_revision(engine) == schema.head_revision()
    engine.dispose()


def _help(capsys, argv) -> str:
    from eagle_index.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_a_command_is_built_alone_with_the_same_help_and_errors(capsys, monkeypatch):
    """`main` builds only the command typed (issue 20 item 4: typer builds every command it is given);
    its help, its errors and the whole app's help and unknown-command error are unchanged."""
    from typer.main import get_command

    import eagle_index.cli as cli

    assert list(get_command(cli._tree_for(["search", "--patient", "P1"])).commands) == ["search"]
    assert list(get_command(cli._tree_for(["db", "current"])).commands) == ["db"]
    assert cli._tree_for(["--help"]) is cli.app and cli._tree_for([]) is cli.app and cli._tree_for(["nosuch"]) is cli.app
    narrowed = {argv: _help(capsys, list(argv)) for argv in (("search", "--help"), ("db", "--help"), ("db", "current", "--help"))}
    monkeypatch.setattr(cli, "_tree_for", lambda argv: cli.app)
    for argv, text in narrowed.items():
        assert "Usage: eagle-index " + argv[0] in text and text == _help(capsys, list(argv))
    monkeypatch.undo()

    for argv, code, stream, text in ((["nosuch"], 2, "err", "No such command 'nosuch'"),
                                     (["stats", "--bogus"], 2, "err", "No such option: --bogus (see `eagle-index stats --help`)"),
                                     (["db"], 0, "out", "Usage: eagle-index db")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        out = capsys.readouterr()
        assert exit_.value.code == code and text in getattr(out, stream)
        assert getattr(out, stream).count("Usage:") <= 1  # the help of `eagle-index db` is printed once
