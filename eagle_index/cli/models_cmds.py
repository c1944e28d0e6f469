"""`eagle-index models ...`: where the weights are, whether they are right, and fetching them.

All model facts come from the registry; torch is imported only by `verify` (which loads).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, WeightsDirOpt, settings_from
from eagle_index.errors import ModelError

ModelsOpt = Annotated[
    Optional[str],
    typer.Option("--models", help="Model preset: 'default' (official weights) or 'tiny' (random, tests/demo)."),
]
OnlyOpt = Annotated[
    Optional[list[str]],
    typer.Option("--only", help="Limit to these model ids (repeatable): ctranspath, chief, virchow2."),
]


def _selected(settings, only: list[str] | None):
    from eagle_index.models import specs_for

    specs = specs_for(settings.models)
    ids = only or list(specs)
    unknown = [i for i in ids if i not in specs]
    if unknown:
        raise ModelError(f"unknown model id(s): {', '.join(unknown)}; known: {', '.join(specs)}")
    return [specs[i] for i in ids]


def info(
    data_dir: DataDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    models: ModelsOpt = None,
    only: OnlyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List each model: id, output dim, expected digest, where its weights resolve, licence."""
    from eagle_index.models import weights

    settings = settings_from(data_dir, weights_dir, models=models)
    rows: list[dict[str, Any]] = []
    for spec in _selected(settings, only):
        loc = weights.locate(spec, settings)
        rows.append(
            {
                **spec.describe(),
                "weights": loc.describe(),
                "origin": loc.origin,
                "path": str(loc.path) if loc.path else None,
                "searched": [str(p) for p in loc.searched],
                "hub": str(loc.hub) if loc.hub else None,
            }
        )
    if as_json:
        typer.echo(json.dumps({"preset": settings.models, "models": rows}, indent=2))
        return
    header = ("ID", "DIM", "EXPECTED SHA-256", "WEIGHTS", "LICENCE")
    table = [header] + [
        (r["id"], str(r["dim"]), (r["expected_digest"] or "(not pinned)")[:16], r["weights"], r["licence"]) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    typer.echo(f"preset: {settings.models}")


def verify(
    data_dir: DataDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    models: ModelsOpt = None,
    only: OnlyOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Load each model with strict=True and check its digest; exit non-zero listing every problem."""
    from eagle_index.models import weights
    from eagle_index.models.loading import load_module

    settings = settings_from(data_dir, weights_dir, models=models)
    results: list[dict[str, Any]] = []
    for spec in _selected(settings, only):
        loc = weights.locate(spec, settings)
        result: dict[str, Any] = {"id": spec.id, "path": str(loc.path) if loc.path else None, "origin": loc.origin}
        if not loc.found:
            result.update(status="missing", problem=loc.missing_message())
        else:
            try:
                loaded = load_module(loc, device="cpu", allow_digest_mismatch=True, digest_cache=settings.weights_cache_dir)
            except ModelError as exc:
                result.update(status="error", problem=str(exc))
            else:
                result.update(digest=loaded.digest, expected_digest=spec.digest)
                if not loaded.digest_ok:
                    result.update(status="digest-mismatch", problem=f"{spec.name}: SHA-256 {loaded.digest} != expected {spec.digest}")
                else:
                    result.update(status="ok" if loaded.digest_pinned or loc.origin == "generated" else "ok (digest not pinned)")
                del loaded  # free a large model before loading the next
        results.append(result)
    problems = [r["problem"] for r in results if "problem" in r]
    if as_json:
        typer.echo(json.dumps({"preset": settings.models, "ok": not problems, "models": results}, indent=2))
    else:
        for r in results:
            typer.echo(f"{r['status']:<24} {r['id']:<11} {r.get('digest', '')[:16]:<16} {r['path'] or r['origin']}")
        for p in problems:
            typer.echo(f"problem: {p}", err=True)
    if problems:
        raise typer.Exit(ModelError.exit_code)


def download(
    data_dir: DataDirOpt = None,
    weights_dir: WeightsDirOpt = None,
    models: ModelsOpt = None,
    only: OnlyOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Download even if the file is already there.")] = False,
) -> None:
    """Fetch missing weights from the Hugging Face hub (network; HF_TOKEN for gated Virchow2).

    Files go to --weights-dir when given, else to the cache (~/.cache/eagle-index/weights).
    """
    from eagle_index.models import weights

    settings = settings_from(data_dir, weights_dir, models=models)
    if settings.models != "default":
        raise ModelError(f"the {settings.models!r} preset has no weights to download (they are generated)")
    problems = []
    for spec in _selected(settings, only):
        loc = weights.locate(spec, settings)
        if loc.found and not force:
            typer.echo(f"present     {spec.id:<11} {loc.path}")
            continue
        if spec.gated:
            typer.echo(f"note: {spec.name} is licensed {spec.licence}; by downloading you accept its terms.", err=True)
        try:
            path = weights.download(spec, settings, force=force)
            check = weights.check_digest(spec, path, allow_mismatch=True, cache_dir=settings.weights_cache_dir)
        except ModelError as exc:
            problems.append(str(exc))
            continue
        status = "downloaded" if check.ok else "MISMATCH"
        typer.echo(f"{status:<11} {spec.id:<11} {path}  sha256 {check.actual[:16]}")
        if not check.ok:
            problems.append(f"{spec.name}: downloaded file has SHA-256 {check.actual}, expected {check.expected}")
    for p in problems:
        typer.echo(f"problem: {p}", err=True)
    if problems:
        raise typer.Exit(ModelError.exit_code)


def register(app: typer.Typer) -> None:
    """Add the `models` command group to the main app."""
    models_app = typer.Typer(name="models", help="Model weights: list, verify, download.", no_args_is_help=True)
    models_app.command("info")(info)
    models_app.command("verify")(verify)
    models_app.command("download")(download)
    app.add_typer(models_app, name="models")
