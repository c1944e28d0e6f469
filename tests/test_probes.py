"""Probes through the service and the CLI: training, stored results, applying, few-shot, comparing."""

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, balanced_accuracy_score, f1_score, roc_auc_score
from sqlalchemy import insert, update

from conftest import clustered_vectors
from eagle_index.errors import InputError, NotFoundError
from eagle_index.store.models import Cohort, CohortMember, Label, Patient, Probe, ProbeScore


def fill_catalog(service, n: int, vectors: dict[str, tuple[str, np.ndarray]], labels: dict[str, list], skip_vectors: dict | None = None):
    """Patients P0000.., vectors {kind: (signature, matrix)}, labels {name: values (None = missing)} in bulk."""
    catalog = service.catalog
    names = [f"P{i:04d}" for i in range(n)]
    def _tx(session):
        session.execute(insert(Patient), [{"external_id": e} for e in names])

    catalog.write(_tx)
    ids = catalog.patient_ids(names)
    pids = [ids[e] for e in names]
    def _tx(session):
        for kind, (signature, matrix) in vectors.items():
            rows = [i for i in range(n) if i not in (skip_vectors or {}).get(kind, ())]
            catalog.put_vectors(session, kind, signature, [pids[i] for i in rows], matrix[rows], "test")
        label_rows = [{"patient_id": pids[i], "name": name, "value": v, "source": "test"}
                      for name, values in labels.items() for i, v in enumerate(values) if v is not None]
        session.execute(insert(Label), label_rows)

    catalog.write(_tx)
    return pids


def planted(n=240, dim=48, seed=0, shift=6.0):
    """Clustered vectors whose class (MUT/WT, about 30 % MUT) shifts them along one direction."""
    rng = np.random.default_rng(seed + 100)
    x = clustered_vectors(n, dim, seed=seed)
    y = rng.random(n) < 0.3
    direction = rng.normal(size=dim)
    x = x + shift * np.outer(y, direction / np.linalg.norm(direction)).astype(np.float32)
    return x.astype(np.float32), np.where(y, "MUT", "WT")


@pytest.fixture
def archive(service):
    x, y = planted()
    noise = clustered_vectors(240, 32, seed=9)
    random_labels = np.where(np.random.default_rng(5).random(240) < 0.4, "yes", "no")
    fill_catalog(service, 240, {"eagle": ("sigA", x), "chief": ("sigC", noise)}, {"BRAF": list(y), "RANDOM": list(random_labels)})
    return service


def test_planted_signal_gives_auroc_near_one_and_random_labels_near_half(archive):
    signal = archive.probes.train("BRAF")
    assert signal["positive"] == "MUT" and signal["n"] == 240 and signal["status"] == "done"
    assert signal["auroc"]["mean"] > 0.97 and signal["auprc"]["mean"] > 0.9
    noise = archive.probes.train("RANDOM")
    assert noise["positive"] == "yes"
    assert abs(noise["auroc"]["mean"] - 0.5) < 0.1
    assert {m: set(signal[m]) for m in ("auroc", "auprc", "balanced_accuracy", "f1")} == {
        m: {"mean", "sd"} for m in ("auroc", "auprc", "balanced_accuracy", "f1")}


def test_reported_metrics_equal_sklearn_on_the_stored_out_of_fold_predictions(archive):
    out = archive.probes.train("BRAF", folds=4, seed=11)
    stored = archive.probes.training_set(out["name"])
    classes, target = out["classes"], out["classes"].index(out["positive"])
    y = np.array([classes.index(v) for v in stored["labels"]])
    oof, fold = np.array(stored["oof"]), np.array(stored["fold"])
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3] and len(stored["patients"]) == 240
    per_fold = {"auroc": [], "auprc": [], "balanced_accuracy": [], "f1": []}
    for f in range(4):
        t = fold == f
        pred = oof[t].argmax(axis=1)
        per_fold["auroc"].append(roc_auc_score(y[t] == target, oof[t, target]))
        per_fold["auprc"].append(average_precision_score(y[t] == target, oof[t, target]))
        per_fold["balanced_accuracy"].append(balanced_accuracy_score(y[t], pred))
        per_fold["f1"].append(f1_score(y[t], pred, pos_label=target))
    for metric, values in per_fold.items():
        assert out[metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert out[metric]["sd"] == pytest.approx(np.std(values, ddof=1), abs=1e-12)
    assert out["pooled"]["auroc"] == pytest.approx(roc_auc_score(y == target, oof[:, target]), abs=1e-12)


def test_multiclass_probe_uses_one_vs_rest_auroc(service):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 150)
    directions = rng.normal(size=(3, 24))
    x = (clustered_vectors(150, 24, seed=2) + 4 * directions[y]).astype(np.float32)
    fill_catalog(service, 150, {"eagle": ("s", x)}, {"SUBTYPE": [["CIN", "GS", "MSI"][i] for i in y]})
    out = service.probes.train("SUBTYPE", folds=3, positive="GS")
    assert out["classes"] == ["CIN", "GS", "MSI"] and out["positive"] == "GS"
    stored = service.probes.training_set(out["name"])
    labels = np.array([out["classes"].index(v) for v in stored["labels"]])
    oof, fold = np.array(stored["oof"]), np.array(stored["fold"])
    expected = [roc_auc_score(labels[fold == f], oof[fold == f], multi_class="ovr") for f in range(3)]
    assert out["auroc"]["mean"] == pytest.approx(np.mean(expected), abs=1e-12) and out["auroc"]["mean"] > 0.9
    assert service.probes.apply(out["name"], top=3)["positive"] == "GS"


