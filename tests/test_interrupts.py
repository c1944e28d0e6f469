"""Ctrl-C that DuckDB notices first fails the running query ("Query interrupted") instead of
raising KeyboardInterrupt; the CLI must still say "interrupted" and exit 130, never "internal
error" (seen as a flaky test_ctrl_c_during_ingest: exit 70 when the signal landed in a query)."""

from __future__ import annotations

import duckdb
import pytest
from sqlalchemy.exc import OperationalError

from eagle_index.errors import InputError, is_interrupt


def _raised_while_handling(first: BaseException, then: BaseException) -> BaseException:
    try:
        try:
            raise first
        except BaseException:
            raise then
    except BaseException as exc:
        return exc


@pytest.mark.parametrize("exc", [
    KeyboardInterrupt(),
    RuntimeError("Query interrupted"),  # duckdb through duckdb_engine on SIGINT
    duckdb.InterruptException("INTERRUPT Error: Interrupted!"),  # duckdb's own interrupt
    OperationalError("SELECT 1", {}, RuntimeError("Query interrupted")),  # wrapped by SQLAlchemy
    _raised_while_handling(KeyboardInterrupt(), ValueError("closing failed")),
])
def test_these_are_ctrl_c(exc):
    assert is_interrupt(exc)


@pytest.mark.parametrize("exc", [None, RuntimeError("Query failed"), ValueError("Query interrupted"), InputError("bad"),
                                 OperationalError("SELECT 1", {}, RuntimeError("disk full"))])
def test_these_are_not(exc):
    assert not is_interrupt(exc)


def _run_cli(args, capsys) -> tuple[int, list[str]]:
    from eagle_index.cli import main

    with pytest.raises(SystemExit) as ended:
        main([str(a) for a in args])
    return ended.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_ingest_interrupted_inside_a_query_says_so_and_exits_130(tmp_path, monkeypatch, capsys):
    from eagle_index.service import EagleService

    def interrupted_query(self, *args, **kwargs):
        raise RuntimeError("Query interrupted")

    monkeypatch.setattr(EagleService, "ingest", interrupted_query)
    slide = tmp_path / "slide.tiff"
    slide.write_bytes(b"II*\x00")
    code, lines = _run_cli(["ingest", slide, "--models", "tiny", "--device", "cpu", "--data-dir", tmp_path / "data"], capsys)
    assert code == 130 and len(lines) == 1 and lines[0].startswith("interrupted: "), lines


def test_any_command_interrupted_inside_a_query_exits_130(tmp_path, monkeypatch, capsys):
    from eagle_index.service import EagleService

    def interrupted_query(self, *args, **kwargs):
        raise OperationalError("SELECT 1", {}, RuntimeError("Query interrupted"))

    monkeypatch.setattr(EagleService, "stats", interrupted_query)
    code, lines = _run_cli(["stats", "--data-dir", tmp_path / "data"], capsys)
    assert (code, lines) == (130, ["error: interrupted"])
