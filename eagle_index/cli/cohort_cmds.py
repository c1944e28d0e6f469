"""Cohort commands: create, list, show, refresh, delete, export, duplicates, leakage, umap."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, KindOpt, output_file

SignatureOpt = Annotated[Optional[str], typer.Option("--signature", help="Vector signature (default: the cohort's, else the largest set).")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", min=-1.0, max=1.0, help="Cosine similarity at or above which two patients count as near-duplicates.")]


def _service(data_dir: Path | None):
    from eagle_index.cli.catalog_cmds import _service as catalog_service

    return catalog_service(data_dir, create=False)


def _echo_json(data) -> None:
    from eagle_index.results import json_default

    typer.echo(json.dumps(data, indent=1, default=json_default))


def _describe(definition: dict) -> str:
    parts = [f"{n}={'|'.join(v)}" for n, v in sorted(definition.get("labels", {}).items())]
    parts += [f"in {c}" for c in definition.get("cohorts", [])]
    if definition.get("seeds"):
        parts.append(f"similar (>= {definition['min_similarity']}) to {', '.join(definition['seeds'])} [{definition.get('kind')}]")
    if definition.get("probe"):
        parts.append(f"probe {definition['probe']} >= {definition['min_probability']}")
    return "; ".join(parts) or "all patients"


def _summary_line(c: dict) -> str:
    return f"{c['name']}: {c['member_count']} members (materialised {c['materialized_at']}) — {_describe(c['definition'])}"


def register(app: typer.Typer) -> None:
    cohort = typer.Typer(help="Curate study sets: saved filters, exports, duplicate and leakage checks, 2-D maps.",
                         no_args_is_help=True)
    app.add_typer(cohort, name="cohort")

    @cohort.command("create")
    def create(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        label: Annotated[Optional[list[str]], typer.Option("--label", help="Label filter NAME=VALUE (repeatable: OR within a name, AND across names; VALUE * = has the label).")] = None,
        member_of: Annotated[Optional[list[str]], typer.Option("--cohort", help="Only members of this saved cohort (repeatable).")] = None,
        seed: Annotated[Optional[list[str]], typer.Option("--seed", help="Seed patient: keep patients similar to any seed (repeatable).")] = None,
        min_similarity: Annotated[Optional[float], typer.Option("--min-similarity", help="Cosine similarity to the nearest seed, at least.")] = None,
        probe: Annotated[Optional[str], typer.Option("--probe", help="Keep patients this probe scores highly.")] = None,
        min_probability: Annotated[Optional[float], typer.Option("--min-probability", help="Probe probability, at least (default 0.5).")] = None,
        kind: KindOpt = None,
        signature: SignatureOpt = None,
        replace: Annotated[bool, typer.Option("--replace", help="Overwrite a cohort of this name.")] = False,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Save a cohort definition and materialise its members."""
        with _service(data_dir) as service:
            out = service.cohorts.create(name, replace=replace, labels=label or (), cohorts=member_of or (), seeds=seed or (),
                                         min_similarity=min_similarity, probe=probe, min_probability=min_probability,
                                         kind=kind, signature=signature)
        _echo_json(out) if as_json else typer.echo(_summary_line(out))

    @cohort.command("list")
    def list_(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Saved cohorts with their member counts."""
        with _service(data_dir) as service:
            out = service.cohorts.list()
        if as_json:
            _echo_json(out)
            return
        for c in out:
            typer.echo(_summary_line(c))
        if not out:
            typer.echo("no cohorts")

    @cohort.command("show")
    def show(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="Members to list (default: all with --json, 50 otherwise).")] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """A cohort's definition and members."""
        with _service(data_dir) as service:
            out = service.cohorts.show(name, limit if limit is not None or as_json else 50)
        if as_json:
            _echo_json(out)
            return
        typer.echo(_summary_line(out))
        for m in out["members"]:
            score = f"{m['score']:.4f}" if m["score"] is not None else "      "
            typer.echo(f"  {score}  {m['patient']}  {', '.join(f'{n}={v}' for n, v in sorted(m['labels'].items()))}")
        if len(out["members"]) < out["member_count"]:
            typer.echo(f"  … {out['member_count'] - len(out['members'])} more (--limit, --json)")

    @cohort.command("refresh")
    def refresh(name: Annotated[str, typer.Argument(help="Cohort name.")], data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Materialise a saved definition again (catalog changes since then are picked up)."""
        with _service(data_dir) as service:
            out = service.cohorts.refresh(name)
        _echo_json(out) if as_json else typer.echo(_summary_line(out))

    @cohort.command("delete")
    def delete(name: Annotated[str, typer.Argument(help="Cohort name.")], data_dir: DataDirOpt = None) -> None:
        """Delete a cohort (definition and member list; patients are untouched)."""
        with _service(data_dir) as service:
            service.cohorts.delete(name)
        typer.echo(f"deleted cohort {name}")

    @cohort.command("export")
    def export(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        fmt: Annotated[str, typer.Option("--format", help="stamp (PATIENT,FILENAME slide table), clinical (PATIENT + labels), eagle-h5 (EAGLE output layout), parquet.")],
        out: Annotated[Path, typer.Option("--out", help="File to write (replaced atomically).")],
        kind: KindOpt = None,
        signature: SignatureOpt = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a cohort for STAMP/EAGLE or analysis."""
        output_file(out, "export")
        with _service(data_dir) as service:
            report = service.cohorts.export(name, fmt, out, kind, signature)
        if as_json:
            _echo_json(report)
            return
        typer.echo(f"wrote {report['path']}: {report['rows']} rows ({report['format']}, {report['members']} members)")
        for note in report["notes"]:
            typer.echo(f"note: {note}")

    @cohort.command("duplicates")
    def duplicates(
        threshold: ThresholdOpt = 0.95,
        within: Annotated[Optional[str], typer.Option("--cohort", help="Check only this cohort's members (default: the whole catalog).")] = None,
        kind: KindOpt = None,
        signature: SignatureOpt = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Near-duplicate patients: the same tissue rescanned, or filed twice (with the labels they disagree on)."""
        with _service(data_dir) as service:
            report = service.cohorts.duplicates(threshold, kind, signature, within)
        if as_json:
            _echo_json(report)
            return
        typer.echo(f"{len(report['pairs'])} near-duplicate pair(s) among {report['patients']} patients (cosine >= {threshold}, "
                   f"{report['kind']} vectors)")
        for p in report["pairs"]:
            conflict = "; ".join(f"{n}: {a} vs {b}" for n, (a, b) in p["label_conflicts"].items())
            typer.echo(f"  {p['score']:.4f}  {p['a']}  {p['b']}" + (f"  labels differ: {conflict}" if conflict else ""))

    @cohort.command("leakage")
    def leakage(
        a: Annotated[str, typer.Argument(help="First cohort (e.g. training set).")],
        b: Annotated[str, typer.Argument(help="Second cohort (e.g. test set).")],
        threshold: ThresholdOpt = 0.95,
        kind: KindOpt = None,
        signature: SignatureOpt = None,
        fail_on_leak: Annotated[bool, typer.Option("--fail-on-leak", help="Exit with status 1 when anything leaks (for scripts and CI).")] = False,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Patients shared by two cohorts and near-duplicates across them (train/test leakage)."""
        with _service(data_dir) as service:
            report = service.cohorts.leakage(a, b, threshold, kind, signature)
        if as_json:
            _echo_json(report)
        else:
            typer.echo(f"{a} ({report['members'][a]}) vs {b} ({report['members'][b]}): "
                       f"{len(report['shared_patients'])} shared patient(s), {len(report['near_duplicates'])} near-duplicate pair(s)")
            for p in report["shared_patients"]:
                typer.echo(f"  shared  {p}")
            for p in report["near_duplicates"]:
                typer.echo(f"  {p['score']:.4f}  {p['a']} ({a})  {p['b']} ({b})")
            if report["without_vector"]:
                typer.echo(f"note: {report['without_vector']} member(s) have no {kind!r} vector and were checked by id only")
        if report["leak"] and fail_on_leak:
            raise typer.Exit(1)

    @cohort.command("umap")
    def umap_(
        name: Annotated[str, typer.Argument(help="Cohort name.")],
        kind: KindOpt = None,
        signature: SignatureOpt = None,
        seed: Annotated[int, typer.Option("--seed", help="Random seed of the layout.")] = 0,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """2-D UMAP map of a cohort's vectors (n_neighbors 15, min_dist 0.1, cosine), cached for the UI."""
        from eagle_index.cli.progress import spinner

        with _service(data_dir) as service, spinner(not as_json, f"computing the map of cohort {name}"):
            out = service.cohorts.umap(name, kind, signature, seed=seed)
        if as_json:
            _echo_json(out)
            return
        if out["note"]:
            typer.echo(f"note: {out['note']}")
        where = f"-> {out['path']}" if out.get("path") else "(kept by the running server for its map page)"
        typer.echo(f"{out['method']} map of {len(out['points'])} patients {'(cached) ' if out['cached'] else ''}{where}")
        for p in out["points"][:20]:
            typer.echo(f"  {p['x']:8.3f} {p['y']:8.3f}  {p['patient']}")
