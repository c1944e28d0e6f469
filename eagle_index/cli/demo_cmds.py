"""`eagle-index demo`: what `make demo` runs."""

from __future__ import annotations

from typing import Annotated

import typer

from eagle_index.cli.options import DataDirOpt, settings_from


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        data_dir: DataDirOpt = None,
        patients: Annotated[int, typer.Option("--patients", min=3, help="How many demo patients to generate.")] = 12,
    ) -> None:
        """Generate demo slides, embed them with the tiny models, import labels and search."""
        from eagle_index.demo import run_demo

        settings = settings_from(data_dir, models="tiny", device="cpu")
        run_demo(settings, patients, echo=typer.echo)
        typer.echo(f"\nnext: eagle-index search --patient DEMO-002 --data-dir {settings.data_dir}")
