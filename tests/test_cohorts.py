"""Cohorts: definitions and materialisation, exports, near-duplicates, leakage, 2-D maps."""

import csv
import json

import numpy as np
import pytest

from conftest import run_cli

from eagle_index.cohorts import CohortDefinition, duplicate_groups, pairs_above
from eagle_index.errors import InputError, NotFoundError


def _patients(service, names, vectors=None, labels=None, slides=None, kind="eagle", signature="sig"):
    def _tx(session):
        ids = [service.catalog.patient_id(session, p, create=True) for p in names]
        if vectors is not None:
            service.catalog.put_vectors(session, kind, signature, ids, np.asarray(vectors, np.float32), source="test")
        for pid, name in zip(ids, names):
            for label, value in (labels or {}).get(name, {}).items():
                service.catalog.put_label(session, pid, label, value, "test")
            for n, slide in enumerate((slides or {}).get(name, [])):
                service.catalog.add_slide(session, pid, slide, f"test:{name}:{n}", path=f"/archive/{slide}.svs", status="imported")
        return ids

    ids = service.catalog.write(_tx)
    return dict(zip(names, ids))


def random_unit(n, dim, seed):
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def archive(service):
    """40 patients: random 64-d vectors (max pairwise cosine well below 0.9), organ/split labels."""
    names = [f"P{i:02d}" for i in range(40)]
    vectors = random_unit(40, 64, 0)
    labels = {n: {"organ": ("lung", "colon")[i % 2], "split": ("train", "test")[i >= 30]} for i, n in enumerate(names)}
    slides = {n: [f"{n}-DX1"] + ([f"{n}-DX2"] if i % 5 == 0 else []) for i, n in enumerate(names)}
    _patients(service, names, vectors, labels, slides)
    return {"names": names, "vectors": vectors, "labels": labels}


def test_create_show_list_refresh(service, archive):
    preview = service.cohorts.preview({"labels": {"organ": ["lung"]}}, limit=5)
    assert preview["count"] == 20 and len(preview["members"]) == 5 and service.cohorts.list() == []
    made = service.cohorts.create("lung", labels=["organ=lung"])
    assert made["member_count"] == 20 and made["materialized_at"]
    assert made["definition"]["labels"] == {"organ": ["lung"]}
    shown = service.cohorts.show("lung")
    assert sorted(m["patient"] for m in shown["members"]) == [n for i, n in enumerate(archive["names"]) if i % 2 == 0]
    assert all(m["labels"]["organ"] == "lung" for m in shown["members"])
    assert [c["name"] for c in service.cohorts.list()] == ["lung"]
    _patients(service, ["NEW"], labels={"NEW": {"organ": "lung"}})
    assert service.cohorts.show("lung")["member_count"] == 20  # materialised, not live
    refreshed = service.cohorts.refresh("lung")
    assert refreshed["member_count"] == 21 and refreshed["materialized_at"] >= made["materialized_at"]
    with pytest.raises(InputError, match="already exists"):
        service.cohorts.create("lung", labels=["organ=colon"])
    assert service.cohorts.create("lung", labels=["organ=colon"], replace=True)["member_count"] == 20
    service.cohorts.delete("lung")
    with pytest.raises(NotFoundError, match="unknown cohort 'lung'"):
        service.cohorts.refresh("lung")


def test_cohort_of_cohorts_and_label_logic(service, archive):
    service.cohorts.create("lung", labels=["organ=lung"])
    test_lung = service.cohorts.create("test-lung", labels=["split=test"], cohorts=["lung"])
    expected = sorted(n for i, n in enumerate(archive["names"]) if i % 2 == 0 and i >= 30)
    assert sorted(service.cohorts.members("test-lung")) == expected == sorted(expected)
    assert test_lung["member_count"] == len(expected)
    both = service.cohorts.create("both", labels=["organ=lung", "organ=colon"])
    assert both["member_count"] == 40
    with pytest.raises(InputError, match="its own members"):
        service.cohorts.create("self", cohorts=["self"])


