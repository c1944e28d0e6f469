"""Annotation commands: `eagle-index annotations import|export|list|delete` (QuPath GeoJSON in and out).

Through a running server or daemon when one holds the catalog (its API), else on the catalog itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, output_file, settings_from

SlideOpt = Annotated[str, typer.Option("--slide", help="Slide name (or slide id).")]


def _service(data_dir: Path | None):
    from eagle_index.client import service_for

    return service_for(settings_from(data_dir), create=False)


def _line(a: dict) -> str:
    x0, y0, x1, y1 = a["bbox_px"]
    what = " ".join(p for p in (f"[{a['class_name']}]" if a["class_name"] else "", repr(a["name"]) if a["name"] else "") if p)
    return (f"{a['id']:>6}  {a['slide']}  {a['shape']:<12} {what or '-'}  "
            f"px ({x0:.0f}, {y0:.0f})-({x1:.0f}, {y1:.0f})  {a['source'] or ''}").rstrip()


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Regions drawn on slides: QuPath GeoJSON in and out, list, delete.", no_args_is_help=True)
    app.add_typer(group, name="annotations")

    @group.command("import")
    def import_(
        file: Annotated[Path, typer.Argument(help="QuPath GeoJSON: a FeatureCollection or the feature list QuPath exports "
                                                  "(coordinates in the slide's level-0 pixels).")],
        slide: SlideOpt,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import a QuPath GeoJSON file onto a slide: every feature, or none when one is malformed."""
        with _service(data_dir) as service:
            out = service.annotations.import_geojson(slide, path=file)
        if as_json:
            typer.echo(json.dumps(out, indent=1))
            return
        typer.echo(f"imported {out['imported']} annotation{'s' if out['imported'] != 1 else ''} onto slide {out['slide']}")
        skipped = out.get("skipped") or []
        if skipped:
            others = sorted({e["slide"] for e in skipped})
            typer.echo(f"skipped {len(skipped)} feature{'s' if len(skipped) != 1 else ''} of other slides "
                       f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): import the file onto each of them")
        for a in out["annotations"]:
            typer.echo(_line(a))

    @group.command("export")
    def export(
        slide: SlideOpt,
        out: Annotated[Optional[Path], typer.Option("--out", help="Write the GeoJSON to this file (default: stdout).")] = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """A slide's annotations as a QuPath FeatureCollection (level-0 pixels), on stdout or into --out."""
        from eagle_index.formats.geojson import dumps

        if out is not None:
            output_file(out, "GeoJSON")
        with _service(data_dir) as service:
            collection = service.annotations.export_geojson(slide)
        text = dumps(collection)
        if out is None:
            typer.echo(text, nl=False)
            return
        from eagle_index.atomic import atomic_write_text

        atomic_write_text(out, text, mkdir=False)
        typer.echo(f"wrote {len(collection['features'])} annotations to {out}", err=True)

    @group.command("list")
    def list_(
        slide: Annotated[Optional[str], typer.Option("--slide", help="Only this slide's annotations (name or id).")] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Annotations (id, slide, shape, class, name, bounding box in level-0 px, source)."""
        with _service(data_dir) as service:
            rows = service.annotations.list(slide)
        if as_json:
            typer.echo(json.dumps(rows, indent=1))
            return
        if not rows:
            typer.echo("no annotations" + (f" on slide {slide}" if slide else ""))
        for a in rows:
            typer.echo(_line(a))

    @group.command("delete")
    def delete(
        ids: Annotated[list[str], typer.Argument(metavar="ID", help="Annotation ids (see `annotations list`).")],
        data_dir: DataDirOpt = None,
    ) -> None:
        """Delete annotations by id: all of them, or none when one id is unknown."""
        from eagle_index.errors import InputError

        for value in ids:
            if not value.strip().isdigit():
                raise InputError(f"annotation id must be a positive integer, got {value!r}")
        with _service(data_dir) as service:
            deleted = service.annotations.delete([int(v) for v in ids])
        typer.echo(f"deleted {len(deleted)} annotation{'s' if len(deleted) != 1 else ''}: {', '.join(map(str, deleted))}")
