"""Region search: the tile index follows the catalog (ingest, re-aggregation, stale or deleted files,
signatures never mixed), and `search-tiles` / POST /api/v1/search/tiles work as the README says.

One tiny-model archive (real slides, OpenSlide, DuckDB, FAISS) is built once; the tests run in
file order: service-level checks first, then the CLI (which needs the catalog closed), then the
CLI through a running daemon that owns the catalog.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eagle_index.config import Settings
from eagle_index.service import EagleService
from slide_fixtures import write_pyramidal_tiff

TILE = 448.0


def _slide(folder: Path, name: str, cols: int, rows: int, seed: int, texture: str = "cells") -> Path:
    return write_pyramidal_tiff(folder / f"{name}.tiff", mpp=2.0, size_um=(cols * TILE, rows * TILE),
                                tissue_boxes_um=[(0.0, 0.0, cols * TILE, rows * TILE)], seed=seed, texture=texture).path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp("region-slides")
    slides = {
        "A1": _slide(folder, "PA-A1", 6, 5, 1),  # 30 tissue tiles -> 25 candidates
        "A2": _slide(folder, "PA-A2", 3, 3, 2, "fat"),  # 9 more for patient PA, ingested later
        "B": _slide(folder, "PB-B1", 4, 3, 3),
        "C": _slide(folder, "PC-C1", 4, 3, 4, "fat"),
    }
    settings = Settings(data_dir=tmp_path_factory.mktemp("region-data"), models="tiny", device="cpu")
    service = EagleService(settings)
    report = service.ingest([slides["A1"]], patient="PA")
    report2 = service.ingest([slides["B"]], patient="PB")
    report3 = service.ingest([slides["C"]], patient="PC")
    assert not (report.failed or report2.failed or report3.failed)
    state = {"service": service, "slides": slides, "settings": settings, "folder": folder}
    yield state
    if state["service"] is not None:
        state["service"].close()


def _sig(service) -> str:
    return service.models.signature("eagle")


def test_ingest_stores_every_candidate_and_the_index_holds_them(world):
    from eagle_index.store import tiles_repo

    service = world["service"]
    (info,) = tiles_repo.tile_sets(service.catalog)
    assert info.signature == _sig(service) and info.dim == 96
    assert info.count == 25 + 12 + 12  # PA's slide keeps its top 25 of 30 tiles; PB and PC all 12
    loaded = service.regions.index.get(info.signature)
    assert loaded.ntotal == info.count and loaded.index_type == "flat"
    index_path, meta_path = service.regions.index.paths(info.signature)
    assert index_path.is_file() and json.loads(meta_path.read_text())["generation"] == info.generation
    pid = service.catalog.patient_ids(["PA"])["PA"]
    rows = tiles_repo.stored_patient_tiles(service.catalog, pid)
    assert sorted(r.patient_rank for r in rows) == list(range(1, 26))
    # the ranks are the patient's selection (same tiles and order as its EAGLE vector uses)
    from eagle_index.search import read_tile_selection

    selected = read_tile_selection(service.catalog.artifact_paths(pid), 25)
    assert [(r.x_um, r.y_um) for r in rows] == list(zip(selected.x_um.tolist(), selected.y_um.tolist()))

    result = service.regions.search({"patient": "PA", "tile": 1}, k=6, per_patient=3)
    assert [p.patient for p in result.patients] and "PA" not in [p.patient for p in result.patients]
    assert sum(len(p.tiles) for p in result.patients) == 6 and all(len(p.tiles) <= 3 for p in result.patients)
    scores = [t.score for p in result.patients for t in p.tiles]
    assert all(-1.0001 <= s <= 1.0001 for s in scores)
    assert [p.score for p in result.patients] == sorted((p.score for p in result.patients), reverse=True)
    own = service.regions.search({"patient": "PA", "tile": 1}, k=1, per_patient=1, include_same_patient=True)
    assert own.patients[0].patient == "PA" and own.patients[0].score == pytest.approx(1.0, abs=1e-5)
    assert (own.patients[0].tiles[0].x_um, own.patients[0].tiles[0].y_um) == (rows[0].x_um, rows[0].y_um)


def test_reaggregation_updates_the_loaded_index_in_place(world):
    from eagle_index.store import tiles_repo

    service = world["service"]
    sig = _sig(service)
    loaded = service.regions.index.get(sig)
    before, generation = loaded.ntotal, loaded.info.generation
    report = service.ingest([world["slides"]["A2"]], patient="PA")
    assert not report.failed
    after = service.regions.index.get(sig)
    assert after is loaded  # followed the commit: no rebuild
    assert after.ntotal == before + 9 and after.info.generation == generation + 1
    assert json.loads(service.regions.index.paths(sig)[1].read_text())["generation"] == after.info.generation
    pid = service.catalog.patient_ids(["PA"])["PA"]
    rows = tiles_repo.stored_patient_tiles(service.catalog, pid)
    assert len(rows) == 34
    assert sorted(r.patient_rank for r in rows if r.patient_rank) == list(range(1, 26))
    assert sum(r.patient_rank is None for r in rows) == 9  # candidates of a slide, not among the patient's 25
    # the new slide's tiles are searchable (fat texture: PC's slide is the other fat slide)
    a2 = [r for r in rows if r.slide == "PA-A2"]
    result = service.regions.search({"slide": "PA-A2", "x_um": a2[0].x_um, "y_um": a2[0].y_um}, k=3, per_patient=3)
    assert result.query["stored_tile"] and result.patients[0].patient == "PC"


def test_deleted_stale_or_corrupt_index_file_is_rebuilt(world, caplog):
    service = world["service"]
    sig = _sig(service)
    tiles = service.regions.index
    index_path, meta_path = tiles.paths(sig)
    expected = tiles.get(sig).ntotal
    query = {"patient": "PB", "tile": 1}
    reference = service.regions.search(query, k=5).as_dict()

    def reopen():
        tiles.unload()
        with caplog.at_level(logging.INFO, logger="eagle_index.store.tile_index"):
            caplog.clear()
            got = service.regions.search(query, k=5).as_dict()
        assert got == reference
        assert tiles.get(sig).ntotal == expected
        return caplog.text

    index_path.unlink()
    assert "missing: rebuilding" in reopen() and index_path.is_file()
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "generation": meta["generation"] - 1}))
    assert "stale" in reopen()
    assert json.loads(meta_path.read_text())["generation"] == meta["generation"]
    index_path.write_bytes(b"not a faiss index")
    assert "unreadable" in reopen()
    assert "rebuilding" not in reopen()  # a valid file is loaded as it is


def test_signatures_are_never_mixed(world):
    from eagle_index.aggregation import SlideCandidates
    from eagle_index.store import tiles_repo

    service = world["service"]
    sig = _sig(service)
    other = "tiny:eagle-v1:someothermodels"
    pid = service.catalog.patient_ids(["PC"])["PC"]
    slide_id = tiles_repo.slides_named(service.catalog, "PC-C1")[0].id
    rng = np.random.default_rng(0)
    fake = SlideCandidates("PC-C1", np.arange(4), np.full(4, 5000.0) + np.arange(4) * TILE, np.full(4, 5000.0),
                           rng.normal(size=4).astype(np.float32), rng.normal(size=(4, 96)).astype(np.float32))
    service.catalog.write(lambda session: tiles_repo.put_patient_tiles(session, pid, other, [(slide_id, fake)], 25))
    try:
        sets = {s.signature: s for s in tiles_repo.tile_sets(service.catalog)}
        assert set(sets) == {sig, other} and sets[other].count == 4
        assert service.regions.index.paths(sig)[0] != service.regions.index.paths(other)[0]
        result = service.regions.search({"patient": "PB", "tile": 1}, k=100, per_patient=100)
        assert result.query["signature"] == sig
        assert all(t.x_um < 5000 for p in result.patients for t in p.tiles)
        assert sum(len(p.tiles) for p in result.patients) == sets[sig].count - 12  # every tile but PB's own
        odd = service.regions.search({"slide": "PC-C1", "x_um": 5000.0, "y_um": 5000.0}, k=100, per_patient=100,
                                     include_same_patient=True)
        assert odd.query["signature"] == other
        assert [p.patient for p in odd.patients] == ["PC"] and all(t.x_um >= 5000 for t in odd.patients[0].tiles)
        assert service.regions.index.get(other).ntotal == 4
    finally:
        service.catalog.write(lambda session: tiles_repo.put_patient_tiles(session, pid, other, [], 25))
    assert tiles_repo.tile_set(service.catalog, other).count == 0


def test_filters_and_bad_queries(world):
    from eagle_index.errors import InputError, NotFoundError
    from eagle_index.search import SearchFilters

    service = world["service"]
    only_pc = service.regions.search({"patient": "PB", "tile": 1}, k=5, filters=SearchFilters.build(exclude_patients=["PA"]))
    assert {p.patient for p in only_pc.patients} == {"PC"}
    floor = service.regions.search({"patient": "PB", "tile": 1}, k=50, per_patient=50, filters=SearchFilters.build(min_score=0.99))
    assert all(t.score >= 0.99 for p in floor.patients for t in p.tiles)
    with pytest.raises(NotFoundError, match="has no stored tile #99"):
        service.regions.search({"patient": "PB", "tile": 99})
    with pytest.raises(NotFoundError, match="unknown slide"):
        service.regions.search({"slide": "nope", "x_um": 0, "y_um": 0})
    with pytest.raises(InputError, match="minimum is 448 × 448 µm"):
        service.regions.search({"slide": "PB-B1", "box": [0, 0, 300, 600]})


def test_box_and_image_queries_encode_with_the_archive_models(world, tmp_path):
    from PIL import Image

    from eagle_index.slides import open_slide, read_tiles

    service = world["service"]
    rows = service.regions.search({"patient": "PB", "tile": 1}, k=1, per_patient=1, include_same_patient=True)
    x, y = rows.patients[0].tiles[0].x_um, rows.patients[0].tiles[0].y_um
    # a box that is exactly a stored tile reads the very pixels the tile was embedded from
    boxed = service.regions.search({"slide": "PB-B1", "box": [x, y, TILE, TILE]}, k=1, per_patient=1, include_same_patient=True)
    assert boxed.query["tiles"] == 1 and boxed.patients[0].patient == "PB"
    # the typed query is the same search as its JSON shape
    from eagle_index.region_queries import BoxQuery, SlideRef, TileRankQuery

    typed = service.regions.search(BoxQuery(SlideRef("PB-B1"), (x, y, TILE, TILE)), k=1, per_patient=1, include_same_patient=True)
    assert typed.as_dict() == boxed.as_dict()
    assert service.regions.search(TileRankQuery("PB", 1), k=1, per_patient=1, include_same_patient=True).as_dict() == rows.as_dict()
    assert boxed.patients[0].score == pytest.approx(1.0, abs=1e-4)
    # the same tile as a PNG at 1 µm/px (448 px): resampled to 2 µm/px with the pipeline's filter
    with open_slide(world["slides"]["B"], settings=service.settings.tiling) as slide:
        pixels = read_tiles(slide, [x], [y], service.settings.tiling)[0]
    big = np.asarray(Image.fromarray(pixels).resize((448, 448), Image.NEAREST))
    path = tmp_path / "region.png"
    Image.fromarray(big).save(path)
    found = service.regions.search({}, k=1, per_patient=1, image=path, mpp=1.0)
    assert found.query["tiles"] == 1 and found.query["mpp_source"] == "given"
    assert found.patients[0].patient == "PB" and found.patients[0].score > 0.99
    # resolution recorded in the file (PNG pHYs) is used when --mpp is not given
    Image.fromarray(big).save(path, dpi=(25400.0, 25400.0))
    assert service.regions.search({}, k=1, image=path).query["mpp_source"] == "file"


CLI_OK = [sys.executable, "-m", "eagle_index"]


def _cli(data: Path, *args, timeout=300):
    return subprocess.run([*CLI_OK, *map(str, args), "--data-dir", str(data)], capture_output=True, text=True, timeout=timeout)


def test_cli_search_tiles(world, tmp_path):
    from PIL import Image

    world["service"].close()
    world["service"] = None
    data = world["settings"].data_dir
    out = _cli(data, "search-tiles", "--patient", "PA", "--tile", "1", "-k", "4", "--per-patient", "2", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["query"]["patient"] == "PA" and result["query"]["tile"] == 1
    assert set(result["patients"][0]) >= {"patient", "score", "tiles"}
    assert set(result["patients"][0]["tiles"][0]) >= {"slide", "x_um", "y_um", "score"}
    assert sum(len(p["tiles"]) for p in result["patients"]) == 4
    text = _cli(data, "search-tiles", "--slide", "PB-B1", "--x-um", "10", "--y-um", "10", "-k", "3")
    assert text.returncode == 0 and "µm" in text.stdout, text.stderr
    # images: no resolution and no --mpp is refused; too small is refused with the minimum in µm
    png = tmp_path / "q.png"
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(png)
    no_mpp = _cli(data, "search-tiles", "--image", png, "--models", "tiny")
    assert no_mpp.returncode != 0 and "--mpp" in no_mpp.stderr and "Traceback" not in no_mpp.stderr
    small = _cli(data, "search-tiles", "--image", png, "--mpp", "1.0", "--models", "tiny")
    assert small.returncode != 0 and "minimum is 448 × 448 µm" in small.stderr and "Traceback" not in small.stderr
    both = _cli(data, "search-tiles", "--patient", "PA", "--tile", "1", "--image", png)
    assert both.returncode != 0 and "exactly one query" in both.stderr
    boxed = _cli(data, "search-tiles", "--slide", "PB-B1", "--box", f"0,0,{2 * TILE:.0f},{TILE:.0f}", "--models", "tiny", "--json")
    assert boxed.returncode == 0, boxed.stderr
    assert json.loads(boxed.stdout)["query"]["tiles"] == 2
    from eagle_index.slides import open_slide, read_tiles

    with open_slide(world["slides"]["C"], settings=world["settings"].tiling) as slide:
        Image.fromarray(read_tiles(slide, [0.0], [0.0], world["settings"].tiling)[0]).save(png)
    image = _cli(data, "search-tiles", "--image", png, "--mpp", "2.0", "--models", "tiny", "-k", "1", "--json")
    assert image.returncode == 0, image.stderr
    assert json.loads(image.stdout)["patients"][0]["patient"] == "PC"
    filtered = _cli(data, "search-tiles", "--patient", "PA", "--tile", "1", "--label", "MSI=high", "--json")
    # no patient has a label named MSI: an error naming it (issue 21), not an empty answer
    assert filtered.returncode == 3 and "unknown label 'MSI'" in filtered.stderr, filtered.stderr
    reindex = _cli(data, "reindex", "--json")
    assert reindex.returncode == 0 and any(r["kind"] == "tiles" for r in json.loads(reindex.stdout)), reindex.stderr


def test_cli_search_tiles_through_a_running_daemon(world, tmp_path):
    from PIL import Image

    from test_daemon import Daemon

    data = world["settings"].data_dir
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    local = json.loads(_cli(data, "search-tiles", "--patient", "PB", "--tile", "2", "--json").stdout)
    daemon = Daemon(data, inbox)
    try:
        remote = _cli(data, "search-tiles", "--patient", "PB", "--tile", "2", "--json")
        assert remote.returncode == 0, remote.stderr
        got = json.loads(remote.stdout)
        assert got["patients"] == local["patients"] and got["query"] == local["query"]
        # an image through the server's API (multipart), encoded by the server's models
        from eagle_index.slides import open_slide, read_tiles

        with open_slide(world["slides"]["B"], settings=world["settings"].tiling) as slide:
            pixels = read_tiles(slide, [0.0], [0.0], world["settings"].tiling)[0]
        png = tmp_path / "q.png"
        Image.fromarray(pixels).save(png)
        image = _cli(data, "search-tiles", "--image", png, "--mpp", "2.0", "--json")
        assert image.returncode == 0, image.stderr
        assert json.loads(image.stdout)["query"]["image"] == "q.png"
        # a slide ingested by the daemon's worker is in the tile index at once
        new = _slide(tmp_path, "PD-D1", 3, 3, 9, "fat")
        import shutil

        shutil.copy(new, inbox / new.name)
        daemon.wait(lambda s: s["queue"]["done"] == 1, "1 done")
        after = json.loads(_cli(data, "search-tiles", "--slide", "PC-C1", "--x-um", "10", "--y-um", "10", "--json").stdout)
        assert "PD-D1" in {t["slide"] for p in after["patients"] for t in p["tiles"]}
    finally:
        assert daemon.stop() == 0
