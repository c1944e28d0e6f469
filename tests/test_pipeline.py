"""The EAGLE pipeline on generated slides with the tiny preset (same code, small dims)."""

from functools import partial
import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run_cli as _run_cli

from eagle_index.config import Settings
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff


run_cli = partial(_run_cli, check=False)

BOX = 448.0


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides")
    made = {
        "TCGA-AA-0001-01Z-00-DX1": write_pyramidal_tiff(folder / "TCGA-AA-0001-01Z-00-DX1.tiff", mpp=0.5, size_um=(8 * BOX, 6 * BOX),
                                                        tissue_boxes_um=[(BOX, BOX, 4 * BOX, 3 * BOX)]),
        "TCGA-AA-0001-01Z-00-DX2": write_pyramidal_tiff(folder / "TCGA-AA-0001-01Z-00-DX2.tiff", mpp=1.0, size_um=(6 * BOX, 6 * BOX),
                                                        tissue_boxes_um=[(0, 2 * BOX, 3 * BOX, 3 * BOX)], texture="fat"),
        "TCGA-BB-0002-01Z-00-DX1": write_pyramidal_tiff(folder / "TCGA-BB-0002-01Z-00-DX1.tiff", mpp=0.25, size_um=(6 * BOX, 5 * BOX),
                                                        tissue_boxes_um=[(2 * BOX, BOX, 3 * BOX, 3 * BOX)]),
    }
    return {name: s.path for name, s in made.items()}


@pytest.fixture(scope="module")
def tiny_service(tmp_path_factory):
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models="tiny", device="cpu")
    with EagleService(settings) as service:
        yield service


def _numpy_raw_attention(state, feats):
    """CHIEF gated attention written out from the definition in docs/pipeline.md."""
    w = {k: v.detach().cpu().numpy().astype(np.float64) for k, v in state.items()}
    x = feats.astype(np.float64)
    h1 = np.maximum(x @ w["attention_net.0.weight"].T + w["attention_net.0.bias"], 0)
    a = np.tanh(h1 @ w["attention_net.3.attention_a.0.weight"].T + w["attention_net.3.attention_a.0.bias"])
    g = 1 / (1 + np.exp(-(h1 @ w["attention_net.3.attention_b.0.weight"].T + w["attention_net.3.attention_b.0.bias"])))
    return ((a * g) @ w["attention_net.3.attention_c.weight"].T + w["attention_net.3.attention_c.bias"])[:, 0]


def test_patient_vector_recomputes_independently_from_artifacts(tiny_service, slides, tmp_path):
    from eagle_index.slides import open_slide, read_tiles

    names = ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2"]
    patients = tiny_service.embed([slides[n] for n in names], patient="P", artifacts_dir=tmp_path)
    models = tiny_service.models
    state = models.chief.module.state_dict()
    pool = []
    for order, name in enumerate(sorted(names)):
        with h5py.File(tmp_path / f"{name}.h5") as handle:
            feats, coords = handle["feats"][()], handle["coords"][()]
            assert handle.attrs["unit"] == "um" and handle.attrs["tile_size_um"] == 448.0  # STAMP v2 layout
            np.testing.assert_allclose(handle["attention"][()], _numpy_raw_attention(state, feats), atol=1e-5)
        scores = _numpy_raw_attention(state, feats)
        row_major = np.lexsort((coords[:, 0], coords[:, 1])).argsort()
        pool += [(-scores[i], order, row_major[i], name, coords[i]) for i in range(len(scores))]
    pool.sort(key=lambda t: t[:3])
    chosen = pool[:25]
    tokens = []
    for _, _, _, name, (x_um, y_um) in chosen:
        with open_slide(slides[name]) as slide:
            tokens.append(models.virchow2.encode(read_tiles(slide, [x_um], [y_um]))[0])
    expected = np.mean(tokens, axis=0)
    got = patients["P"].eagle
    np.testing.assert_allclose(got / np.linalg.norm(got), expected / np.linalg.norm(expected), atol=1e-5)
    assert [(t["slide"], t["x_um"], t["y_um"]) for t in patients["P"].selection] == [(c[3], c[4][0], c[4][1]) for c in chosen]


