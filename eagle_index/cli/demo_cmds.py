"""`eagle-index demo`: what `make demo` runs (and, by default, the web UI on the demo archive)."""

from __future__ import annotations

from typing import Annotated

import typer

from eagle_index.cli.options import DataDirOpt, settings_from


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        data_dir: DataDirOpt = None,
        patients: Annotated[int, typer.Option("--patients", min=3, help="How many demo patients to generate.")] = 12,
        serve: Annotated[bool, typer.Option("--serve/--no-serve", help="Then run the server (web UI + API) on the demo archive until Ctrl-C.")] = True,
        port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port of the web UI (loopback only; `make demo PORT=8765`).")] = 8000,
    ) -> None:
        """Generate demo slides, embed them with the tiny models, import labels, search, then serve the web UI."""
        from eagle_index.cli.options import setup_logging
        from eagle_index.demo import INBOX, run_demo

        settings = settings_from(data_dir, models="tiny", device="cpu")
        if serve:
            from eagle_index.server import check_port

            check_port("127.0.0.1", port)  # before minutes of embedding, not after
        run_demo(settings, patients, echo=typer.echo)
        if not serve:
            typer.echo(f"\nnext: eagle-index search --patient DEMO-002 --data-dir {settings.data_dir}")
            return
        from eagle_index.server import OwnerOptions, run_owner

        setup_logging(settings, "WARNING")
        typer.echo(f"\nweb UI: http://127.0.0.1:{port}/search?patient=DEMO-001  (Ctrl-C stops the server)")
        raise typer.Exit(run_owner(settings, OwnerOptions(role="serve", host="127.0.0.1", port=port, token=settings.token,
                                                          watch=[settings.data_dir / INBOX])))
