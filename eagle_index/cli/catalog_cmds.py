"""Catalog commands: db, imports, labels, search, stats, reindex."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, ModelsOpt, JsonOpt, QueryModelsOpt, WeightsDirOpt, settings_from, KindOpt
from eagle_index.limits import MAX_K


def _service(data_dir: Path | None, weights_dir: Path | None = None, create: bool = True, read_only: bool = False, **more):
    """The local service, or the running daemon/server's API when one holds the catalog
    (`read_only`: a command that only reads opens the catalog as a snapshot, without SQLAlchemy)."""
    from eagle_index.client import service_for

    return service_for(settings_from(data_dir, weights_dir, **more), create=create, read_only=read_only)


def _print_report(report, as_json: bool) -> None:
    data = report.as_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    if data["already_imported"]:
        typer.echo(f"{data['source']}: already imported, nothing changed")
        return
    vectors = ", ".join(f"{n} {k}" for k, n in data["vectors"].items()) or "no vectors"
    skipped = len(data.get("unknown_patients") or ())
    skipped_text = f"; {skipped} row(s) skipped (patients not in the catalog)" if skipped else ""
    typer.echo(f"imported {data['source']}: {data['patients']} patients, {data['slides']} slides, {vectors}, {data['labels']} labels"
               f"{skipped_text}")
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
        from eagle_index.service import EagleService

        settings = settings_from(data_dir)
        before, after = EagleService(settings).upgrade_schema(revision)
        typer.echo(f"catalog {settings.catalog_path}: {before or 'empty'} -> {after}")

    @db.command("current")
    def db_current(data_dir: DataDirOpt = None) -> None:
        """Show the catalog's schema revision and the newest one (asked of the server while one holds the catalog)."""
        from eagle_index.client import owner_client
        from eagle_index.service import EagleService

        settings = settings_from(data_dir)
        client = owner_client(settings)
        if client is not None:
            current, head = client.schema_revision()
            typer.echo(f"current: {current or 'empty'}  head: {head}")
            return
        if not settings.catalog_path.exists():
            from eagle_index.errors import NotFoundError

            raise NotFoundError(f"no catalog at {settings.data_dir} (create one with `eagle-index db upgrade` or by importing)")
        current, head = EagleService(settings).schema_revision()
        typer.echo(f"current: {current or 'empty'}  head: {head}")

    @app.command("import-embeddings")
    def import_embeddings(
        files: Annotated[list[Path], typer.Argument(help="EAGLE output .h5 files, STAMP v2 slide/patient embedding .h5 files, or folders of them.")],
        kind: Annotated[Optional[str], typer.Option("--kind", help="Vector kind: eagle, chief, mean-ctranspath, one the archive holds, or one the file's "
                                                       "metadata names (default: from the file, else eagle).")] = None,
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
        from eagle_index.cli.progress import step_progress

        with _service(data_dir, weights_dir, models=models) as service, step_progress(not as_json, "reading", "files") as tick:
            report = service.import_features(slide_table, ctranspath, virchow2, progress=tick)
        _print_report(report, as_json)

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
        patient: Annotated[Optional[str], typer.Option("--patient", help="Query patient id (with --slide: the patient the slides belong to).")] = None,
        slide: Annotated[Optional[list[Path]], typer.Option("--slide", help="Query by slide file(s), embedded on the fly (not stored unless --store). Repeatable.")] = None,
        vector: Annotated[Optional[Path], typer.Option("--vector", help="Query by a vector: .npy (D,) or an embedding .h5 holding one vector.")] = None,
        k: Annotated[int, typer.Option("-k", min=1, max=MAX_K, help="Number of neighbours.")] = 10,
        kind: KindOpt = None,
        signature: Annotated[Optional[str], typer.Option("--signature", help="Vector signature (default: the patient's largest set).")] = None,
        label: Annotated[Optional[list[str]], typer.Option("--label", help="Only hits with label NAME=VALUE (repeatable: OR within a name, AND across names; VALUE * = has the label).")] = None,
        cohort: Annotated[Optional[list[str]], typer.Option("--cohort", help="Only members of this saved cohort (repeatable).")] = None,
        min_score: Annotated[Optional[float], typer.Option("--min-score", help="Only hits with cosine similarity at least this.")] = None,
        exclude_site: Annotated[bool, typer.Option("--exclude-site", help="Leave out hits from the query's site (label --site-label, else the TCGA site code).")] = False,
        site_label: Annotated[str, typer.Option("--site-label", help="Label that holds the site.")] = "site",
        exclude_same: Annotated[Optional[list[str]], typer.Option("--exclude-same", help="Leave out hits sharing the query's value of this label (repeatable).")] = None,
        exclude_patient: Annotated[Optional[list[str]], typer.Option("--exclude-patient", help="Never return this patient (repeatable).")] = None,
        in_annotation: Annotated[Optional[list[str]], typer.Option("--in-annotation", help="Only hits with a selected tile inside an annotation of this class (repeatable: any of them).")] = None,
        explain: Annotated[bool, typer.Option("--explain", help="Add the most similar tile pairs (query tile <-> hit tile) when slide artifacts exist.")] = False,
        pairs: Annotated[int, typer.Option("--pairs", min=1, help="Tile pairs per hit with --explain.")] = 5,
        vote: Annotated[Optional[str], typer.Option("--vote", help="Predict this label from the neighbours (majority and score-weighted); --json then prints {hits, vote}.")] = None,
        store: Annotated[bool, typer.Option("--store", help="With --slide: ingest the slides into the catalog, then search.")] = False,
        mpp: Annotated[Optional[float], typer.Option("--mpp", help="With --slide: µm/px when the slide records none.")] = None,
        models: QueryModelsOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The k most similar other patients (cosine similarity), with filters, explanations and a label vote."""
        from eagle_index.errors import InputError
        from eagle_index.search import SearchFilters, read_query_vector

        if sum(x is not None and x != [] for x in (slide, vector)) + (patient is not None and not slide) != 1:
            raise InputError("give exactly one query: --patient ID, --slide FILE (repeatable) or --vector FILE")
        if store and not slide:
            raise InputError("--store only applies to --slide queries")
        filters = SearchFilters.build(labels=label or (), cohorts=cohort or (), min_score=min_score,
                                      exclude_patients=exclude_patient or (), exclude_same_site=exclude_site,
                                      site_label=site_label, exclude_same=exclude_same or (), in_annotation=in_annotation or ())
        query_vector = read_query_vector(vector) if vector is not None else None
        extra = {"models": models} if slide and models is not None else {}
        with _service(data_dir, weights_dir if slide else None, create=False, read_only=not store, **extra) as service:
            try:
                result = service.search(patient=patient, vector=query_vector, slides=slide or None, k=k, kind=kind,
                                        signature=signature, filters=filters, explain=explain, vote=vote, pairs=pairs,
                                        store=store, mpp=mpp)
            except InputError as exc:
                if vector is None or str(vector) in str(exc):
                    raise
                raise type(exc)(f"{vector}: {exc}") from None
        hits = [h.as_dict() for h in result.hits]
        filtered = bool(label or cohort or min_score is not None or exclude_site or exclude_same or exclude_patient or in_annotation)
        if not hits and not filtered:
            from eagle_index.errors import NotFoundError

            used = result.query.get("signature") or ""
            raise NotFoundError(f"no other patients have {result.query.get('kind', kind)!r} vectors"
                                f"{' of signature ' + used if used else ''} to compare with; "
                                "`eagle-index stats` lists the vector sets the archive holds")
        if as_json:
            typer.echo(json.dumps({"hits": hits, "vote": result.vote} if vote else hits, indent=1))
            return
        for note in result.notes:
            typer.echo(f"note: {note}")
        if not result.hits:
            typer.echo("no patients match these filters")
        for hit in result.hits:
            label_text = ", ".join(f"{n}={v}" for n, v in sorted(hit.labels.items()))
            context = f"  (closer than {hit.percentile:.1f}% of patient pairs)" if hit.percentile is not None else ""
            typer.echo(f"{hit.rank:>3}  {hit.score:.4f}  {hit.patient}  {label_text}{context}".rstrip())
            for pair in hit.explanation or ():
                typer.echo(f"       {pair.similarity:.3f}  {pair.query_slide} ({pair.query_x_um:.0f}, {pair.query_y_um:.0f}) µm"
                           f"  <->  {pair.hit_slide} ({pair.hit_x_um:.0f}, {pair.hit_y_um:.0f}) µm")
        if vote:
            v = result.vote
            counts = ", ".join(f"{value} {n}" for value, n in v["counts"].items()) or "none labelled"
            typer.echo(f"vote {vote}: majority {v['majority']}, score-weighted {v['weighted']} ({counts}; {v['unlabelled']} unlabelled)")

    @app.command("stats")
    def stats(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Counts of patients, slides, labels and vectors by kind."""
        with _service(data_dir, create=False, read_only=True) as service:
            data = service.stats()
        if as_json:
            typer.echo(json.dumps(data.as_dict(), indent=1))
            return
        typer.echo(f"patients {data['patients']}  slides {data['slides']}  labels {data['labels']}  failed {data.get('failed', 0)}")
        for s in data["vector_sets"]:
            typer.echo(f"vectors {s['kind']:<16} {s['count']:>8}  dim {s['dim']}  signature {s['signature']}")

    @app.command("reindex")
    def reindex(force: Annotated[bool, typer.Option("--force", help="Rebuild even when current.")] = False,
                data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Check every FAISS index against the catalog and rebuild stale ones."""
        with _service(data_dir, create=False) as service:
            out = service.reindex(force)
        typer.echo(json.dumps(out, indent=1) if as_json else "\n".join(f"{o['kind']}: {o['count']} vectors ({o['index_type']})" for o in out) or "no vectors")
