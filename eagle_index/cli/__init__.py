"""The `eagle-index` command line.

Commands live in small modules by topic, each with a `register(app)` function. Heavy libraries
(torch, openslide, faiss) are imported inside commands, so `eagle-index --help` stays fast.
Project errors become one line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from eagle_index.errors import EagleIndexError, is_interrupt

APP_SETTINGS = dict(
    name="eagle-index",
    help="Embedding database and look-alike slide retrieval for computational pathology (EAGLE).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app = typer.Typer(**APP_SETTINGS)


def _register_all() -> None:
    """Every topic, named once: a missing module is an error, not a silently absent command."""
    from eagle_index.cli import (annotation_cmds, catalog_cmds, cluster_cmds, cohort_cmds, demo_cmds, eval_cmds, models_cmds, ops_cmds,
                                 pipeline_cmds, probe_cmds, region_cmds, slides_cmds)

    for module in (catalog_cmds, pipeline_cmds, ops_cmds, slides_cmds, models_cmds, demo_cmds, cohort_cmds, eval_cmds, probe_cmds,
                   region_cmds, annotation_cmds, cluster_cmds):
        module.register(app)


_register_all()


def _tree_for(argv: list[str] | None) -> typer.Typer:
    """The app narrowed to the command typed (`eagle-index search ...`: only `search`), else the whole app.

    Typer turns every command of the tree it is given into a click command, with pydantic adapters
    for each parameter: 0.09 s for all 43 on every run, a fifth of a `stats --json`. Nothing else
    changes: the command and its help are built from the same registration; `--help`, no command,
    or a name that is not a command get the whole app (the full list, or click's "No such command").
    """
    args = sys.argv[1:] if argv is None else argv
    name = args[0] if args else None
    commands = [c for c in app.registered_commands if c.name == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if not commands and not groups:
        return app
    narrowed = typer.Typer(**APP_SETTINGS)
    narrowed.registered_commands, narrowed.registered_groups = commands, groups
    narrowed.callback()(_root)  # a group even with one command, so `NAME` stays the first argument
    return narrowed


def _root() -> None:
    """Embedding database and look-alike slide retrieval for computational pathology (EAGLE)."""


def one_line(message: str) -> str:
    """A message as one line: a list of missing files or hints joined by '; '."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return "; ".join(line[2:] if line.startswith("- ") else line for line in lines)


def _given_value(exc, argv: list[str] | None) -> str:
    """'VALUE: ' as the user typed it for a bad option value (click's message does not repeat it)."""
    param = getattr(exc, "param", None)
    if param is None or getattr(param, "param_type_name", "") != "option":
        return ""
    args = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(args):
        for opt in param.opts:
            if arg == opt and i + 1 < len(args):
                return f"{args[i + 1]!r}: "
            if arg.startswith(opt + "="):
                return f"{arg[len(opt) + 1:]!r}: "
    return ""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, translating every error at the edge into one line.

    Usage errors (unknown option, a value that is not a number) and file-system errors name the
    problem on one line too; anything else is a bug, reported as one `internal error` line (the
    traceback only with EAGLE_INDEX_DEBUG=1).
    """
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
    from typer.main import get_command

    from eagle_index.cli.helpfmt import readable

    command = get_command(_tree_for(argv))
    readable(command)
    try:
        code = command.main(args=argv, prog_name="eagle-index", standalone_mode=False)
    except NoArgsIsHelpError as exc:  # `eagle-index` / `eagle-index db` alone: the help text, once
        message = exc.format_message()  # built by the error itself: rich help is printed then, and comes back empty
        if message.strip():
            typer.echo(message)
        code = 0
    except ClickException as exc:
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "eagle-index"
        typer.echo(f"error: {_given_value(exc, argv)}{exc.format_message()} (see `{where} --help`)", err=True)
        code = exc.exit_code or 2
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        code = 1
    except EagleIndexError as exc:
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        code = exc.exit_code
    except OSError as exc:  # a path the user gave: unreadable, a folder instead of a file, disk full
        name = exc.filename if exc.filename is not None else ""
        typer.echo(f"error: {name}{': ' if name else ''}{exc.strerror or exc}", err=True)
        code = 2
    except KeyboardInterrupt:
        typer.echo("error: interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - a bug: one line for the user, the traceback on request
        from eagle_index.config import debug_tracebacks

        if is_interrupt(exc):  # Ctrl-C that DuckDB caught first: it failed its query
            typer.echo("error: interrupted", err=True)
            sys.exit(130)
        if debug_tracebacks():
            raise
        typer.echo(f"error: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                   "rerun with EAGLE_INDEX_DEBUG=1 for the traceback and report it", err=True)
        code = 70
    sys.exit(code if isinstance(code, int) else 0)
