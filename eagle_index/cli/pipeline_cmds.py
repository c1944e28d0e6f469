"""Pipeline commands: `embed` (no catalog) and `ingest` (catalog + index)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.progress import slide_progress
from eagle_index.cli.options import (DataDirOpt, DeviceOpt, JsonOpt, ModelsOpt, PrecisionOpt, ReadWorkersOpt, WeightsDirOpt,
                                     output_file, settings_from)
from eagle_index.errors import InputError, is_interrupt

MppOpt = Annotated[Optional[float], typer.Option("--mpp", help="Override the slides' µm per pixel (level 0).")]


def register(app: typer.Typer) -> None:
    @app.command("embed")
    def embed(
        slides: Annotated[list[Path], typer.Argument(help="Slide files (or folders of slides).")],
        out: Annotated[Path, typer.Option("--out", help="EAGLE-layout .h5: one dataset per patient id (un-normalized mean class token).")],
        patient: Annotated[Optional[str], typer.Option("--patient", help="All slides belong to this patient (default: TCGA id or file stem).")] = None,
        artifacts: Annotated[Optional[Path], typer.Option("--artifacts", help="Keep one HDF5 per slide here (STAMP v2 feats/coords + attention + candidates).")] = None,
        device: DeviceOpt = None,
        read_workers: ReadWorkersOpt = None,
        precision: PrecisionOpt = None,
        models: ModelsOpt = "default",
        mpp: MppOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Compute EAGLE vectors of slides without touching the catalog."""
        from eagle_index.formats.embeddings import write_eagle_file
        from eagle_index.identifiers import check_identifier
        from eagle_index.service import EagleService

        patient = None if patient is None else check_identifier("--patient", patient)  # before any slide is read
        output_file(out, "EAGLE output file")
        settings = settings_from(data_dir, weights_dir, models=models, device=device, read_workers=read_workers,
                                 precision=precision)
        service = EagleService(settings)
        with slide_progress(not as_json) as tick:
            patients = service.embed(slides, patient, artifacts, mpp, progress=tick)
        provenance = service.models.provenance("eagle")
        write_eagle_file(out, list(patients), [v.eagle for v in patients.values()], extractor="virchow2-class",
                         attrs={"eagle_index_provenance": json.dumps(provenance, sort_keys=True), "signature": provenance["signature"]})
        summary = {"out": str(out), "signature": provenance["signature"],
                   "patients": {pid: {"tiles": [t for t in v.selection], "dim": int(v.eagle.shape[0])} for pid, v in patients.items()}}
        if as_json:
            typer.echo(json.dumps(summary, indent=1))
        else:
            typer.echo(f"wrote {out}: {len(patients)} patient(s), signature {provenance['signature']}")

    @app.command("ingest")
    def ingest(
        paths: Annotated[list[Path], typer.Argument(help="Slide files or folders.")],
        patient: Annotated[Optional[str], typer.Option("--patient", help="All slides belong to this patient.")] = None,
        slide_table: Annotated[Optional[Path], typer.Option("--slide-table", help="PATIENT,FILENAME[,MPP] table.")] = None,
        device: DeviceOpt = None,
        read_workers: ReadWorkersOpt = None,
        precision: PrecisionOpt = None,
        models: ModelsOpt = "default",
        mpp: MppOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Embed and store slides; already-ingested files are skipped, touched patients re-aggregated."""
        from eagle_index.identifiers import check_identifier
        from eagle_index.service import EagleService

        patient = None if patient is None else check_identifier("--patient", patient)  # before any slide is read
        from eagle_index.client import owner_client

        settings = settings_from(data_dir, weights_dir, models=models, device=device, read_workers=read_workers,
                                 precision=precision)
        client = owner_client(settings)
        if client is not None:  # the running daemon/server embeds them: queue, don't wait
            if slide_table is not None or mpp is not None:
                raise InputError(f"{client.owner.describe()} holds the catalog: give --slide-table/--mpp to it (daemon/serve options)")
            queued = client.enqueue(paths, patient)
            if not queued["jobs"]:
                raise InputError(f"no slides found in {', '.join(str(p) for p in paths)}")
            typer.echo(json.dumps(queued, indent=1) if as_json else
                       f"queued {len(queued['jobs'])} slide(s) with {client.owner.describe()}; follow with `eagle-index status`")
            return
        try:
            with EagleService(settings) as service, slide_progress(not as_json) as tick:
                report = service.ingest(paths, patient, slide_table, mpp, progress=tick)
        except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C: say so (typer would exit 130 in silence), like backfill
            if not is_interrupt(exc):
                raise
            typer.echo("interrupted: the slides stored so far are kept; run the same command again to resume "
                       "(stored slides are skipped)", err=True)
            raise typer.Exit(130) from None
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=1))
        else:
            for item in report.ingested:
                origin = " (patient id from the file name)" if item.patient_from == "file name" else ""
                typer.echo(f"ingested {item.file} -> {item.patient}{origin} ({item.tiles} tiles, {item.seconds} s)")
            for skipped in report.skipped:
                typer.echo(f"skipped {skipped.file}: {skipped.reason}")
            for failed in report.failed:  # the error names the file already (once)
                typer.echo(f"failed: {failed.error if failed.file in failed.error else failed.file + ': ' + failed.error}", err=True)
            if any(item.patient_from == "file name" for item in report.ingested):
                typer.echo("note: patient ids were taken from file names (set them with --patient or --slide-table)")
            typer.echo(f"{len(report.ingested)} ingested, {len(report.skipped)} skipped (already stored), "
                       f"{len(report.failed)} failed")
        if report.failed:
            raise typer.Exit(1)
