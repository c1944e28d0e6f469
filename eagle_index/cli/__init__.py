"""The `eagle-index` command line.

Commands live in small modules by topic, each with a `register(app)` function. Heavy libraries
(torch, openslide, faiss) are imported inside commands, so `eagle-index --help` stays fast.
Project errors become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from eagle_index.errors import EagleIndexError

app = typer.Typer(
    name="eagle-index",
    help="Embedding database and look-alike slide retrieval for computational pathology (EAGLE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register_all() -> None:
    """Every topic, named once: a missing module is an error, not a silently absent command."""
    from eagle_index.cli import (catalog_cmds, cluster_cmds, cohort_cmds, demo_cmds, eval_cmds, models_cmds, ops_cmds, pipeline_cmds,
                                 probe_cmds, region_cmds, slides_cmds)

    for module in (catalog_cmds, pipeline_cmds, ops_cmds, slides_cmds, models_cmds, demo_cmds, cohort_cmds, eval_cmds, probe_cmds,
                   region_cmds, cluster_cmds):
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, translating project errors at the edge."""
    try:
        app(args=argv, prog_name="eagle-index")
    except EagleIndexError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