def test_mlp_probe_finds_the_planted_signal(service):
    # The paper's MLP (lr 1e-4, 32 epochs, batches of 64) takes few steps on small sets: 400 patients here
    x, y = planted(n=400)
    fill_catalog(service, 400, {"eagle": ("s", x)}, {"BRAF": list(y)})
    out = service.probes.train("BRAF", model="mlp", folds=3)
    assert out["name"] == "BRAF-eagle-mlp" and out["auroc"]["mean"] > 0.95
    assert out["params"]["model"]["hidden"] == 256 and out["params"]["features"] == "L2-normalized, standardized"


def test_probe_is_stored_with_training_set_folds_metrics_kind_and_signature(archive):
    out = archive.probes.train("BRAF")
    again = archive.probes.train("BRAF")
    assert (out["name"], again["name"]) == ("BRAF-eagle-logreg", "BRAF-eagle-logreg-2")
    with pytest.raises(InputError, match="exists already"):
        archive.probes.train("BRAF", name="BRAF-eagle-logreg")
    record = archive.probes.repo.get(out["name"])
    assert (record.kind, record.signature, record.model, record.status) == ("eagle", "sigA", "logreg", "done")
    assert record.params["folds"] == 5 and record.params["seed"] == 0 and record.params["model"]["C"] == 1.0
    assert len(record.training_set["fold"]) == len(record.training_set["patients"]) == 240
    assert len(record.metrics["per_fold"]) == 5 and record.model_blob[:8] != b"\x80\x04\x95"  # not a pickle
    listed = archive.probes.list()
    assert [p["name"] for p in listed] == ["BRAF-eagle-logreg", "BRAF-eagle-logreg-2"]
    archive.probes.delete("BRAF-eagle-logreg-2")
    assert [p["name"] for p in archive.probes.list()] == ["BRAF-eagle-logreg"]
    with pytest.raises(NotFoundError, match="unknown probe"):
        archive.probes.get("nope")


def test_skipped_patients_are_counted(service):
    x, y = planted(n=100)
    values = list(y)
    values[:5] = [None] * 5  # 5 without the label
    fill_catalog(service, 100, {"eagle": ("s", x)}, {"BRAF": values}, skip_vectors={"eagle": {10, 11, 12}})
    out = service.probes.train("BRAF", folds=3)
    assert out["counts"]["used"] == 92
    assert out["counts"]["labelled_without_vector"] == 3 and out["counts"]["vectors_without_label"] == 5
    assert sum(out["counts"]["per_class"].values()) == 92


def test_refusals_are_clear(archive):
    ids = archive.catalog.patient_ids([f"P{i:04d}" for i in range(50)])
    def _tx(session):
        session.execute(insert(Label), [{"patient_id": pid, "name": "RARE", "value": "yes" if e == "P0000" else "no", "source": "t"}
                                        for e, pid in ids.items()])

    archive.catalog.write(_tx)
    with pytest.raises(InputError, match=r"label 'RARE' \(eagle vectors\): class 'yes' \(1\) has fewer patients than the 5 folds"):
        archive.probes.train("RARE")
    with pytest.raises(NotFoundError, match="unknown label 'NOPE'; known labels: "):
        archive.probes.train("NOPE")
    with pytest.raises(NotFoundError, match="no vectors of kind 'mean-ctranspath'"):
        archive.probes.train("BRAF", kind="mean-ctranspath")
    with pytest.raises(InputError, match="not a value of the label"):
        archive.probes.train("BRAF", positive="KRAS")
    with pytest.raises(InputError, match="unknown probe model"):
        archive.probes.train("BRAF", model="svm")
    assert archive.probes.list() == []  # a refused training reserves nothing


