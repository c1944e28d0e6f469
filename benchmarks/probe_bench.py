"""Probes: time to train a 5-fold logistic probe on a 10,000-patient, 1280-d catalog.

    .venv/bin/python benchmarks/probe_bench.py [--patients 10000] [--dim 1280] [--folds 5] [--mlp] [--fewshot]

Data: a temporary catalog (DuckDB) with one `eagle` vector per patient - a mixture of 50
Gaussian clusters in 1280-d (cluster centres, then per-patient noise) - and a label `BIOMARKER`
that is MUT for about 10 % of the patients and WT otherwise; MUT patients are shifted along
one fixed direction (a planted linear signal, weaker than the spread of the clusters, so the
probe is good but not perfect). The catalog is filled with bulk inserts and checkpointed
(set-up, not timed).

Timed, each through `EagleService.probes` exactly as the CLI calls it:
- train: load vectors and labels, 5-fold stratified CV (fit + predict + metrics per fold), the
  final fit on every patient, storing the probe (training set, out-of-fold predictions, blob);
- apply: score every patient, rank, store 10,000 probe_scores rows;
- optional: the MLP probe (`--mlp`), and the few-shot curve (`--fewshot`: 6 k x 10 draws).
The target is: train under 30 s on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402

from eagle_index.config import Settings  # noqa: E402
from eagle_index.service import EagleService  # noqa: E402
from eagle_index.store.models import Label, Patient  # noqa: E402


def synthetic(n: int, dim: int, seed: int = 0, clusters: int = 50, positives: float = 0.1, shift: float = 0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, dim)).astype(np.float32)
    y = rng.random(n) < positives
    direction = rng.normal(size=dim).astype(np.float32)
    x += (shift * np.sqrt(dim)) * np.outer(y, direction / np.linalg.norm(direction)).astype(np.float32)
    return x.astype(np.float32), np.where(y, "MUT", "WT")


def fill(service: EagleService, x: np.ndarray, y: np.ndarray) -> None:
    catalog = service.catalog
    names = [f"BENCH-{i:06d}" for i in range(len(x))]
    def _tx(session):
        session.execute(insert(Patient), [{"external_id": e} for e in names])

    catalog.write(_tx)
    ids = catalog.patient_ids(names)
    pids = [ids[e] for e in names]
    def _tx(session):
        catalog.put_vectors(session, "eagle", "bench-signature", pids, x, "probe_bench")
        session.execute(insert(Label), [{"patient_id": p, "name": "BIOMARKER", "value": v, "source": "bench"} for p, v in zip(pids, y)])

    catalog.write(_tx)
    with catalog.engine.connect() as connection:  # flush DuckDB's write-ahead log now, not in the first timed commit
        connection.execute(text("CHECKPOINT"))


def timed(what: str, call):
    started = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - started
    print(f"{what:<44} {seconds:8.2f} s", flush=True)
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--mlp", action="store_true", help="also train the MLP probe")
    parser.add_argument("--fewshot", action="store_true", help="also run the few-shot curve")
    args = parser.parse_args()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="eagle-probe-bench-") as tmp, EagleService(Settings(data_dir=Path(tmp))) as service:
        timed(f"set-up: {args.patients} patients x {args.dim}-d (not a result)", lambda: fill(service, *synthetic(args.patients, args.dim)))
        probes = service.probes
        importlib.import_module("sklearn.linear_model")  # import time is not training time
        out, train_s = timed(f"train logreg, {args.folds}-fold CV + final fit", lambda: probes.train("BIOMARKER", folds=args.folds))
        print(f"  n={out['n']}  positives={out['counts']['per_class']['MUT']}  AUROC {out['auroc']['mean']:.3f} ± {out['auroc']['sd']:.3f}  "
              f"AUPRC {out['auprc']['mean']:.3f} ± {out['auprc']['sd']:.3f}  (inside the job: {out['seconds']:.2f} s)")
        result, _ = timed("apply to every patient (rank + store)", lambda: probes.apply(out["name"], top=50))
        print(f"  scored {result['scored']}; top-50 MUT: {sum(c['label_value'] == 'MUT' for c in result['candidates'])}")
        if args.fewshot:
            curve, _ = timed("few-shot curve (k = 1..32, 10 draws)", lambda: probes.fewshot("BIOMARKER"))
            for p in curve["curve"]:
                print(f"  k={p['k']:>2}  AUROC {p['auroc']['mean']:.3f} ± {p['auroc']['sd']:.3f}")
        if args.mlp:
            importlib.import_module("torch")
            mlp, _ = timed(f"train mlp, {args.folds}-fold CV + final fit", lambda: probes.train("BIOMARKER", model="mlp", folds=args.folds))
            print(f"  AUROC {mlp['auroc']['mean']:.3f} ± {mlp['auroc']['sd']:.3f}")
    verdict = "under" if train_s < 30 else "OVER"
    print(f"logistic probe: {train_s:.2f} s ({verdict} the 30 s target)")


if __name__ == "__main__":
    main()
