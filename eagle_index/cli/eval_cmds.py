"""Evaluation commands: `eval retrieval` (leave-one-patient-out Acc@k, MV@k, mAP@k per class)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import DataDirOpt, JsonOpt, KindOpt


def _parse_ks(text: str) -> list[int]:
    from eagle_index.errors import InputError

    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"-k {text!r}: expected comma-separated integers, e.g. 1,3,5") from None
    if not ks or ks[0] < 1:
        raise InputError(f"-k {text!r}: values must be positive")
    return ks


def _service(data_dir: Path | None):
    from eagle_index.cli.catalog_cmds import _service as catalog_service

    return catalog_service(data_dir, create=False)


def register(app: typer.Typer) -> None:
    evaluate = typer.Typer(help="Measure retrieval quality on the catalog's labels.", no_args_is_help=True)
    app.add_typer(evaluate, name="eval")

    @evaluate.command("retrieval")
    def retrieval(
        label: Annotated[str, typer.Option("--label", help="Label whose values are the classes.")],
        ks: Annotated[str, typer.Option("-k", help="Comma-separated k values.")] = "1,3,5",
        kind: KindOpt = None,
        signature: Annotated[Optional[str], typer.Option("--signature", help="Vector signature (default: the largest set).")] = None,
        cohort: Annotated[Optional[str], typer.Option("--cohort", help="Evaluate within this cohort only.")] = None,
        exclude_site: Annotated[bool, typer.Option("--exclude-site", help="Neighbours never come from the query's site (site bias check).")] = False,
        site_label: Annotated[str, typer.Option("--site-label", help="Label that holds the site.")] = "site",
        data_dir: DataDirOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Leave-one-patient-out retrieval: Acc@k, majority-vote MV@k and mAP@k, overall and per class."""
        with _service(data_dir) as service:
            report = service.searcher.evaluate_retrieval(label, _parse_ks(ks), kind, signature, cohort, exclude_site, site_label)
        if as_json:
            typer.echo(json.dumps(report.as_dict(), indent=1))
            return
        metrics = list(report["overall"])
        width = max([len("overall (micro)")] + [len(c) for c in report["classes"]]) + 2
        typer.echo(f"retrieval of {label!r} with {report['kind']} vectors: {report['patients']} patients, leave-one-patient-out"
                   + (", other sites only" if exclude_site else ""))
        typer.echo(" " * width + "     n" + "".join(f"{m:>9}" for m in metrics))
        rows = [(c, v["n"], v) for c, v in report["classes"].items()]
        rows += [("macro", len(report["classes"]), report["macro"]), ("overall (micro)", report["patients"], report["overall"])]
        for name, n, values in rows:
            typer.echo(f"{name:<{width}}{n:>6}" + "".join(f"{values[m]:>9.3f}" for m in metrics))
