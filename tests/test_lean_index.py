"""The memory-lean index ("lean", store/lean_index.py) finds what the exact index finds, for patients and tiles,
and follows in-place adds and removes (its fixed-point refine file included) through the real catalog;
an index saved in the older float16 format is rebuilt, not misread.

Oracle: exact brute force (numpy) over the same normalized vectors.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.config import IndexSettings, Settings
from eagle_index.store.derived_index import build_faiss_index, index_type_of
from eagle_index.store.lean_index import LeanIndex
from eagle_index.store.tile_index import tile_index_settings


@pytest.fixture(autouse=True)
def one_faiss_thread():
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def _normalized(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _exact(db, ids, queries, k):
    scores = queries @ db.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


@pytest.fixture(scope="module")
def clustered_set():
    """20,000 vectors + 100 held-out queries from one 50-cluster mixture, 128-d, scattered ids."""
    vectors = _normalized(clustered_vectors(20_100, 128, seed=5, clusters=50))
    ids = np.random.default_rng(2).choice(10**9, 20_000, replace=False).astype(np.int64) + 10**9
    return vectors[:20_000], ids, vectors[20_000:]


@pytest.mark.parametrize("what, settings, k", [("patients", IndexSettings(), 10),
                                               ("tiles", tile_index_settings(IndexSettings()), 20)])
def test_lean_top_k_matches_the_exact_one(clustered_set, tmp_path, what, settings, k):
    db, ids, queries = clustered_set
    index = build_faiss_index("lean", db.shape[1], settings, train=db, store_dir=tmp_path, stem=what)
    assert index_type_of(index) == "lean" and isinstance(index, LeanIndex)
    index.add_with_ids(db, ids)
    # RAM holds codes, not floats: the vectors are in the refine file, 2 bytes per value (int16 fixed point)
    assert index.refine_path.stat().st_size == db.size * 2
    want = 4 * k + 8 if what == "tiles" else k  # region search asks for 4k + 8 tiles
    scores, found = index.search(queries, want)
    truth, truth_scores = _exact(db, ids, queries, want)
    recall = np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth)])
    assert recall >= 0.95, recall
    assert (found[:, 0] == truth[:, 0]).all()  # top-1 exact after re-ranking
    # fixed-point rows: each value within 0.5 / 32767, so a 128-d cosine within sqrt(128) * 0.5 / 32767 = 1.73e-4
    np.testing.assert_allclose(scores[:, 0], truth_scores[:, 0], atol=1.73e-4)


def test_lean_in_place_remove_and_add_are_followed(clustered_set, tmp_path):
    db, ids, queries = clustered_set
    index = build_faiss_index("lean", db.shape[1], IndexSettings(), train=db, store_dir=tmp_path, stem="x")
    index.add_with_ids(db[:15_000], ids[:15_000])
    top1 = index.search(queries, 1)[1][:, 0]
    assert index.remove_ids(top1) == len(set(top1.tolist()))
    index.add_with_ids(db[15_000:], ids[15_000:])
    keep = np.ones(len(db), bool)
    keep[np.isin(ids, top1)] = False
    scores, found = index.search(queries, 10)
    truth, _ = _exact(db[keep], ids[keep], queries, 10)
    assert not np.isin(found, top1).any()
    assert (found[:, 0] == truth[:, 0]).all()
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]) >= 0.95
    # saved and read back: the same answers from the same refine file
    index.write(tmp_path / "x.faiss")
    again = LeanIndex.read(tmp_path / "x.faiss", index.k_factor)
    again.base.nprobe = index.base.nprobe
    np.testing.assert_array_equal(again.search(queries, 10)[1], found)


def _store_vectors(service, names, vectors, kind="eagle", signature="sig"):
    def _tx(session):
        ids = [service.catalog.patient_id(session, p, create=True) for p in names]
        service.catalog.put_vectors(session, kind, signature, ids, vectors, source="test")
        return ids

    return np.asarray(service.catalog.write(_tx), dtype=np.int64)


def test_patient_store_builds_reopens_and_follows_commits_with_the_lean_index(tmp_path):
    from eagle_index.service import EagleService

    vectors = clustered_vectors(3000, 32, seed=7, clusters=20)
    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type="auto", lean_above=1000, ivf_nlist=16))
    with EagleService(settings) as service:
        ids = _store_vectors(service, [f"P{i:05d}" for i in range(2500)], vectors[:2500])
        loaded = service.vectors.get("eagle", "sig")
        assert loaded.index_type == "lean"
        index_path, meta_path = service.vectors.paths("eagle", "sig")
        assert json.loads(meta_path.read_text())["index_type"] == "lean"
        service.vectors.unload()
        loaded = service.vectors.get("eagle", "sig")  # reopened from its file and refine file
        assert isinstance(loaded.index, LeanIndex)
        found, _ = service.vectors.search("eagle", "sig", vectors[:50], k=5)
        assert [f[0] for f in found] == ids[:50].tolist()

        # in place: drop 10 patients' vectors, add 500 new patients
        service.catalog.write(lambda s: service.catalog.delete_vectors(s, "eagle", "sig", ids[:10].tolist()))
        new_ids = _store_vectors(service, [f"N{i:05d}" for i in range(500)], vectors[2500:])
        same = service.vectors.get("eagle", "sig")
        assert same is loaded and same.index is loaded.index  # followed, not rebuilt
        assert same.ntotal == 2990 and same.index.tombstones == 10
        found, _ = service.vectors.search("eagle", "sig", vectors, k=5)
        assert [f[0] for f in found[10:2500]] == ids[10:2500].tolist()
        assert [f[0] for f in found[2500:]] == new_ids.tolist()
        assert not np.isin(np.concatenate(found), ids[:10]).any()
        # the saved files follow too: a reopen answers the same
        service.vectors.flush()
        service.vectors.unload()
        reopened = service.vectors.get("eagle", "sig")
        assert reopened.info.generation == same.info.generation and reopened.ntotal == 2990
        assert [f[0] for f in service.vectors.search("eagle", "sig", vectors[2500:], k=5)[0]] == new_ids.tolist()
        # a rebuild writes a new refine file and deletes the old one
        old_refine = reopened.index.refine_path
        rebuilt = service.vectors.rebuild(reopened.info)
        assert rebuilt.index.tombstones == 0 and rebuilt.index.refine_path != old_refine and not old_refine.exists()
        assert [p.name for p in index_path.parent.glob("*.i16")] == [rebuilt.index.refine_path.name]
        # a lost (or short) refine file is a stale index: the next open rebuilds it
        service.vectors.unload()
        rebuilt.index.refine_path.unlink()
        healed = service.vectors.get("eagle", "sig")
        assert healed.index_type == "lean" and healed.index.refine_path.exists() and healed.ntotal == 2990
        assert [f[0] for f in service.vectors.search("eagle", "sig", vectors[2500:], k=5)[0]] == new_ids.tolist()


def test_an_index_saved_with_float16_rows_is_rebuilt_in_the_fixed_point_format(tmp_path):
    """Format 2 (float16 refine rows, `.f16`) read as int16 would give nonsense scores: it must be
    rebuilt on open, and its old refine file removed."""
    from eagle_index.service import EagleService
    from eagle_index.store import lean_index

    vectors = clustered_vectors(1500, 32, seed=8, clusters=10)
    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type="lean", ivf_nlist=16))
    with EagleService(settings) as service:
        ids = _store_vectors(service, [f"P{i:05d}" for i in range(1500)], vectors)
        loaded = service.vectors.get("eagle", "sig")
        service.vectors.flush()
        index_path, _ = service.vectors.paths("eagle", "sig")
        service.vectors.unload()
        # rewrite the saved files as format 2 wrote them: float16 rows in a .f16 file named by the header
        old_refine = loaded.index.refine_path.with_suffix(".f16")
        old_refine.write_bytes(_normalized(vectors[np.argsort(ids)]).astype(np.float16).tobytes())
        loaded.index.refine_path.unlink()
        raw = index_path.read_bytes()
        size = int.from_bytes(raw[len(lean_index.MAGIC):len(lean_index.MAGIC) + 4], "little")
        start = len(lean_index.MAGIC) + 4
        header = json.loads(raw[start:start + size])
        header.update(format=2, refine=old_refine.name)
        packed = json.dumps(header).encode()
        index_path.write_bytes(raw[:len(lean_index.MAGIC)] + len(packed).to_bytes(4, "little") + packed + raw[start + size:])
        with pytest.raises(ValueError, match="lean index format 2"):
            LeanIndex.read(index_path, 128)

        healed = service.vectors.get("eagle", "sig")
        assert healed.index_type == "lean" and healed.index.refine_path.suffix == ".i16" and healed.ntotal == 1500
        assert not old_refine.exists()
        found, scores = service.vectors.search("eagle", "sig", vectors[:50], k=1)
        assert [f[0] for f in found] == ids[:50].tolist()
        np.testing.assert_allclose([s[0] for s in scores], 1.0, atol=1e-4)


def test_tile_index_uses_the_lean_type_and_follows_a_patient_change(tmp_path):
    from eagle_index.aggregation import SlideCandidates
    from eagle_index.service import EagleService
    from eagle_index.store import tiles_repo

    rng = np.random.default_rng(3)
    dim, per = 32, 25
    tokens = clustered_vectors(60 * per + per, dim, seed=9, clusters=12)
    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type="lean", ivf_nlist=16))
    with EagleService(settings) as service:
        def candidates(name, rows, y=0.0):
            n = len(rows)
            return SlideCandidates(name, np.arange(n), np.arange(n) * 448.0, np.full(n, y), rng.normal(size=n).astype(np.float32),
                                   rows.astype(np.float32))

        def put(i, rows):
            def _tx(session):
                pid = service.catalog.patient_id(session, f"T{i:03d}", create=True)
                sid = service.catalog.add_slide(session, pid, f"S{i:03d}", f"fp{i:03d}")
                tiles_repo.put_patient_tiles(session, pid, "tsig", [(sid, candidates(f"S{i:03d}", rows))], per)
                return pid, sid
            return service.catalog.write(_tx)

        owners = [put(i, tokens[i * per:(i + 1) * per]) for i in range(60)]
        loaded = service.regions.index.get("tsig")
        assert loaded.index_type == "lean" and loaded.ntotal == 60 * per
        query = tokens[per * 7 + 3]
        tids, scores, patients = service.regions.index.search("tsig", query, 20)
        all_ids, all_patients, raw = tiles_repo.load_tokens(service.catalog, "tsig")
        exact = all_ids[np.argsort(-(_normalized(raw) @ _normalized(query[None])[0]), kind="stable")[:20]]
        assert tids[0] == exact[0] and patients[0] == owners[7][0]
        assert len(set(tids) & set(exact)) / 20 >= 0.95

        # patient 7 gets new tiles (old ones removed, new ones added): followed in place
        pid, sid = owners[7]
        fresh = tokens[60 * per:]
        service.catalog.write(lambda s: tiles_repo.put_patient_tiles(s, pid, "tsig", [(sid, candidates("S007", fresh, y=448.0))], per))
        same = service.regions.index.get("tsig")
        assert same is loaded and same.ntotal == 60 * per
        now_ids, now_patients, now_raw = tiles_repo.load_tokens(service.catalog, "tsig")
        added = np.setdiff1d(now_ids, all_ids)
        assert len(added) == per and not np.isin(now_ids, all_ids[all_patients == pid]).any()
        np.testing.assert_array_equal(same.ids, now_ids)
        for row in range(per):  # each new tile: the exact top-1 (itself), the old tiles of patient 7 never
            tids, _, patients = service.regions.index.search("tsig", fresh[row], 20)
            scores = _normalized(now_raw) @ _normalized(fresh[row][None])[0]
            assert tids[0] == now_ids[np.argmax(scores)] and patients[0] == now_patients[np.argmax(scores)]
            assert not np.isin(tids, all_ids[all_patients == pid]).any()


def test_lean_above_comes_from_the_environment(monkeypatch):
    from eagle_index.errors import InputError

    monkeypatch.setenv("EAGLE_INDEX_LEAN_ABOVE", "5000000")
    monkeypatch.setenv("EAGLE_INDEX_SEARCH_BATCH_MS", "2")
    index = Settings.load().index
    assert (index.lean_above, index.search_batch_ms, index.type) == (5_000_000, 2.0, "auto")
    assert Settings().index.lean_above is None  # opt-in: only the variable (or a Settings field) turns it on
    monkeypatch.setenv("EAGLE_INDEX_LEAN_ABOVE", "0")
    with pytest.raises(InputError, match="^EAGLE_INDEX_LEAN_ABOVE='0': expected "):
        Settings.load()


def test_the_ivf_re_ranking_depth_comes_from_the_environment(monkeypatch):
    from eagle_index.errors import InputError

    assert Settings.load().index.ivf_refine_k_factor == 128
    monkeypatch.setenv("EAGLE_INDEX_IVF_REFINE_K_FACTOR", "32")
    index = Settings.load().index
    assert (index.ivf_refine_k_factor, index.lean_refine_k_factor, index.type) == (32, 320, "auto")
    for bad in ("0", "many", "1.5"):
        monkeypatch.setenv("EAGLE_INDEX_IVF_REFINE_K_FACTOR", bad)
        with pytest.raises(InputError, match=f"^EAGLE_INDEX_IVF_REFINE_K_FACTOR='{re.escape(bad)}': expected a whole number"):
            Settings.load()


def test_warm_reads_the_whole_refine_file_and_changes_no_answer(clustered_set, tmp_path):
    db, ids, queries = clustered_set
    index = build_faiss_index("lean", db.shape[1], IndexSettings(), train=db, store_dir=tmp_path, stem="w")
    index.add_with_ids(db, ids)
    before = index.search(queries, 10)
    assert index.warm() == index.refine_path.stat().st_size == db.size * 2
    after = index.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])


@pytest.mark.parametrize("fraction, warmed", [(1.0, True), (0.0, False), (1e-9, False)])
def test_an_opened_lean_index_is_warmed_in_the_background_only_when_it_fits(tmp_path, monkeypatch, fraction, warmed):
    """`lean_warm_fraction` of the machine's memory: a refine file up to it is read in on a daemon thread."""
    import threading

    from eagle_index.service import EagleService

    calls = threading.Event()
    monkeypatch.setattr(LeanIndex, "warm", lambda self: calls.set() or 0)
    vectors = clustered_vectors(1200, 32, seed=4, clusters=8)
    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type="lean", ivf_nlist=16, lean_warm_fraction=fraction))
    with EagleService(settings) as service:
        _store_vectors(service, [f"P{i:05d}" for i in range(1200)], vectors)
        assert service.vectors.get("eagle", "sig").index_type == "lean"
        assert calls.wait(timeout=30 if warmed else 0.5) is warmed


def test_a_one_shot_reader_does_not_warm_the_refine_file(tmp_path, monkeypatch):
    """A CLI `search` (a read-only service) searches once and exits: it leaves the refine file alone."""
    import threading

    from eagle_index.service import EagleService

    calls = threading.Event()
    monkeypatch.setattr(LeanIndex, "warm", lambda self: calls.set() or 0)
    vectors = clustered_vectors(1200, 32, seed=5, clusters=8)
    settings = Settings(data_dir=tmp_path / "data", index=IndexSettings(type="lean", ivf_nlist=16, lean_warm_fraction=1.0))
    with EagleService(settings) as service:
        _store_vectors(service, [f"P{i:05d}" for i in range(1200)], vectors)
        service.vectors.get("eagle", "sig")
    assert calls.wait(30)  # the writer's service warmed what it built
    calls.clear()
    with EagleService(settings, read_only=True) as reader:
        assert reader.vectors.get("eagle", "sig").index_type == "lean"
        for thread in [t for t in threading.enumerate() if t.name.startswith("warm ")]:
            thread.join(30)
    assert not calls.is_set()
