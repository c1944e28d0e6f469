"""CTransPath features are rounded to float16 before CHIEF, as the reference stores them (STAMP files).

So CHIEF scores, the top-25 and the CHIEF / mean-CTransPath vectors computed by `ingest` are the
ones the reference pipeline gets from its float16 feature files, bit for bit; and the rule is a
signed pipeline parameter, so vectors made before it never share an index with vectors made after.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import write_stamp_v2_tiles
from eagle_index import aggregation, pipeline
from eagle_index.config import Settings
from eagle_index.models import pipeline_params, signature_for_kind
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff

BOX = 448.0


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precision")
    slide = write_pyramidal_tiff(folder / "TCGA-PP-0001-01Z-00-DX1.tiff", mpp=0.5, size_um=(7 * BOX, 6 * BOX),
                                 tissue_boxes_um=[(BOX, BOX, 5 * BOX, 4 * BOX)], seed=3).path
    settings = Settings(data_dir=folder / "data", models="tiny", device="cpu")
    with EagleService(settings) as service:
        report = service.ingest([slide])
        assert len(report.ingested) == 1
        (artifact,) = (settings.data_dir / "artifacts").rglob("*.h5")
        chief = next(s for s in service.catalog.vector_sets() if s.kind == "chief")
        vectors = {}
        for kind in ("chief", "mean-ctranspath"):
            info = next(s for s in service.catalog.vector_sets() if s.kind == kind)
            _, matrix = service.catalog.load_vectors(kind, info.signature)
            vectors[kind] = matrix[0]
        yield {"slide": slide, "artifact": artifact, "service": service, "chief_signature": chief.signature,
               "vectors": vectors, "folder": folder}


def test_stored_features_are_float16_values_and_chief_scored_them(ingested):
    service = ingested["service"]
    with h5py.File(ingested["artifact"]) as handle:
        feats, attention = handle["feats"][()], handle["attention"][()]
        cand_scores = handle["candidates/scores"][()]
    assert feats.dtype == np.float32 and len(feats) == 20
    np.testing.assert_array_equal(feats, feats.astype(np.float16).astype(np.float32))  # exactly representable
    # CHIEF on the features as a STAMP file holds them gives the stored scores and top-k, bit for bit
    stamp = write_stamp_v2_tiles(ingested["folder"] / "stamp.h5", feats, np.zeros(len(feats)), np.zeros(len(feats)))
    with h5py.File(stamp) as handle:
        assert handle["feats"].dtype == np.float16
        from_file = handle["feats"][()].astype(np.float32)
    scores = service.models.chief.raw_attention(from_file)
    np.testing.assert_array_equal(scores, attention)
    np.testing.assert_array_equal(np.sort(scores)[::-1][: len(cand_scores)], np.sort(cand_scores)[::-1])


def test_import_of_the_same_float16_features_gives_the_same_vectors(ingested, tmp_path):
    """The reference path (STAMP float16 features -> CHIEF) and `ingest` agree on CHIEF and mean vectors."""
    with h5py.File(ingested["artifact"]) as handle:
        feats, coords = handle["feats"][()], handle["coords"][()]
    ctp = tmp_path / "ctp"
    ctp.mkdir()
    write_stamp_v2_tiles(ctp / "TCGA-PP-0001-01Z-00-DX1.h5", feats, coords[:, 0], coords[:, 1])
    (tmp_path / "table.csv").write_text("PATIENT,FILENAME\nTCGA-PP-0001,TCGA-PP-0001-01Z-00-DX1.svs\n")
    with EagleService(Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")) as service:
        report = service.import_features(tmp_path / "table.csv", ctp)
        assert report.vectors.get("chief") == 1
        for kind in ("chief", "mean-ctranspath"):
            info = next(s for s in service.catalog.vector_sets() if s.kind == kind)
            _, matrix = service.catalog.load_vectors(kind, info.signature)
            np.testing.assert_array_equal(matrix[0], ingested["vectors"][kind], err_msg=kind)


def test_the_rounding_is_part_of_the_signature(ingested):
    params = pipeline_params(Settings(), "eagle")
    assert params["features"] == "float16"
    digests = ingested["service"].models.digests
    before = {k: v for k, v in pipeline_params(Settings(), "chief").items() if k != "features"}
    assert signature_for_kind("chief", digests, before, preset="tiny") != ingested["chief_signature"]
    assert ingested["service"].models.provenance("chief")["params"]["features"] == "float16"


def test_float32_features_would_pick_another_tile_where_scores_nearly_tie():
    """Why it matters: 1.0004 and 1.0 are one float16 value; the reference sees a tie (first tile wins)."""
    feats = np.array([[1.0], [1.0004]], np.float32)
    xs = np.array([0.0, 448.0])
    exact = feats[:, 0]  # a score that is the feature itself
    rounded = feats.astype(pipeline.FEATURE_DTYPE).astype(np.float32)[:, 0]
    assert aggregation.slide_candidates("s", exact, xs, xs * 0, 1).tile_index[0] == 1
    assert aggregation.slide_candidates("s", rounded, xs, xs * 0, 1).tile_index[0] == 0
