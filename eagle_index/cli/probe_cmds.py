"""Probe commands: train, fewshot, apply, scores, compare, list, show, delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, KindOpt, output_file, settings_from

SignatureOpt = Annotated[Optional[str], typer.Option("--signature", help="Vector signature (default: the kind's largest set).")]
ModelOpt = Annotated[str, typer.Option("--model", help="logreg (logistic regression) or mlp (the paper's MLP).")]
FoldsOpt = Annotated[int, typer.Option("--folds", min=2, help="Stratified cross-validation folds.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of the folds, draws and MLP.")]
PositiveOpt = Annotated[Optional[str], typer.Option("--positive", help="The label value to predict and rank (default: see docs).")]
VsRestOpt = Annotated[bool, typer.Option("--vs-rest", help="Binary: --positive against every other value.")]
CohortOpt = Annotated[Optional[str], typer.Option("--cohort", help="Only the patients of this cohort.")]
METRIC_NAMES = ("auroc", "auprc", "balanced_accuracy", "f1")


def _service(data_dir: Path | None, create: bool = False):
    """The local service, or the running daemon/server's API when one holds the catalog."""
    from eagle_index.client import service_for

    return service_for(settings_from(data_dir), create=create)


def _progress(enabled: bool):
    """A rich progress bar (folds / few-shot draws) on a terminal; silent otherwise."""
    from eagle_index.cli.progress import step_progress

    return step_progress(enabled, "training", unit="fits")


def _ms(value: dict | None) -> str:
    return f"{value['mean']:.3f} ± {value['sd']:.3f}" if value else "-"


def _echo_json(data) -> None:
    from eagle_index.results import json_default

    typer.echo(json.dumps(data, indent=1, default=json_default))


def _counts_text(counts: dict) -> str:
    skipped = [f"{counts[k]} {k.replace('_', ' ')}" for k in ("labelled_without_vector", "vectors_without_label", "outside_cohort", "not_shared")
               if counts.get(k)]
    return f"{counts.get('used')} patients ({', '.join(f'{v} {c}' for c, v in counts.get('per_class', {}).items())})" + (
        f"; skipped: {', '.join(skipped)}" if skipped else "")


