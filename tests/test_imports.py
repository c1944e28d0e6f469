"""Imports: real STAMP v1 files, EAGLE/STAMP v2 embeddings, clinical tables, and bad inputs."""

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import DEMO_FEATURES, clustered_vectors, needs_shared, write_eagle_h5, write_stamp_v2_tiles
from eagle_index.errors import InputError
from eagle_index.formats.features import read_tile_features


@needs_shared(DEMO_FEATURES)
def test_real_tcga_features_import_and_search_matches_numpy(service):
    report = service.import_features(DEMO_FEATURES / "slide_table.csv", DEMO_FEATURES / "ctranspath")
    assert (report.patients, report.slides, report.vectors["mean-ctranspath"]) == (7, 7, 7)
    table = pd.read_csv(DEMO_FEATURES / "slide_table.csv")
    means = {}
    for row in table.itertuples():
        feats = read_tile_features(DEMO_FEATURES / "ctranspath" / row.FILENAME).feats
        means[row.PATIENT] = feats.astype(np.float64).mean(axis=0)
    names = sorted(means)
    matrix = np.stack([means[n] for n in names])
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    for query in names:
        scores = matrix @ matrix[names.index(query)]
        expected = [(names[i], scores[i]) for i in np.argsort(-scores) if names[i] != query][:4]
        hits = service.search_patient(query, k=4, kind="mean-ctranspath")
        assert [h.patient for h in hits] == [e[0] for e in expected]
        np.testing.assert_allclose([h.score for h in hits], [e[1] for e in expected], atol=1e-5)


@needs_shared(DEMO_FEATURES)
def test_stamp_v1_demo_coordinates_are_row_col_and_become_x_y_microns():
    path = next((DEMO_FEATURES / "ctranspath").glob("*.h5"))
    tiles = read_tile_features(path)
    assert tiles.layout == "stamp-v1" and tiles.tile_um == 448.0
    assert tiles.x_um.max() > tiles.y_um.max()  # the demo slides are landscape (formats.md)
    assert np.all(tiles.x_um % 448 == 0)


@needs_shared(DEMO_FEATURES)
def test_second_import_adds_nothing(service):
    for _ in range(2):
        report = service.import_features(DEMO_FEATURES / "slide_table.csv", DEMO_FEATURES / "ctranspath")
    assert report.already_imported
    stats = service.stats()
    assert (stats["patients"], stats["slides"], stats["vectors"]) == (7, 7, {"mean-ctranspath": 7})


