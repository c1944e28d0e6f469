"""Slide QC commands: `tiles` (what EAGLE would see of a slide) and `thumbnail`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, ReadWorkersOpt, output_file, settings_from
from eagle_index.errors import InputError

SlideArg = Annotated[Path, typer.Argument(metavar="SLIDE", help="Slide file (any OpenSlide format, or PNG/JPEG with --mpp).")]
MppOpt = Annotated[
    Optional[float],
    typer.Option("--mpp", help="Override the slide's µm per level-0 pixel (wins over all metadata)."),
]


def _levels(slide) -> list[dict]:
    return [
        {"level": i, "width": w, "height": h, "downsample": d,
         "mpp": (slide.mpp * d if slide.mpp is not None else None)}
        for i, ((w, h), d) in enumerate(zip(slide.level_dimensions, slide.level_downsamples))
    ]


def _report(slide, grid, candidates, complete: int, out: Path | None) -> dict:
    return {
        "slide": str(slide.path),
        "format": slide.format,
        "dimensions": list(slide.dimensions),
        "level_count": slide.level_count,
        "levels": _levels(slide),
        "mpp": slide.mpp,
        "mpp_source": slide.mpp_source,
        "level": grid.level,
        "level_mpp": slide.level_mpp(grid.level),
        "level_box_px": grid.level_box_px,
        "tile_um": grid.tile_um,
        "tile_px": grid.tile_px,
        "mask_level": candidates.mask_level,
        "n_complete": complete,
        "n_candidates": len(candidates),
        "n_tiles": len(grid),
        "order": "row-major (y outer, x inner)",
        "tiles": [
            {"x_um": float(x), "y_um": float(y), "x_px": int(px), "y_px": int(py)}
            for x, y, px, py in zip(grid.x_um, grid.y_um, grid.x_px, grid.y_px)
        ],
        "out": str(out) if out else None,
    }


def _print_human(data: dict) -> None:
    w, h = data["dimensions"]
    typer.echo(f"slide       {data['slide']} ({data['format']})")
    typer.echo(f"dimensions  {w} x {h} px, {data['level_count']} levels")
    for lv in data["levels"]:
        typer.echo(f"  level {lv['level']}  {lv['width']} x {lv['height']}  downsample {lv['downsample']:.4g}  "
                   f"{lv['mpp']:.4g} µm/px")
    typer.echo(f"mpp         {data['mpp']:.6g} µm/px (from {data['mpp_source']})")
    typer.echo(f"read level  {data['level']} ({data['level_mpp']:.4g} µm/px): {data['level_box_px']} px boxes "
               f"-> {data['tile_px']} px tiles of {data['tile_um']:g} µm")
    mask = f"mask from level {data['mask_level']}" if data["mask_level"] is not None else "no mask"
    typer.echo(f"tiles       {data['n_tiles']} tissue tiles ({data['n_candidates']} candidates after {mask}, "
               f"{data['n_complete']} complete tiles)")
    if data["out"]:
        typer.echo(f"written     {data['out']}")


def _image_format(path: Path) -> str:
    """The image format of an output file name (PNG for .png, JPEG for .jpg/.jpeg, ...)."""
    from PIL import Image

    from eagle_index.errors import InputError

    suffix = path.suffix.lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        raise InputError(f"{path}: unknown image extension {suffix or '(none)'!r}; use .png, .jpg, .tif or .webp")
    return formats[suffix]


def register(app: typer.Typer) -> None:
    @app.command("tiles")
    def tiles(
        slide_path: SlideArg,
        mpp: MppOpt = None,
        as_json: JsonOpt = False,
        out: Annotated[Optional[Path], typer.Option("--out", help="Write coordinates to this HDF5 file.")] = None,
        images: Annotated[bool, typer.Option("--images", help="With --out: also write the tile pixels.")] = False,
        read_workers: ReadWorkersOpt = None,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Report a slide's levels, MPP (and its source), the level read and its EAGLE tissue tiles."""
        from eagle_index.slides import candidate_grid, full_grid, open_slide, tissue_grid
        from eagle_index.slides.export import write_tiles_h5

        if images and out is None:
            raise InputError("--images needs --out FILE.h5")
        if out is not None:
            output_file(out, "tile file")
        settings = settings_from(data_dir, read_workers=read_workers).tiling
        with open_slide(slide_path, mpp_override=mpp, settings=settings) as slide:
            complete = len(full_grid(slide, settings))
            candidates = candidate_grid(slide, settings)
            if out is not None:
                grid = write_tiles_h5(out, slide, settings, candidates=candidates, images=images)
            elif settings.read_workers != 0:  # the Canny pass in reader processes (same tiles)
                from eagle_index.slides.pool import pooled_tissue_grid

                grid = pooled_tissue_grid(slide_path, mpp, settings, candidates)
            else:
                grid = tissue_grid(slide, settings, candidates=candidates)
            data = _report(slide, grid, candidates, complete, out)
        if as_json:
            typer.echo(json.dumps(data))
        else:
            _print_human(data)

    @app.command("thumbnail")
    def thumbnail(
        slide_path: SlideArg,
        out: Annotated[Path, typer.Option("--out", help="Image to write; the format follows the extension (.png, .jpg, .tif, .webp…).")],
        tiles: Annotated[bool, typer.Option("--tiles", help="Draw the tissue tiles (reads them: slower).")] = False,
        mpp: MppOpt = None,
        max_size: Annotated[int, typer.Option("--max-size", min=16, help="Long side in pixels.")] = 1024,
        data_dir: DataDirOpt = None,
    ) -> None:
        """Write a thumbnail with the tissue mask outlined (green) and optionally the tiles (blue)."""
        from eagle_index.atomic import atomic_path
        from eagle_index.slides import make_thumbnail, open_slide, tissue_grid

        image_format = _image_format(output_file(out, "thumbnail"))
        settings = settings_from(data_dir).tiling
        # Without --tiles a slide with a missing or suspicious MPP still gets its thumbnail: that
        # is exactly when one wants to look at it.
        with open_slide(slide_path, mpp_override=mpp, settings=settings, require_mpp=tiles) as slide:
            grid = tissue_grid(slide, settings) if tiles else None
            image = make_thumbnail(slide, grid, max_size=max_size)
            note = f"; MPP not usable: {slide.mpp_problem}" if slide.mpp_problem else ""
        try:
            if image_format == "JPEG" and image.mode not in ("RGB", "L"):
                image = image.convert("RGB")
            with atomic_path(out) as tmp:
                image.save(tmp, format=image_format)
        except OSError as exc:
            raise InputError(f"{out}: cannot write thumbnail: {' '.join(str(exc).split())}") from exc
        count = f", {len(grid)} tiles" if grid is not None else ""
        typer.echo(f"wrote {out} ({image.width} x {image.height}{count}){note}")