def register(app: typer.Typer) -> None:
    probe = typer.Typer(help="Biomarker probes: train on stored vectors, evaluate, rank the archive.", no_args_is_help=True)
    app.add_typer(probe, name="probe")

    @probe.command("train")
    def train(
        label: Annotated[str, typer.Argument(help="Label name (imported with `labels import`).")],
        kind: KindOpt = None,
        model: ModelOpt = "logreg",
        folds: FoldsOpt = 5,
        seed: SeedOpt = 0,
        name: Annotated[Optional[str], typer.Option("--name", help="Probe name (default <label>-<kind>-<model>[-N]).")] = None,
        positive: PositiveOpt = None,
        vs_rest: VsRestOpt = False,
        signature: SignatureOpt = None,
        cohort: CohortOpt = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Cross-validate a probe (mean ± sd over folds), fit it on all patients and save it."""
        with _service(data_dir) as service, _progress(not as_json) as tick:
            out = service.probes.train(label, kind, model, folds, seed, progress=tick, name=name, signature=signature,
                                       positive=positive, vs_rest=vs_rest, cohort=cohort)
        if as_json:
            _echo_json(out)
            return
        typer.echo(f"probe {out['name']}: {out['model']} on {out['kind']} vectors, {out['folds']}-fold CV, positive {out['positive']!r}")
        typer.echo(_counts_text(out["counts"]))
        for metric in METRIC_NAMES:
            typer.echo(f"  {metric:<18} {_ms(out[metric])}")

    @probe.command("fewshot")
    def fewshot(
        label: Annotated[str, typer.Argument(help="Label name.")],
        kind: KindOpt = None,
        ks: Annotated[str, typer.Option("--ks", help="Patients per class to train on, comma-separated.")] = "1,2,4,8,16,32",
        draws: Annotated[int, typer.Option("--draws", min=1, help="Random training sets per k.")] = 10,
        seed: SeedOpt = 0,
        positive: PositiveOpt = None,
        vs_rest: VsRestOpt = False,
        signature: SignatureOpt = None,
        cohort: CohortOpt = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Few-shot curve: logistic regression on k patients per class, evaluated on all the others."""
        from eagle_index.errors import InputError

        try:
            k_values = [int(k) for k in ks.split(",") if k.strip()]
        except ValueError:
            raise InputError(f"--ks must be comma-separated integers, got {ks!r}") from None
        with _service(data_dir) as service, _progress(not as_json) as tick:
            out = service.probes.fewshot(label, kind, k_values, draws, seed, signature=signature, positive=positive,
                                         vs_rest=vs_rest, cohort=cohort, progress=tick)
        if as_json:
            _echo_json(out)
            return
        typer.echo(f"{label} on {out['kind']} vectors, positive {out['positive']!r}: {_counts_text(out['counts'])}")
        typer.echo(f"{'k':>4}  {'AUROC':>15}  {'AUPRC':>15}  {'bal. acc.':>15}  {'F1':>15}")
        for point in out["curve"]:
            if "skipped" in point:
                typer.echo(f"{point['k']:>4}  skipped: {point['skipped']}")
            else:
                typer.echo(f"{point['k']:>4}  " + "  ".join(f"{_ms(point[m]):>15}" for m in METRIC_NAMES))

    @probe.command("apply")
    def apply(
        name: Annotated[str, typer.Argument(help="Probe name (see `probe list`).")],
        cohort: CohortOpt = None,
        top: Annotated[int, typer.Option("--top", min=0, help="Candidates to show (0 = all).")] = 50,
        exclude_training: Annotated[bool, typer.Option("--exclude-training", help="Leave the probe's training patients out of the list.")] = False,
        out: Annotated[Optional[Path], typer.Option("--out", help="Write the ranked candidates to this CSV (all of them unless --top).")] = None,
        store: Annotated[bool, typer.Option("--store/--no-store", help="Save the scores in the catalog (replacing the probe's previous ones).")] = True,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Score every patient (or a cohort) and rank them by the probability of the probe's positive class."""
        from eagle_index.probes import write_candidates_csv

        if out is not None:
            output_file(out, "candidate list")
        with _service(data_dir) as service:
            result = service.probes.apply(name, cohort, top=None if out is not None else top, exclude_training=exclude_training, store=store)
        if out is not None:
            write_candidates_csv(result["candidates"], out)
            result["csv"] = str(out)
            result["candidates"] = result["candidates"][:top] if top else result["candidates"]
        if as_json:
            _echo_json(result)
            return
        where = f"cohort {cohort!r}" if cohort else "the archive"
        typer.echo(f"{result['probe']}: {result['scored']} patients of {where} scored; P({result['label']} = {result['positive']})")
        for c in result["candidates"]:
            known = f"  [{result['label']}={c['label_value']}]" if c["label_value"] is not None else ""
            typer.echo(f"{c['rank']:>5}  {c['probability']:.4f}  {c['patient']}{known}{'  (training)' if c['in_training'] else ''}")
        if out is not None:
            typer.echo(f"wrote {out}")

    @probe.command("scores")
    def scores(
        name: Annotated[str, typer.Argument(help="Probe name.")],
        top: Annotated[int, typer.Option("--top", min=0, help="Rows to show (0 = all).")] = 50,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The stored scores of the probe's latest `probe apply`, by rank."""
        with _service(data_dir) as service:
            rows = service.probes.scores(name, top or None)
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no stored scores: run `probe apply` first")
        for r in rows:
            typer.echo(f"{r['rank']:>5}  {r['probability']:.4f}  {r['patient']}")

    @probe.command("compare")
    def compare(
        labels: Annotated[list[str], typer.Argument(help="One or more label names.")],
        kind: KindOpt = None,
        against: Annotated[str, typer.Option("--against", help="The other vector kind.")] = "chief",
        model: ModelOpt = "logreg",
        against_model: Annotated[Optional[str], typer.Option("--against-model", help="Model of the other probe (default: --model).")] = None,
        folds: FoldsOpt = 5,
        seed: SeedOpt = 0,
        positive: PositiveOpt = None,
        signature: SignatureOpt = None,
        against_signature: Annotated[Optional[str], typer.Option("--against-signature", help="Signature of the other kind.")] = None,
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Two probes per label on the same patients and folds; DeLong's test, Benjamini-Hochberg across labels."""
        with _service(data_dir) as service, _progress(not as_json) as tick:
            out = service.probes.compare(labels, kind, against, model, against_model, folds, seed, signature, against_signature,
                                         positive, progress=tick)
        if as_json:
            _echo_json(out)
            return
        a, b = out["a"], out["b"]
        typer.echo(f"A = {a['model']} on {a['kind']}, B = {b['model']} on {b['kind']}; {out['folds']}-fold CV, same folds")
        typer.echo(f"{'label':<20} {'n':>6}  {'AUROC A':>15}  {'AUROC B':>15}  {'p':>9}  {'p (BH)':>9}")
        for r in out["results"]:
            typer.echo(f"{r['label']:<20} {r['n']:>6}  {_ms(r['a']['auroc']):>15}  {_ms(r['b']['auroc']):>15}  "
                       f"{r['delong']['p_value']:>9.3g}  {r['p_adjusted']:>9.3g}")
        for s in out["skipped"]:
            typer.echo(f"skipped {s['label']}: {s['reason']}")

    @probe.command("list")
    def list_probes(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Saved probes with their cross-validated AUROC."""
        with _service(data_dir) as service:
            rows = service.probes.list()
        if as_json:
            _echo_json(rows)
            return
        if not rows:
            typer.echo("no probes yet: train one with `eagle-index probe train LABEL`")
        for r in rows:
            typer.echo(f"{r['name']:<32} {r['status']:<9} {r['model']:<7} {r['kind']:<16} n={r['n'] or '-':<6} AUROC {_ms(r['auroc'])}")

    @probe.command("show")
    def show(name: Annotated[str, typer.Argument(help="Probe name.")], data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """A probe's definition, counts and per-fold metrics."""
        with _service(data_dir) as service:
            out = service.probes.get(name)
        if as_json:
            _echo_json(out)
            return
        typer.echo(f"{out['name']}: {out['status']}{' (' + out['error'] + ')' if out['error'] else ''}")
        typer.echo(f"label {out['label']} (positive {out['positive']!r}, classes {', '.join(out['classes'])}); "
                   f"{out['model']} on {out['kind']} vectors, signature {out['signature']}")
        if out.get("counts"):
            typer.echo(_counts_text(out["counts"]))
        for metric in METRIC_NAMES:
            if out[metric]:
                typer.echo(f"  {metric:<18} {_ms(out[metric])}")

    @probe.command("delete")
    def delete(name: Annotated[str, typer.Argument(help="Probe name.")], data_dir: DataDirOpt = None) -> None:
        """Delete a probe and its stored scores."""
        with _service(data_dir) as service:
            service.probes.delete(name)
        typer.echo(f"deleted probe {name}")