def _v2_slides(folder, names_to_patients, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for slide, patient in names_to_patients.items():
        n = int(rng.integers(5, 30))
        write_stamp_v2_tiles(folder / f"{slide}.h5", rng.normal(size=(n, dim)), np.arange(n) * 448.0, np.zeros(n))
        rows.append({"PATIENT": patient, "FILENAME": f"{slide}.svs"})
    return rows


def test_stamp_v2_features_group_slides_into_patients(service, tmp_path):
    rows = _v2_slides(tmp_path / "ctp", {"s1": "A", "s2": "A", "s3": "B"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    report = service.import_features(tmp_path / "table.csv", tmp_path / "ctp")
    assert (report.patients, report.slides) == (2, 3)
    ids, matrix = service.catalog.load_vectors("mean-ctranspath", service.catalog.vector_sets()[0].signature)
    expected_a = np.concatenate([read_tile_features(tmp_path / "ctp" / f"{s}.h5").feats for s in ("s1", "s2")]).mean(axis=0)
    np.testing.assert_allclose(matrix[0], expected_a, rtol=1e-5)


def test_slide_table_naming_missing_files_stores_nothing(service, tmp_path):
    rows = _v2_slides(tmp_path / "ctp", {"s1": "A"})
    rows.append({"PATIENT": "B", "FILENAME": "missing-slide.svs"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    with pytest.raises(InputError, match=r"table\.csv: 1 slide\(s\) have no feature file: missing-slide\.svs"):
        service.import_features(tmp_path / "table.csv", tmp_path / "ctp")
    assert service.stats()["patients"] == 0


def test_truncated_h5_names_the_file_and_stores_nothing(service, tmp_path):
    rows = _v2_slides(tmp_path / "ctp", {"s1": "A", "s2": "B"})
    pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
    data = (tmp_path / "ctp" / "s2.h5").read_bytes()
    (tmp_path / "ctp" / "s2.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="s2.h5"):
        service.import_features(tmp_path / "table.csv", tmp_path / "ctp")
    assert service.stats()["patients"] == 0


def test_eagle_output_file_import_and_search(service, tmp_path):
    vectors = clustered_vectors(12, 1280)
    ids = [f"TCGA-AA-{i:04d}" for i in range(12)]
    write_eagle_h5(tmp_path / "cohort.h5", ids, vectors)
    report = service.import_embeddings([tmp_path / "cohort.h5"])
    assert report.vectors == {"eagle": 12}
    hits = service.search_patient(ids[0], k=3, kind="eagle")
    assert len(hits) == 3 and hits[0].score >= hits[-1].score
    again = service.import_embeddings([tmp_path / "cohort.h5"])
    assert again.already_imported and service.stats()["vectors"] == {"eagle": 12}


def test_eagle_file_with_a_nan_row_stores_nothing(service, tmp_path):
    vectors = clustered_vectors(4, 1280)
    vectors[2, 7] = np.nan
    write_eagle_h5(tmp_path / "bad.h5", ["a", "b", "c", "d"], vectors)
    with pytest.raises(InputError, match=r"bad\.h5.*NaN"):
        service.import_embeddings([tmp_path / "bad.h5"])
    assert service.stats()["patients"] == 0


def test_wrong_dimension_against_existing_set_is_refused(service, tmp_path):
    write_eagle_h5(tmp_path / "a.h5", ["a", "b"], clustered_vectors(2, 1280))
    write_eagle_h5(tmp_path / "b.h5", ["c", "d"], clustered_vectors(2, 1000))
    service.import_embeddings([tmp_path / "a.h5"])
    with pytest.raises(InputError, match=r"b\.h5: vectors have dimension 1000, expected 1280"):
        service.import_embeddings([tmp_path / "b.h5"])
    assert service.stats()["patients"] == 2


def test_duplicate_patient_ids_across_files_are_refused(service, tmp_path):
    import h5py

    for name in ("x", "y"):
        with h5py.File(tmp_path / f"{name}.h5", "w") as handle:
            handle.create_dataset("feats", data=np.ones(16, np.float32))
            handle.attrs.update({"encoder": "eagle", "feat_type": "patient"})
    (tmp_path / "dup").mkdir()
    shutil.copy(tmp_path / "x.h5", tmp_path / "dup" / "P1.h5")
    (tmp_path / "dup" / "sub").mkdir()
    shutil.copy(tmp_path / "y.h5", tmp_path / "dup" / "sub" / "P1.h5")
    with pytest.raises(InputError, match="'P1' appears twice"):
        service.import_embeddings([tmp_path / "dup"])
    assert service.stats()["patients"] == 0


def test_stamp_v2_patient_embeddings_folder(service, tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    for pid in ("P1", "P2", "P3"):
        with h5py.File(tmp_path / f"{pid}.h5", "w") as handle:
            handle.create_dataset("feats", data=rng.normal(size=768).astype(np.float32))
            handle.attrs.update({"encoder": "chief", "feat_type": "patient", "stamp_version": "2.5.0"})
    report = service.import_embeddings([tmp_path])
    assert report.vectors == {"chief": 3}
    assert [h.patient for h in service.search_patient("P1", k=5, kind="chief")] != []


def test_clinical_table_labels_and_unknown_patients_reported(service, tmp_path):
    write_eagle_h5(tmp_path / "c.h5", ["P1", "P2"], clustered_vectors(2, 8))
    service.import_embeddings([tmp_path / "c.h5"])
    pd.DataFrame({"PATIENT": ["P1", "P2", "P9"], "MSI": ["high", "low", "high"], "SITE": ["colon", "rectum", None]}).to_excel(tmp_path / "clini.xlsx", index=False)
    report = service.import_labels(tmp_path / "clini.xlsx")
    assert report.labels == 4 and report.unknown_patients == ["P9"]
    assert "P9" in report.notes[0]
    assert service.catalog.labels_of([1])[1] == {"MSI": "high", "SITE": "colon"}
    assert service.stats()["patients"] == 2


def test_clinical_table_with_conflicting_duplicate_rows_is_refused(service, tmp_path):
    (tmp_path / "clini.csv").write_text("PATIENT,MSI\nP1,high\nP1,low\n")
    with pytest.raises(InputError, match="clini.csv: patient 'P1' appears twice"):
        service.import_labels(tmp_path / "clini.csv")


def test_not_hdf5_is_a_clear_error(service, tmp_path):
    (tmp_path / "notes.h5").write_text("not hdf5")
    with pytest.raises(InputError, match=r"notes\.h5: not a readable HDF5 file"):
        service.import_embeddings([tmp_path / "notes.h5"])


def test_features_with_chief_and_virchow2_give_the_eagle_vector(tmp_path):
    """import-features with a CHIEF model and Virchow2 tile features: rows matched by coordinates."""
    from eagle_index.config import Settings
    from eagle_index.models import specs_for
    from eagle_index.service import EagleService

    specs = specs_for("tiny")
    rng = np.random.default_rng(3)
    rows, expected_pool = [], []
    settings = Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")
    with EagleService(settings) as service:
        chief = service._try_load_chief()[0]
        for order, (slide, patient) in enumerate({"s1": "A", "s2": "A"}.items()):
            n = 30
            x_um, y_um = (np.arange(n) % 6) * 448.0, (np.arange(n) // 6) * 448.0
            feats = rng.normal(size=(n, specs["ctranspath"].dim)).astype(np.float16)
            tokens = rng.normal(size=(n, specs["virchow2"].dim)).astype(np.float16)
            (tmp_path / "ctp").mkdir(exist_ok=True)
            (tmp_path / "vir").mkdir(exist_ok=True)
            write_stamp_v2_tiles(tmp_path / "ctp" / f"{slide}.h5", feats, x_um, y_um)
            shuffled = rng.permutation(n)  # Virchow2 rows in another order, as STAMP v2 writes them
            write_stamp_v2_tiles(tmp_path / "vir" / f"{slide}.h5", tokens[shuffled], x_um[shuffled], y_um[shuffled], extractor="virchow2")
            scores = chief.raw_attention(feats.astype(np.float32))
            expected_pool += [(-float(scores[i]), order, float(y_um[i]), float(x_um[i]), tokens[i].astype(np.float32)) for i in range(n)]
            rows.append({"PATIENT": patient, "FILENAME": f"{slide}.svs"})
        pd.DataFrame(rows).to_csv(tmp_path / "table.csv", index=False)
        report = service.import_features(tmp_path / "table.csv", tmp_path / "ctp", tmp_path / "vir")
        assert report.vectors == {"mean-ctranspath": 1, "chief": 1, "eagle": 1}
        expected_pool.sort(key=lambda t: t[:4])
        expected = np.mean([t[4] for t in expected_pool[:25]], axis=0)
        eagle_set = next(s for s in service.catalog.vector_sets() if s.kind == "eagle")
        assert eagle_set.signature.startswith("tiny:eagle-v1:")
        _, matrix = service.catalog.load_vectors("eagle", eagle_set.signature)
        np.testing.assert_allclose(matrix[0], expected, rtol=1e-5, atol=1e-6)
