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
    from eagle_index.cli import catalog_cmds

    catalog_cmds.register(app)
    for name in ("pipeline_cmds", "ops_cmds", "slides_cmds", "models_cmds", "demo_cmds", "cohort_cmds", "eval_cmds", "probe_cmds", "cluster_cmds"):
        try:
            module = __import__(f"eagle_index.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:  # a topic not built yet
            if exc.name != f"eagle_index.cli.{name}":
                raise
            continue
        module.register(app)


_register_all()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, translating project errors at the edge."""
    try:
        app(args=argv, prog_name="eagle-index")
    except EagleIndexError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
