"""Discovery check: a rare pattern planted in 4 of 60 patients is found from one of its tiles.

Set-up (real files, real OpenSlide reads, real DuckDB, real FAISS, the `tiny` models):
60 patients, one generated slide each (4 x 3 tiles of 448 µm at 2.0 µm/px), all "cells"
tissue (pink stroma with dark nuclei on a 16 µm lattice) with a per-patient stain jitter of
up to ±15 per RGB channel, like stain differences between cases. In 4 patients one tile
(at a different grid position in each) is painted with a rare pattern instead: a 32 µm
lattice of bright yellow membranes on dark purple (the "fat" texture with another palette).
A slide has 12 tissue tiles, fewer than the 25 candidates kept per slide, so every tile -
the planted one included - is stored, whatever CHIEF's (random) attention says.

Why the tiny encoder can separate the pattern: the tiny Virchow2 has random weights, but it is
a fixed, smooth function of the pixels; tiles of the same texture (differing only in stain
jitter and JPEG noise) give nearby tokens, and a texture with other colours and another
spatial period gives tokens far from them. The test measures this on the stored tokens
before relying on it: every planted tile must be closer to every other planted tile than to
any ordinary tile. Only then are the search claims meaningful: a planted-tile query must
return the other 3 planted patients among the top 5 patients, and an ordinary-tile query
must not put a planted patient first nor return a planted tile.

Cost: writing and ingesting the 60 slides takes about 80 s of CPU (measured: 77 s user time;
6 minutes of wall time on the 2-core machine shared at load average 12); the checks themselves
take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from eagle_index.config import Settings
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff

TILE = 448.0
N_PATIENTS = 60
PLANTED = {3: (1, 0), 17: (2, 1), 31: (0, 2), 52: (3, 1)}  # patient index -> (column, row) of the planted tile
RARE = ("fat", {"fat": (70, 40, 110), "membrane": (245, 210, 90)})


def _name(i: int) -> str:
    return f"PAT-{i:03d}"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    folder = tmp_path_factory.mktemp("discovery-slides")
    for i in range(N_PATIENTS):
        rng = np.random.default_rng(100 + i)
        palette = {"stroma": tuple(int(v) for v in np.array((232, 176, 206)) + rng.integers(-15, 16, 3)),
                   "nucleus": tuple(int(v) for v in np.array((92, 58, 138)) + rng.integers(-15, 16, 3))}
        overlays = []
        if i in PLANTED:
            col, row = PLANTED[i]
            overlays = [((col * TILE, row * TILE, TILE, TILE), RARE[0], RARE[1])]
        write_pyramidal_tiff(folder / f"{_name(i)}.tiff", mpp=2.0, size_um=(4 * TILE, 3 * TILE),
                             tissue_boxes_um=[(0.0, 0.0, 4 * TILE, 3 * TILE)], palette=palette, overlays=overlays, seed=i)
    settings = Settings(data_dir=tmp_path_factory.mktemp("discovery-data"), models="tiny", device="cpu")
    with EagleService(settings) as service:
        report = service.ingest([folder])
        assert not report.failed and len(report.ingested) == N_PATIENTS
        yield service


def _planted_xy(i: int) -> tuple[float, float]:
    col, row = PLANTED[i]
    return col * TILE, row * TILE


def test_tiny_encoder_separates_the_planted_pattern(archive):
    from eagle_index.store import tiles_repo

    (info,) = tiles_repo.tile_sets(archive.catalog)
    assert info.count == N_PATIENTS * 12  # every tile of every slide is stored
    ids, pids, raw = tiles_repo.load_tokens(archive.catalog, info.signature)
    rows = tiles_repo.tile_rows(archive.catalog, ids)
    planted = np.array([rows[int(t)].patient in {_name(i) for i in PLANTED}
                        and (rows[int(t)].x_um, rows[int(t)].y_um) == _planted_xy(int(rows[int(t)].patient[-3:]))
                        for t in ids])
    assert planted.sum() == len(PLANTED)
    tokens = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    among = tokens[planted] @ tokens[planted].T
    across = tokens[planted] @ tokens[~planted].T
    closest_other = among[~np.eye(len(PLANTED), dtype=bool)].min()
    # margin: the weakest planted-planted similarity beats the strongest planted-ordinary one clearly
    assert closest_other > across.max() + 0.1, (closest_other, across.max())


def test_planted_tile_finds_the_other_planted_patients(archive):
    test_tiny_encoder_separates_the_planted_pattern(archive)  # the premise, checked before it is relied on
    for query in PLANTED:
        x, y = _planted_xy(query)
        result = archive.regions.search({"slide": _name(query), "x_um": x + 10, "y_um": y + 10}, k=20, per_patient=1)
        assert result.query["stored_tile"] is True and (result.query["x_um"], result.query["y_um"]) == (x, y)
        top5 = [p.patient for p in result.patients[:5]]
        others = {_name(i) for i in PLANTED if i != query}
        assert others <= set(top5), (query, top5)
        assert _name(query) not in [p.patient for p in result.patients]  # the query's own patient is left out
        for hit in result.patients[:3]:  # what was found is the planted tile itself
            assert (hit.tiles[0].x_um, hit.tiles[0].y_um) == _planted_xy(int(hit.patient[-3:]))


def test_ordinary_tile_does_not_rank_planted_patients_first(archive):
    planted_names = {_name(i) for i in PLANTED}
    for query in (0, 10, 40):
        result = archive.regions.search({"slide": _name(query), "x_um": TILE * 2, "y_um": TILE * 2}, k=20, per_patient=3)
        assert result.patients[0].patient not in planted_names, result.patients[0]
        for hit in result.patients:
            if hit.patient in planted_names:  # an ordinary query may meet their ordinary tiles, never the planted one
                assert all((t.x_um, t.y_um) != _planted_xy(int(hit.patient[-3:])) for t in hit.tiles)