def test_adding_a_slide_later_equals_ingesting_all_at_once(tmp_path, slides):
    a, b = slides["TCGA-AA-0001-01Z-00-DX1"], slides["TCGA-AA-0001-01Z-00-DX2"]
    vectors = []
    for batches in ([[a, b]], [[a], [b]]):
        with EagleService(Settings(data_dir=tmp_path / str(len(batches)), models="tiny", device="cpu")) as service:
            for batch in batches:
                service.ingest(batch)
            ids, matrix = service.catalog.load_vectors("eagle", service.models.signature("eagle"))
            vectors.append(matrix)
            assert service.stats()["slides"] == 2 and service.stats()["patients"] == 1
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_ingest_skips_a_renamed_copy_and_reports_a_corrupt_slide(tiny_service, slides, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy(slides["TCGA-BB-0002-01Z-00-DX1"], inbox / "TCGA-BB-0002-01Z-00-DX1.tiff")
    first = tiny_service.ingest([inbox])
    assert [i.patient for i in first.ingested] == ["TCGA-BB-0002"]
    shutil.copy(slides["TCGA-BB-0002-01Z-00-DX1"], inbox / "TCGA-BB-0002-01Z-00-DX1-rescan-copy.tiff")
    data = slides["TCGA-AA-0001-01Z-00-DX1"].read_bytes()
    (inbox / "TCGA-CC-0003-01Z-00-DX1.tiff").write_bytes(data[: len(data) // 3])
    second = tiny_service.ingest([inbox])
    assert len(second.skipped) == 2  # the first file and its renamed copy
    assert [f.file.endswith("TCGA-CC-0003-01Z-00-DX1.tiff") for f in second.failed] == [True]
    assert "TCGA-CC-0003-01Z-00-DX1.tiff" in second.failed[0].error
    assert tiny_service.stats()["vectors"]["eagle"] >= 1



def test_embed_and_ingest_cli_with_tiny_models(slides, tmp_path):
    out = tmp_path / "eagle.h5"
    result = run_cli("embed", *slides.values(), "--out", out, "--models", "tiny", "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["signature"].startswith("tiny:eagle-v1:")
    with h5py.File(out) as handle:
        assert sorted(handle) == ["TCGA-AA-0001", "TCGA-BB-0002"]
        assert handle["TCGA-AA-0001"].shape == (handle["TCGA-AA-0001"].shape[0],) and handle["TCGA-AA-0001"].dtype == np.float32
        assert "eagle_index_provenance" in handle.attrs
    data = tmp_path / "data"
    result = run_cli("ingest", *slides.values(), "--models", "tiny", "--device", "cpu", "--data-dir", data, "--json")
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["ingested"]) == 3
    hits = json.loads(run_cli("search", "--patient", "TCGA-AA-0001", "--data-dir", data, "--json").stdout)
    assert [h["patient"] for h in hits] == ["TCGA-BB-0002"]
    with h5py.File(out) as handle:  # embed and ingest agree
        raw = handle["TCGA-AA-0001"][()]
    from eagle_index.store.catalog import Catalog

    catalog = Catalog.open(data / "catalog.duckdb")
    sets = {s.kind: s.signature for s in catalog.vector_sets()}
    ids, matrix = catalog.load_vectors("eagle", sets["eagle"])
    catalog.close()
    np.testing.assert_allclose(matrix[0], raw, rtol=1e-5, atol=1e-6)


def test_ingest_cli_fails_with_one_line_for_a_missing_slide_folder(tmp_path):
    result = run_cli("ingest", tmp_path / "nope", "--models", "tiny", "--data-dir", tmp_path / "d")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith("nope: file not found")