def test_apply_ranks_stores_and_refuses_another_signature(archive):
    name = archive.probes.train("BRAF")["name"]
    result = archive.probes.apply(name, top=10)
    assert result["scored"] == 240 and len(result["candidates"]) == 10
    probs = [c["probability"] for c in result["candidates"]]
    assert probs == sorted(probs, reverse=True) and [c["rank"] for c in result["candidates"]] == list(range(1, 11))
    assert all(c["label_value"] == "MUT" for c in result["candidates"])  # the planted signal ranks positives first
    stored = archive.probes.scores(name)
    assert len(stored) == 240 and [s["rank"] for s in stored] == list(range(1, 241))
    assert stored[0]["patient"] == result["candidates"][0]["patient"]
    assert stored[0]["probability"] == pytest.approx(result["candidates"][0]["probability"])

    _, raw = archive.catalog.load_vectors("eagle", "sigA")
    with pytest.raises(InputError, match="signature sigA; vectors of signature sigB"):
        archive.probes.score_vectors(name, raw[:3], signature="sigB")
    assert archive.probes.score_vectors(name, raw[:3], signature="sigA").shape == (3, 2)
    with pytest.raises(InputError, match="refused"):
        archive.probes.apply(name, signature="sigB")
    def _tx(session):  # as if the probe came from vectors since replaced
        session.execute(update(Probe).where(Probe.name == name).values(signature="sigOld"))

    archive.catalog.write(_tx)
    with pytest.raises(InputError, match="no longer holds"):
        archive.probes.apply(name)


def test_apply_to_a_cohort_and_leave_out_training_patients(service):
    x, y = planted(n=120)
    values = [v if i < 80 else None for i, v in enumerate(y)]  # 40 unlabelled patients to discover
    pids = fill_catalog(service, 120, {"eagle": ("s", x)}, {"BRAF": values})
    name = service.probes.train("BRAF", folds=3)["name"]
    fresh = service.probes.apply(name, top=0, exclude_training=True)
    assert len(fresh["candidates"]) == 40 and not any(c["in_training"] for c in fresh["candidates"])
    hidden = {f"P{i:04d}" for i in range(80, 120) if y[i] == "MUT"}
    top = {c["patient"] for c in fresh["candidates"][: len(hidden)]}
    assert len(top & hidden) >= 0.8 * len(hidden)
    def _tx(session):
        session.execute(insert(Cohort), [{"name": "late", "definition": "{}", "member_count": 30}])
        cohort_id = session.query(Cohort.id).filter(Cohort.name == "late").scalar()
        session.execute(insert(CohortMember), [{"cohort_id": cohort_id, "patient_id": p} for p in pids[90:120]])

    service.catalog.write(_tx)
    result = service.probes.apply(name, cohort="late", top=5)
    assert result["scored"] == 30 and result["cohort_without_vector"] == 0
    assert {c["patient"] for c in result["candidates"]} <= {f"P{i:04d}" for i in range(90, 120)}
    stored = service.probes.scores(name)
    assert len(stored) == 120 and [s["rank"] for s in stored] == list(range(1, 121))  # the cohort's scores merged, re-ranked
    by_patient = {s["patient"]: s["probability"] for s in stored}
    assert all(by_patient[c["patient"]] == pytest.approx(c["probability"]) for c in result["candidates"])
    service.probes.apply(name, top=1)
    with service.catalog.transaction() as session:
        assert session.query(ProbeScore).count() == 120
    with pytest.raises(NotFoundError, match="unknown cohort 'nope'"):
        service.probes.apply(name, cohort="nope")


def test_training_in_a_thread_reports_progress_and_status(archive):
    job = archive.probes.begin("BRAF", folds=3)
    assert archive.probes.get(job.name)["status"] == "training"
    ticks = []
    thread = threading.Thread(target=job.run, kwargs={"progress": lambda *a: ticks.append(a)})
    thread.start()
    thread.join(60)
    assert archive.probes.get(job.name)["status"] == "done"
    assert [t[:2] for t in ticks] == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_failed_training_is_marked_failed(archive, monkeypatch):
    from eagle_index.probing import cv

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cv, "fit", broken)
    with pytest.raises(RuntimeError):
        archive.probes.train("BRAF", name="doomed")
    state = archive.probes.get("doomed")
    assert state["status"] == "failed" and "out of memory" in state["error"]
    with pytest.raises(InputError, match="is failed"):
        archive.probes.apply("doomed")