def test_seed_similarity_members_equal_brute_force(service, archive):
    vectors, names = archive["vectors"], archive["names"]
    made = service.cohorts.create("near", seeds=["P03", "P17"], min_similarity=0.15, labels=["organ=colon"])
    sims = np.maximum(vectors @ vectors[3], vectors @ vectors[17])
    expected = {names[i]: sims[i] for i in range(40) if sims[i] >= 0.15 and i % 2 == 1}
    shown = service.cohorts.show("near")
    assert {m["patient"] for m in shown["members"]} == set(expected)
    for m in shown["members"]:
        assert m["score"] == pytest.approx(expected[m["patient"]], abs=1e-5)
    assert [m["score"] for m in shown["members"]] == sorted((m["score"] for m in shown["members"]), reverse=True)
    assert made["definition"]["signature"] == "sig"  # resolved and saved, so refresh is reproducible
    with pytest.raises(InputError, match="similarity threshold"):
        CohortDefinition.build(seeds=["P01"])
    with pytest.raises(NotFoundError, match="unknown seed"):
        service.cohorts.create("bad", seeds=["NOPE"], min_similarity=0.5)


def test_probe_threshold(service, archive):
    from eagle_index.store.models import Probe, ProbeScore

    with pytest.raises(NotFoundError, match="unknown probe 'msi'"):
        service.cohorts.create("msi-high", probe="msi", min_probability=0.8)
    ids = service.catalog.patient_ids(archive["names"])
    def _tx(session):
        probe = Probe(name="msi", label="msi", kind="eagle", signature="sig", model="logreg", status="done")
        session.add(probe)
        session.flush()
        for rank, name in enumerate(archive["names"], start=1):
            session.add(ProbeScore(probe_id=probe.id, patient_id=ids[name], probability=rank / 40, rank=rank))

    service.catalog.write(_tx)
    made = service.cohorts.create("msi-high", probe="msi", min_probability=0.8, labels=["organ=lung"])
    shown = service.cohorts.show("msi-high")
    expected = {n: (i + 1) / 40 for i, n in enumerate(archive["names"]) if (i + 1) / 40 >= 0.8 and i % 2 == 0}
    assert {m["patient"]: m["score"] for m in shown["members"]} == pytest.approx(expected)
    assert made["definition"]["min_probability"] == 0.8
    assert CohortDefinition.build(probe="msi").min_probability == 0.5


