"""`embed` and `ingest` through the CLI with real-size architectures (random weights written in
the official file layouts: CTransPath 27.5 M, CHIEF 1.2 M, Virchow2 631 M parameters).

Slow (about 1.5 minutes on a quiet 2-core CPU, up to 4 on a busy one; ~4 GB of memory per
process, one at a time): one generated slide with 10 tissue tiles, so Virchow2 runs on 10
tiles per command. The 2.5 GB of weights are deleted when the module is done.
"""

from functools import partial
import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run_cli as _run_cli

from model_fixtures import MANIFEST_DIR, write_official_layout_weights
from slide_fixtures import write_pyramidal_tiff


run_cli = partial(_run_cli, check=False, timeout=600, env={"EAGLE_INDEX_ALLOW_DIGEST_MISMATCH": "1"})  # the weights are random

# the real-size shapes come from ../shared/manifests: without them there is nothing real to test
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MANIFEST_DIR.is_dir(), reason="../shared/manifests not available")]

BOX = 448.0
SLIDE = "TCGA-RS-0001-01Z-00-DX1"
PATIENT = "TCGA-RS-0001"
N_TILES = 10


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realsize-weights")
    write_official_layout_weights(folder, preset="manifest")  # Virchow2 alone is 2.5 GB
    yield folder
    shutil.rmtree(folder, ignore_errors=True)  # pytest keeps the last runs' tmp dirs; not 2.5 GB each


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    folder = tmp_path_factory.mktemp("realsize-slides")
    made = write_pyramidal_tiff(folder / f"{SLIDE}.tiff", mpp=0.5, size_um=(7 * BOX, 4 * BOX),
                                tissue_boxes_um=[(BOX, BOX, 5 * BOX, 2 * BOX)])
    return made.path



def test_embed_and_ingest_cli_with_real_size_random_weights(weights_dir, slide, tmp_path):
    common = ("--models", "real", "--weights-dir", weights_dir, "--device", "cpu", "--json")
    out = tmp_path / "eagle.h5"
    result = run_cli("embed", slide, "--out", out, *common)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["patients"][PATIENT]["tiles"]) == N_TILES  # k = min(25, tiles)
    with h5py.File(out) as handle:
        assert list(handle) == [PATIENT]
        embedded = handle[PATIENT][()]
    assert embedded.shape == (1280,) and embedded.dtype == np.float32 and np.isfinite(embedded).all()
    assert np.linalg.norm(embedded) > 0

    data = tmp_path / "data"
    result = run_cli("ingest", slide, "--data-dir", data, *common)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [(i["patient"], i["tiles"]) for i in report["ingested"]] == [(PATIENT, N_TILES)]

    from eagle_index.store.catalog import Catalog

    catalog = Catalog.open(data / "catalog.duckdb")
    try:
        sets = {s.kind: s for s in catalog.vector_sets()}
        assert {kind: sets[kind].dim for kind in ("eagle", "chief", "mean-ctranspath")} == {
            "eagle": 1280, "chief": 768, "mean-ctranspath": 768}
        vectors = {kind: catalog.load_vectors(kind, sets[kind].signature)[1] for kind in sets}
    finally:
        catalog.close()
    for kind, matrix in vectors.items():
        assert matrix.shape[0] == 1 and np.isfinite(matrix).all(), kind
    np.testing.assert_allclose(vectors["eagle"][0], embedded, rtol=1e-5, atol=1e-6)  # embed and ingest agree