def test_fewshot_curve(archive):
    out = archive.probes.fewshot("BRAF", ks=[1, 4, 32, 100], draws=4)
    points = {p["k"]: p for p in out["curve"]}
    assert "skipped" in points[100]
    assert points[32]["auroc"]["mean"] > 0.95 and points[32]["draws"] == 4
    assert points[1]["n_test"] == 238
    assert out == archive.probes.fewshot("BRAF", ks=[1, 4, 32, 100], draws=4)


def test_compare_eagle_against_chief_with_delong_and_bh(archive):
    out = archive.probes.compare(["BRAF", "RANDOM"], kind="eagle", against="chief", folds=4)
    by_label = {r["label"]: r for r in out["results"]}
    braf = by_label["BRAF"]
    assert braf["a"]["auroc"]["mean"] > 0.95 and braf["b"]["auroc"]["mean"] < 0.75
    assert braf["delong"]["p_value"] < 1e-6
    assert braf["delong"]["auc_a"] == pytest.approx(braf["a"]["pooled"]["auroc"])
    ps = [r["delong"]["p_value"] for r in out["results"]]
    assert [r["p_adjusted"] for r in out["results"]] == pytest.approx(list(np.minimum(1, np.array(ps) * 2 / (np.argsort(np.argsort(ps)) + 1))))
    assert out["a"]["kind"] == "eagle" and out["b"]["signature"] == "sigC" and out["shared_patients"] == 240


# -- CLI ------------------------------------------------------------------------------------------------
def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the console entry point in-process: (exit code, stdout, stderr)."""
    from eagle_index.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_cli_contract(tmp_path, capsys):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = tmp_path / "data"
    x, y = planted(n=120)
    with EagleService(Settings(data_dir=data)) as service:
        fill_catalog(service, 120, {"eagle": ("sigA", x), "chief": ("sigC", clustered_vectors(120, 16, seed=3))}, {"BRAF": list(y)})

    code, out, _ = cli(capsys, "probe", "train", "BRAF", "--kind", "eagle", "--model", "logreg", "--folds", "3", "--json", "--data-dir", data)
    trained = json.loads(out)
    for metric in ("auroc", "auprc", "balanced_accuracy", "f1"):
        assert set(trained[metric]) == {"mean", "sd"} and isinstance(trained[metric]["mean"], float)
    assert code == 0 and trained["name"] == "BRAF-eagle-logreg" and trained["auroc"]["mean"] > 0.95

    code, out, _ = cli(capsys, "probe", "apply", "BRAF-eagle-logreg", "--top", "5", "--out", tmp_path / "ranked.csv", "--json", "--data-dir", data)
    assert len(json.loads(out)["candidates"]) == 5
    lines = (tmp_path / "ranked.csv").read_text().splitlines()
    assert lines[0] == "rank,patient,probability,predicted,label_value,in_training" and len(lines) == 121
    code, out, _ = cli(capsys, "probe", "apply", "BRAF-eagle-logreg", "--top", "3", "--data-dir", data)
    assert code == 0 and len(out.strip().splitlines()) == 4

    code, out, _ = cli(capsys, "probe", "list", "--json", "--data-dir", data)
    assert [p["name"] for p in json.loads(out)] == ["BRAF-eagle-logreg"]
    code, out, _ = cli(capsys, "probe", "show", "BRAF-eagle-logreg", "--data-dir", data)
    assert "auroc" in out and "sigA" in out
    code, out, _ = cli(capsys, "probe", "fewshot", "BRAF", "--ks", "1,2", "--draws", "2", "--json", "--data-dir", data)
    assert [p["k"] for p in json.loads(out)["curve"]] == [1, 2]
    code, out, _ = cli(capsys, "probe", "compare", "BRAF", "--against", "chief", "--folds", "3", "--json", "--data-dir", data)
    assert json.loads(out)["results"][0]["p_adjusted"] < 0.05

    code, _, err = cli(capsys, "probe", "train", "BRAF", "--folds", "90", "--data-dir", data)
    assert code == 2 and err.startswith("error: label 'BRAF'") and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, "probe", "apply", "nope", "--data-dir", data)
    assert code == 3 and err.startswith("error: unknown probe 'nope'")


def test_probe_help_does_not_import_torch_or_sklearn():
    code = ("import sys; from eagle_index.cli import app; import eagle_index.cli.probe_cmds, eagle_index.probes; "
            "print('torch' in sys.modules, 'sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.strip()
    assert out == "False False"


def test_recover_marks_unfinished_training_failed(service):
    from eagle_index.store.probes_repo import ProbeRepo

    repo = ProbeRepo(service.catalog)
    record = repo.create(None, "stuck", "MSI", "eagle", "sig", "logreg", {}, ["high", "low"])
    assert service.probes.recover() == 1
    got = service.probes.get(record.name)
    assert got["status"] == "failed" and "interrupted" in got["error"]
