"""Region search: `eagle-index search-tiles` (tissue that looks like a tile, a region or an image)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, QueryModelsOpt, WeightsDirOpt, settings_from


def _parse_box(text: str) -> list[float]:
    from eagle_index.errors import InputError

    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise InputError(f"--box {text!r}: expected X_UM,Y_UM,W_UM,H_UM (four numbers in µm)")
    return values


def register(app: typer.Typer) -> None:
    @app.command("search-tiles")
    def search_tiles(
        patient: Annotated[Optional[str], typer.Option("--patient", help="Query by a patient's selected tile (with --tile RANK).")] = None,
        tile: Annotated[Optional[int], typer.Option("--tile", min=1, help="Rank of the patient's selected tile (1 = highest attention).")] = None,
        slide: Annotated[Optional[str], typer.Option("--slide", help="Slide name (with --x-um/--y-um, or --box).")] = None,
        x_um: Annotated[Optional[float], typer.Option("--x-um", help="With --slide: a point (µm) on the tile to query.")] = None,
        y_um: Annotated[Optional[float], typer.Option("--y-um", help="With --slide: a point (µm) on the tile to query.")] = None,
        box: Annotated[Optional[str], typer.Option("--box", help="With --slide: a region X_UM,Y_UM,W_UM,H_UM, read from the slide file and encoded.")] = None,
        annotation: Annotated[Optional[str], typer.Option("--annotation", help="With --slide: an annotation of the slide (name or id); its tissue tiles, read from the slide file, averaged.")] = None,
        image: Annotated[Optional[Path], typer.Option("--image", help="Query by an image file (PNG, JPEG, TIFF) of a region.")] = None,
        mpp: Annotated[Optional[float], typer.Option("--mpp", help="With --image: its µm/px (required unless the file records a resolution).")] = None,
        k: Annotated[int, typer.Option("-k", min=1, max=1000, help="Tiles to return (in all).")] = 20,
        per_patient: Annotated[int, typer.Option("--per-patient", min=1, help="At most this many tiles per patient.")] = 3,
        label: Annotated[Optional[list[str]], typer.Option("--label", help="Only patients with label NAME=VALUE (repeatable; VALUE * = has the label).")] = None,
        cohort: Annotated[Optional[list[str]], typer.Option("--cohort", help="Only members of this saved cohort (repeatable).")] = None,
        min_score: Annotated[Optional[float], typer.Option("--min-score", help="Only tiles with cosine similarity at least this.")] = None,
        exclude_site: Annotated[bool, typer.Option("--exclude-site", help="Leave out patients of the query patient's site.")] = False,
        site_label: Annotated[str, typer.Option("--site-label", help="Label that holds the site.")] = "site",
        exclude_same: Annotated[Optional[list[str]], typer.Option("--exclude-same", help="Leave out patients sharing the query patient's value of this label (repeatable).")] = None,
        exclude_patient: Annotated[Optional[list[str]], typer.Option("--exclude-patient", help="Never return this patient (repeatable).")] = None,
        in_annotation: Annotated[Optional[list[str]], typer.Option("--in-annotation", help="Only patients with a selected tile inside an annotation of this class (repeatable: any of them).")] = None,
        include_same_patient: Annotated[bool, typer.Option("--include-same-patient", help="Also return tiles of the query's own patient.")] = False,
        geojson: Annotated[Optional[Path], typer.Option("--geojson", help="Also write the hits as a QuPath GeoJSON FeatureCollection (each tile a rectangle in its slide's level-0 pixels).")] = None,
        models: QueryModelsOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Tiles across the archive that look like a stored tile, a region of a stored slide, or an image.

        Results are grouped by patient (best tile first, at most --per-patient tiles each).
        Query: --patient ID --tile RANK | --slide NAME --x-um X --y-um Y | --slide NAME --box X,Y,W,H |
        --slide NAME --annotation NAME_OR_ID | --image FILE [--mpp M].
        """
        from eagle_index.client import service_for
        from eagle_index.errors import InputError
        from eagle_index.search import SearchFilters

        query: dict = {}
        modes = []
        if patient is not None or tile is not None:
            if patient is None or tile is None:
                raise InputError("--patient and --tile go together (--patient ID --tile RANK)")
            modes.append("patient")
            query = {"patient": patient, "tile": tile}
        if annotation is not None and slide is None:
            raise InputError("--annotation needs --slide NAME")
        if slide is not None and annotation is not None:
            if box is not None or x_um is not None or y_um is not None:
                raise InputError("give one of --annotation, --box or --x-um/--y-um with --slide")
            modes.append("annotation")
            query = {"slide": slide, "annotation": annotation}
        elif slide is not None:
            if box is not None:
                if x_um is not None or y_um is not None:
                    raise InputError("give --box or --x-um/--y-um with --slide, not both")
                modes.append("box")
                query = {"slide": slide, "box": _parse_box(box)}
            elif x_um is not None and y_um is not None:
                modes.append("point")
                query = {"slide": slide, "x_um": x_um, "y_um": y_um}
            else:
                raise InputError("--slide needs --x-um X --y-um Y, --box X_UM,Y_UM,W_UM,H_UM, or --annotation NAME_OR_ID")
        elif box is not None or x_um is not None or y_um is not None:
            raise InputError("--x-um/--y-um and --box need --slide NAME")
        if image is not None:
            modes.append("image")
        elif mpp is not None:
            raise InputError("--mpp only applies to --image")
        if len(modes) != 1:
            raise InputError("give exactly one query: --patient ID --tile RANK, --slide NAME --x-um X --y-um Y, "
                             "--slide NAME --box X,Y,W,H, --slide NAME --annotation NAME_OR_ID, or --image FILE")
        filters = SearchFilters.build(labels=label or (), cohorts=cohort or (), min_score=min_score,
                                      exclude_patients=exclude_patient or (), exclude_same_site=exclude_site,
                                      site_label=site_label, exclude_same=exclude_same or (), in_annotation=in_annotation or ())
        if geojson is not None:
            from eagle_index.cli.options import output_file

            output_file(geojson, "GeoJSON")
        encodes = modes[0] in ("image", "box", "point", "annotation")
        extra = {"models": models} if encodes and models is not None else {}
        settings = settings_from(data_dir, weights_dir if encodes else None, **extra)
        with service_for(settings, create=False) as service:
            result = service.regions.search(query, k, per_patient, filters, include_same_patient,
                                            image=image, mpp=mpp)
        data = result.as_dict()
        if geojson is not None:
            from eagle_index.atomic import atomic_write_text
            from eagle_index.formats.geojson import dumps, hits_collection

            collection = hits_collection(data)
            atomic_write_text(geojson, dumps(collection), mkdir=False)
            typer.echo(f"wrote {len(collection['features'])} hit tiles as GeoJSON to {geojson}", err=True)
        if as_json:
            typer.echo(json.dumps(data, indent=1))
            return
        for note in data["notes"]:
            typer.echo(f"note: {note}")
        if not data["patients"]:
            typer.echo("no matching tiles")
        for rank, hit in enumerate(data["patients"], start=1):
            labels = ", ".join(f"{n}={v}" for n, v in sorted(hit.get("labels", {}).items()))
            typer.echo(f"{rank:>3}  {hit['score']:.4f}  {hit['patient']}  {labels}")
            for t in hit["tiles"]:
                chosen = f"  selected #{t['patient_rank']}" if t.get("patient_rank") else ""
                typer.echo(f"       {t['score']:.4f}  {t['slide']} ({t['x_um']:.0f}, {t['y_um']:.0f}) µm{chosen}")
