"""Catalog commands: db, imports, labels, search, stats, reindex."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, WeightsDirOpt, settings_from

ModelsOpt = Annotated[str, typer.Option("--models", help="Model preset: default (official weights) or tiny (random, for tests).")]


def _service(data_dir: Path | None, weights_dir: Path | None = None, create: bool = True, **more):
    from eagle_index.service import EagleService

    return EagleService(settings_from(data_dir, weights_dir, **more), create=create)


def _print_report(report, as_json: bool) -> None:
    data = report.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    if data["already_imported"]:
        typer.echo(f"{data['source']}: already imported, nothing changed")
        return
    vectors = ", ".join(f"{n} {k}" for k, n in data["vectors"].items()) or "no vectors"
    typer.echo(f"imported {data['source']}: {data['patients']} patients, {data['slides']} slides, {vectors}, {data['labels']} labels")
    for note in data["notes"]:
        typer.echo(f"note: {note}")


def register(app: typer.Typer) -> None:
    db = typer.Typer(help="Catalog schema (Alembic revisions).", no_args_is_help=True)
    labels = typer.Typer(help="Clinical labels of patients.", no_args_is_help=True)
    app.add_typer(db, name="db")
    app.add_typer(labels, name="labels")

    @db.command("upgrade")
    def db_upgrade(data_dir: DataDirOpt = None, revision: str = typer.Option("head", help="Target revision.")) -> None:
        """Migrate the catalog in place to the newest schema (creates it if missing)."""
        from eagle_index.store import schema

        settings = settings_from(data_dir)
        settings.catalog_path.parent.mkdir(parents=True, exist_ok=True)
        engine = schema.make_engine(settings.catalog_url)
        before = schema.current_revision(engine)
        schema.upgrade(engine, revision)
        after = schema.current_revision(engine)
        engine.dispose()
        typer.echo(f"catalog {settings.catalog_path}: {before or 'empty'} -> {after}")

    @db.command("current")
    def db_current(data_dir: DataDirOpt = None) -> None:
        """Show the catalog's schema revision and the newest one."""
        from eagle_index.store import schema

        settings = settings_from(data_dir)
        engine = schema.make_engine(settings.catalog_url)
        typer.echo(f"current: {schema.current_revision(engine) or 'empty'}  head: {schema.head_revision()}")
        engine.dispose()

    @app.command("import-embeddings")
    def import_embeddings(
        files: Annotated[list[Path], typer.Argument(help="EAGLE output .h5 files, STAMP v2 slide/patient embedding .h5 files, or folders of them.")],
        kind: Annotated[Optional[str], typer.Option("--kind", help="Vector kind (default: from the file, else eagle).")] = None,
        signature: Annotated[Optional[str], typer.Option("--signature", help="Signature to store (default: derived from the file's provenance).")] = None,
        slide_table: Annotated[Optional[Path], typer.Option("--slide-table", help="PATIENT,FILENAME table for slide-level files.")] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import patient (or slide) embeddings you already have."""
        with _service(data_dir) as service:
            _print_report(service.import_embeddings(files, kind, signature, slide_table), as_json)

    @app.command("import-features")
    def import_features(
        slide_table: Annotated[Path, typer.Option("--slide-table", help="CSV with PATIENT,FILENAME columns.")],
        ctranspath: Annotated[Path, typer.Option("--ctranspath", help="Folder of CTransPath tile-feature .h5 files (STAMP v1 or v2).")],
        virchow2: Annotated[Optional[Path], typer.Option("--virchow2", help="Folder of Virchow2 class-token tile features of the same tiles.")] = None,
        models: ModelsOpt = "default",
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import STAMP tile features grouped into patients; stores mean-ctranspath (+ CHIEF/EAGLE with weights)."""
        with _service(data_dir, weights_dir, models=models) as service:
            _print_report(service.import_features(slide_table, ctranspath, virchow2), as_json)

    @labels.command("import")
    def labels_import(
        table: Annotated[Path, typer.Argument(help="Clinical table (.csv or .xlsx) with a PATIENT column and one column per label.")],
        create_missing: Annotated[bool, typer.Option("--create-missing", help="Add patients the catalog does not know yet.")] = False,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import labels; patients not in the catalog are reported (and skipped unless --create-missing)."""
        with _service(data_dir) as service:
            _print_report(service.import_labels(table, create_missing), as_json)

    @app.command("search")
    def search(
        patient: Annotated[str, typer.Option("--patient", help="Query patient id.")],
        k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of neighbours.")] = 10,
        kind: Annotated[str, typer.Option("--kind", help="Vector kind: eagle, chief, mean-ctranspath…")] = "eagle",
        signature: Annotated[Optional[str], typer.Option("--signature", help="Vector signature (default: the patient's largest set).")] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The k most similar other patients (cosine similarity)."""
        with _service(data_dir, create=False) as service:
            hits = service.search_patient(patient, k, kind, signature)
        if as_json:
            typer.echo(json.dumps(hits, indent=1))
            return
        if not hits:
            typer.echo("no other patients with this vector kind")
        for hit in hits:
            label_text = ", ".join(f"{n}={v}" for n, v in sorted(hit["labels"].items()))
            typer.echo(f"{hit['rank']:>3}  {hit['score']:.4f}  {hit['patient']}  {label_text}")

    @app.command("stats")
    def stats(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Counts of patients, slides, labels and vectors by kind."""
        with _service(data_dir) as service:
            data = service.stats()
        if as_json:
            typer.echo(json.dumps(data, indent=1))
            return
        typer.echo(f"patients {data['patients']}  slides {data['slides']}  labels {data['labels']}")
        for s in data["vector_sets"]:
            typer.echo(f"vectors {s['kind']:<16} {s['count']:>8}  dim {s['dim']}  signature {s['signature']}")

    @app.command("reindex")
    def reindex(force: Annotated[bool, typer.Option("--force", help="Rebuild even when current.")] = False,
                data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Check every FAISS index against the catalog and rebuild stale ones."""
        with _service(data_dir) as service:
            out = service.reindex(force)
        typer.echo(json.dumps(out, indent=1) if as_json else "\n".join(f"{o['kind']}: {o['count']} vectors ({o['index_type']})" for o in out) or "no vectors")