def test_exports(service, archive, tmp_path):
    tmp_path = tmp_path / "exports"
    service.cohorts.create("lung", labels=["organ=lung"])
    _patients(service, ["NOVEC"], labels={"NOVEC": {"organ": "lung", "grade": "2"}})
    service.cohorts.refresh("lung")
    members = service.cohorts.members("lung")

    stamp = service.cohorts.export("lung", "stamp", tmp_path / "slides.csv")
    with open(tmp_path / "slides.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["PATIENT", "FILENAME"]
    assert {r["PATIENT"] for r in rows} == set(members) - {"NOVEC"}
    assert {"P00-DX1.svs", "P00-DX2.svs"} <= {r["FILENAME"] for r in rows}
    assert stamp["rows"] == len(rows) and "NOVEC" in stamp["notes"][0]

    service.cohorts.export("lung", "clinical", tmp_path / "clinical.csv")
    from eagle_index.formats.tables import read_clinical_table

    table = read_clinical_table(tmp_path / "clinical.csv")
    assert set(table.labels) == set(members) and table.columns == ["grade", "organ", "split"]
    assert table.labels["NOVEC"] == {"organ": "lung", "grade": "2"}

    h5 = service.cohorts.export("lung", "eagle-h5", tmp_path / "lung.h5")
    from eagle_index.formats.embeddings import read_embedding_file

    emb = read_embedding_file(tmp_path / "lung.h5")
    assert emb.layout == "eagle" and set(emb.ids) == set(members) - {"NOVEC"} and h5["rows"] == 20
    row = emb.ids.index("P00")
    np.testing.assert_allclose(emb.vectors[row], archive["vectors"][0], rtol=1e-6)

    service.cohorts.export("lung", "parquet", tmp_path / "lung.parquet")
    import pyarrow.parquet as pq

    frame = pq.read_table(tmp_path / "lung.parquet").to_pandas()
    assert set(frame["patient"]) == set(members)
    assert set(frame.columns) >= {"patient", "score", "slides", "organ", "split", "grade", "vector"}
    p00 = frame[frame["patient"] == "P00"].iloc[0]
    np.testing.assert_allclose(np.asarray(p00["vector"], np.float32), archive["vectors"][0], rtol=1e-6)
    assert list(p00["slides"]) == ["P00-DX1", "P00-DX2"]
    assert frame[frame["patient"] == "NOVEC"]["vector"].isna().all()
    meta = json.loads(pq.read_schema(tmp_path / "lung.parquet").metadata[b"eagle_index"])
    assert meta["kind"] == "eagle" and meta["cohort"] == "lung"

    with pytest.raises(InputError, match="unknown export format"):
        service.cohorts.export("lung", "xlsx", tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clinical.csv", "lung.h5", "lung.parquet", "slides.csv"]


@pytest.mark.parametrize("via_index", [False, True], ids=["exact", "index"])
def test_duplicates_find_planted_pairs_with_label_conflicts(service, archive, via_index, monkeypatch):
    import eagle_index.cohorts as cohorts

    if via_index:
        monkeypatch.setattr(cohorts, "DUPLICATE_EXACT_LIMIT", 0)
    rng = np.random.default_rng(5)
    copies = {"DUP-P04": "P04", "DUP-P11": "P11", "DUP2-P11": "P11"}
    vectors = [archive["vectors"][int(src[1:])] + 0.02 * rng.normal(size=64).astype(np.float32) for src in copies.values()]
    _patients(service, list(copies), vectors, labels={"DUP-P04": {"organ": "colon"}, "DUP-P11": {"organ": "colon"}})
    report = service.cohorts.duplicates(threshold=0.95)
    pairs = {tuple(sorted((p["a"], p["b"]))) for p in report["pairs"]}
    assert pairs == {("DUP-P04", "P04"), ("DUP-P11", "P11"), ("DUP2-P11", "P11"), ("DUP-P11", "DUP2-P11")}
    by_pair = {tuple(sorted((p["a"], p["b"]))): p for p in report["pairs"]}
    assert by_pair[("DUP-P04", "P04")]["label_conflicts"] == {"organ": ["lung", "colon"]} or \
        by_pair[("DUP-P04", "P04")]["label_conflicts"] == {"organ": ["colon", "lung"]}
    assert by_pair[("DUP-P11", "P11")]["label_conflicts"] == {}
    assert sorted(map(sorted, report["groups"])) == [["DUP-P04", "P04"], ["DUP-P11", "DUP2-P11", "P11"]]
    assert report["patients"] == 43 and report["pair_count"] == 4 and not report["truncated"]
    capped = service.cohorts.duplicates(threshold=0.95, max_pairs=1)
    assert len(capped["pairs"]) == 1 and capped["truncated"] and capped["pair_count"] == 4
    service.cohorts.create("lung", labels=["organ=lung"])
    within = service.cohorts.duplicates(threshold=0.95, cohort="lung")
    assert within["pairs"] == []  # the copies are labelled colon, or unlabelled


def test_leakage_finds_planted_duplicates_and_nothing_else(service, archive):
    rng = np.random.default_rng(7)
    # plant: two test patients that are rescans of training patients (P02, P25)
    planted = {"RESCAN-A": "P02", "RESCAN-B": "P25"}
    vectors = [archive["vectors"][int(src[1:])] + 0.03 * rng.normal(size=64).astype(np.float32) for src in planted.values()]
    _patients(service, list(planted), vectors, labels={n: {"split": "test"} for n in planted})
    # and an evaluation set that shares one training patient (P07) and holds one rescan
    ids = service.catalog.patient_ids(["P07", "P31", "P33", "RESCAN-A"])
    def _tx(session):
        for pid in ids.values():
            service.catalog.put_label(session, pid, "eval", "yes", "test")

    service.catalog.write(_tx)
    service.cohorts.create("train", labels=["split=train"])
    service.cohorts.create("test", labels=["split=test"])
    service.cohorts.create("eval", labels=["eval=yes"])

    report = service.cohorts.leakage("train", "test", threshold=0.9)
    assert report["shared_patients"] == []
    assert [(p["a"], p["b"]) for p in report["near_duplicates"]] == sorted(
        [("P02", "RESCAN-A"), ("P25", "RESCAN-B")], key=lambda ab: -next(p["score"] for p in report["near_duplicates"] if p["a"] == ab[0]))
    assert all(p["score"] >= 0.9 for p in report["near_duplicates"]) and report["leak"]
    assert report["members"] == {"train": 30, "test": 12}

    shared = service.cohorts.leakage("train", "eval", threshold=0.9)
    assert shared["shared_patients"] == ["P07"]
    assert [(p["a"], p["b"]) for p in shared["near_duplicates"]] == [("P02", "RESCAN-A")]

    clean = service.cohorts.leakage("test", "eval", threshold=0.9)  # RESCAN-A, P31, P33 are in both
    assert clean["shared_patients"] == ["P31", "P33", "RESCAN-A"] and clean["near_duplicates"] == []
    none = service.cohorts.leakage("train", "test", threshold=0.9999)
    assert none["near_duplicates"] == [] and none["shared_patients"] == [] and not none["leak"]


def test_pairs_above_and_groups_are_exact():
    m = random_unit(30, 8, 1)
    ids = np.arange(100, 130)
    pairs = pairs_above(m, ids, m, ids, 0.5, block=7)
    sims = m @ m.T
    expected = {(100 + i, 100 + j) for i in range(30) for j in range(i + 1, 30) if sims[i, j] >= 0.5}
    assert {(a, b) for a, b, _ in pairs} == expected
    assert duplicate_groups([(1, 2, 0.99), (2, 3, 0.98), (7, 8, 0.97)]) == [[1, 2, 3], [7, 8]]


def test_map_falls_back_to_pca_with_a_note_and_is_cached(service, archive, monkeypatch):
    import eagle_index.cohorts as cohorts

    monkeypatch.setattr(cohorts, "_umap_available", lambda: False)
    service.cohorts.create("lung", labels=["organ=lung"])
    first = service.cohorts.umap("lung")
    assert first["method"] == "pca" and "umap-learn is not installed" in first["note"] and not first["cached"]
    assert len(first["points"]) == 20 and {"patient", "x", "y", "labels"} <= set(first["points"][0])
    assert first["path"].startswith(str(service.settings.data_dir / "cache" / "umap" / "lung-eagle-"))
    second = service.cohorts.umap("lung")
    assert second["cached"] and second["points"] == first["points"]
    _patients(service, ["NEWLUNG"], random_unit(1, 64, 9), {"NEWLUNG": {"organ": "lung"}})
    service.cohorts.refresh("lung")
    third = service.cohorts.umap("lung")
    assert not third["cached"] and len(third["points"]) == 21 and third["path"] != first["path"]


@pytest.mark.slow
@pytest.mark.skipif(__import__("importlib").util.find_spec("umap") is None, reason="umap-learn not installed")
def test_umap_map(service, archive):
    service.cohorts.create("all", labels=["organ=*"])
    out = service.cohorts.umap("all")
    assert out["method"] == "umap" and out["note"] is None and out["params"]["n_neighbors"] == 15
    assert len(out["points"]) == 40 and all(np.isfinite([p["x"], p["y"]]).all() for p in out["points"])



def test_cohort_cli(settings, tmp_path):
    from eagle_index.service import EagleService

    with EagleService(settings) as svc:
        names = [f"P{i:02d}" for i in range(12)]
        vectors = random_unit(12, 16, 3)
        vectors[11] = vectors[0] + 0.01
        _patients(svc, names, vectors, {n: {"split": "train" if i < 8 else "test"} for i, n in enumerate(names)},
                  {n: [f"{n}-DX1"] for n in names})
    data = settings.data_dir
    made = json.loads(run_cli("cohort", "create", "train", "--label", "split=train", "--json", "--data-dir", data).stdout)
    assert made["member_count"] == 8
    run_cli("cohort", "create", "test", "--label", "split=test", "--data-dir", data)
    listed = json.loads(run_cli("cohort", "list", "--json", "--data-dir", data).stdout)
    assert [c["name"] for c in listed] == ["test", "train"]
    assert "P00" in run_cli("cohort", "show", "train", "--data-dir", data).stdout
    run_cli("cohort", "export", "train", "--format", "stamp", "--out", tmp_path / "train.csv", "--data-dir", data)
    assert (tmp_path / "train.csv").read_text().splitlines()[:2] == ["PATIENT,FILENAME", "P00,P00-DX1.svs"]
    leak = json.loads(run_cli("cohort", "leakage", "train", "test", "--json", "--data-dir", data).stdout)
    assert [(p["a"], p["b"]) for p in leak["near_duplicates"]] == [("P00", "P11")]
    gate = run_cli("cohort", "leakage", "train", "test", "--fail-on-leak", "--data-dir", data, check=False)
    assert gate.returncode == 1 and "P11" in gate.stdout
    dups = json.loads(run_cli("cohort", "duplicates", "--threshold", "0.99", "--json", "--data-dir", data).stdout)
    assert [(p["a"], p["b"]) for p in dups["pairs"]] == [("P00", "P11")]
    hits = json.loads(run_cli("search", "--patient", "P01", "--cohort", "test", "-k", "2", "--json", "--data-dir", data).stdout)
    assert len(hits) == 2 and all(h["labels"]["split"] == "test" for h in hits)
    missing = run_cli("cohort", "show", "nope", "--data-dir", data, check=False)
    assert missing.returncode == 3 and missing.stderr.strip() == "error: unknown cohort 'nope' (known: test, train)"
