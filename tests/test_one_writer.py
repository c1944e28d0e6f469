"""One writer: catalog writes run on the writer thread; searches never see a half-applied commit.

The stress tests search from several threads while another thread adds, replaces and removes
rows for `EAGLE_STRESS_SECONDS` (default 20 s for patient vectors, half that for tiles); every
answer is checked against the catalog inside the same read lock, and the final in-memory index
must equal the catalog. The region-search one also has threads that search without an outer read
lock: their answers must be consistent on their own (the service's own read section).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from conftest import clustered_vectors
from eagle_index.store.catalog import WriteOutsideWriter
from eagle_index.store.writer import ReadWriteLock, SingleWriter

DIM = 32


def _store(service, names, vectors):
    catalog = service.catalog

    def write(session):
        ids = [catalog.patient_id(session, n, create=True) for n in names]
        catalog.put_vectors(session, "eagle", "sig", ids, vectors, source="test")
        return ids

    return catalog.write(write)


def test_a_write_outside_the_writer_is_refused(service):
    _store(service, ["P0", "P1"], clustered_vectors(2, DIM))
    with pytest.raises(WriteOutsideWriter):
        with service.catalog.transaction() as session:
            service.catalog.patient_id(session, "SNEAKY", create=True)
    assert "SNEAKY" not in service.catalog.patient_ids(["SNEAKY"])


def test_writes_run_on_one_thread_in_order_and_errors_reach_the_caller():
    writer = SingleWriter()
    seen: list[tuple[str, int]] = []

    def job(n):
        seen.append((threading.current_thread().name, n))
        return n * n

    results = []
    threads = [threading.Thread(target=lambda n=n: results.append(writer.run(lambda: job(n)))) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [n * n for n in range(20)]
    assert {name for name, _ in seen} == {"catalog-writer"}
    with pytest.raises(ZeroDivisionError):
        writer.run(lambda: 1 / 0)
    writer.close()


def test_read_write_lock_excludes_and_allows_nested_reads():
    lock = ReadWriteLock()
    state = {"writing": False, "overlap": False}

    def reader():
        for _ in range(200):
            with lock.read():
                with lock.read():  # nested read while a writer may be waiting: no deadlock
                    if state["writing"]:
                        state["overlap"] = True

    def writer():
        for _ in range(200):
            with lock.write():
                state["writing"] = True
                time.sleep(0.0001)
                state["writing"] = False

    threads = [threading.Thread(target=reader) for _ in range(4)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not state["overlap"]
    with lock.read():
        with pytest.raises(RuntimeError, match="read lock"):
            with lock.write():
                pass


def test_searches_during_commits_and_removals(service):
    """8 searching threads vs one mutating thread: no exception, every hit in the catalog, index == rebuild."""
    import faiss

    seconds = float(os.environ.get("EAGLE_STRESS_SECONDS", "20"))
    n = 400
    names = [f"P{i:04d}" for i in range(n)]
    vectors = clustered_vectors(n, DIM, seed=1)
    ids = dict(zip(names, _store(service, names, vectors)))
    catalog = service.catalog
    searcher = service.searcher
    stop = threading.Event()
    errors: list[BaseException] = []
    answers = [0]
    commits = [0]

    def search_loop(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                query = rng.normal(size=DIM).astype(np.float32)
                with catalog.reading():  # the check sees the catalog the answer was given from
                    result = searcher.search_vector(query, k=10, kind="eagle", signature="sig")
                    present = set(catalog.vector_ids("eagle", "sig").tolist())
                got = [ids[h.patient] for h in result.hits]
                missing = [h.patient for h, pid in zip(result.hits, got) if pid not in present]
                assert not missing, f"hits not in the catalog: {missing}"
                scores = [h.score for h in result.hits]
                assert scores == sorted(scores, reverse=True)
                answers[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    def mutate_loop() -> None:
        rng = np.random.default_rng(99)
        try:
            while not stop.is_set():
                chosen = [int(ids[names[i]]) for i in rng.choice(n, size=int(rng.integers(1, 12)), replace=False)]
                if rng.random() < 0.5:
                    catalog.write(lambda s, c=chosen: catalog.delete_vectors(s, "eagle", "sig", c))
                else:
                    new = rng.normal(size=(len(chosen), DIM)).astype(np.float32)
                    catalog.write(lambda s, c=chosen, v=new: catalog.put_vectors(s, "eagle", "sig", c, v, source="stress"))
                commits[0] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=search_loop, args=(i,)) for i in range(8)] + [threading.Thread(target=mutate_loop)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    assert not errors, repr(errors[0])
    assert answers[0] > 50 and commits[0] > 20, (answers[0], commits[0])

    info = catalog.vector_set("eagle", "sig")
    live = service.vectors.get("eagle", "sig")
    assert live.info.generation == info.generation
    live_ids = np.sort(faiss.vector_to_array(live.index.id_map))
    cat_ids, raw = catalog.load_vectors("eagle", "sig")
    np.testing.assert_array_equal(live_ids, cat_ids)
    rebuilt = service.vectors.rebuild(info)
    for pid, row in zip(cat_ids, raw):
        expected = row / np.linalg.norm(row)
        np.testing.assert_allclose(live.index.reconstruct(int(pid)), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rebuilt.index.reconstruct(int(pid)), expected, rtol=1e-5, atol=1e-6)


def test_readers_waiting_for_a_writer_go_before_the_next_writer():
    """Writes queued back to back (the owner storing batches from several threads) must not
    starve searches: the readers blocked by one write get in before the next write starts."""
    lock = ReadWriteLock()
    order: list[str] = []
    first_holds, release_first = threading.Event(), threading.Event()

    def first():
        with lock.write():
            first_holds.set()
            release_first.wait(10)
            order.append("write 1")

    def second():
        with lock.write():
            order.append("write 2")

    def search():
        with lock.read():
            order.append("read")

    t1 = threading.Thread(target=first)
    t1.start()
    first_holds.wait(10)
    readers = [threading.Thread(target=search) for _ in range(3)]
    for t in readers:
        t.start()
    t2 = threading.Thread(target=second)
    deadline = time.monotonic() + 10
    while lock._blocked_readers < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    t2.start()
    while lock._writers_waiting < 1 and time.monotonic() < deadline:
        time.sleep(0.001)
    release_first.set()
    for t in [t1, t2, *readers]:
        t.join(10)
    assert order == ["write 1", "read", "read", "read", "write 2"]
    # and a writer still goes before readers that come while it waits (no writer starvation)
    before = len(order)
    with lock.read():
        waiting = threading.Thread(target=second)
        waiting.start()
        while lock._writers_waiting < 1 and time.monotonic() < deadline + 10:
            time.sleep(0.001)
        late = threading.Thread(target=search)
        late.start()
        time.sleep(0.05)
        assert len(order) == before  # neither the writer (our read holds it off) nor the late reader is in yet
    waiting.join(10)
    late.join(10)
    assert order[-2:] == ["write 2", "read"]


TILE_SIG = "tiny:stress-tiles"


def _candidates(slide_name: str, tokens: np.ndarray, first_x: int):
    from eagle_index.aggregation import SlideCandidates

    n = len(tokens)
    x_um = (first_x + np.arange(n)) * 448.0  # every tile ever stored has its own coordinates
    return SlideCandidates(slide_name, np.arange(n, dtype=np.int64), x_um, np.zeros(n), np.linspace(1.0, 0.5, n).astype(np.float32),
                           tokens.astype(np.float32))


def test_region_searches_during_tile_commits_and_removals(service, monkeypatch):
    """Region searches from 6 threads while another adds, replaces and removes patients' tiles.

    Two searchers hold `catalog.reading()` around the search and check every hit against the
    catalog inside it. Four search without an outer lock: their answers must hold together on
    their own (each hit a tile stored for that patient, its score the cosine with the query, no
    exception), which needs the service to find, group and name hits in one read section. At the
    end the tile index, followed in place all along, must equal the catalog."""
    from eagle_index.store import tiles_repo

    seconds = float(os.environ.get("EAGLE_STRESS_SECONDS", "20")) / 2
    catalog, regions = service.catalog, service.regions
    rng = np.random.default_rng(7)
    anchors = [f"Q{i}" for i in range(3)]  # query patients: never changed
    others = [f"T{i:03d}" for i in range(16)]  # few: most commits touch tiles that searches return
    stored: dict[tuple[int, float], tuple[str, np.ndarray]] = {}  # (slide id, x µm) -> (patient, unit token), ever stored
    next_x = [0]

    def fresh(name: str, sid: int, n: int):
        tokens = clustered_vectors(n, DIM, seed=int(rng.integers(1 << 30)))
        cand = _candidates(f"{name}-S", tokens, next_x[0])
        next_x[0] += n
        for x, t in zip(cand.x_um, tokens):
            stored[(sid, float(x))] = (name, t / np.linalg.norm(t))
        return cand

    def setup(session):
        out = {}
        for name in anchors + others:
            pid = catalog.patient_id(session, name, create=True)
            out[name] = (pid, catalog.add_slide(session, pid, f"{name}-S", f"fp-{name}"))
        return out

    slides = catalog.write(setup)
    initial = [(slides[n][0], [(slides[n][1], fresh(n, slides[n][1], 6))]) for n in anchors + others[:12]]
    catalog.write(lambda s: tiles_repo.put_patients_tiles(s, TILE_SIG, initial, 25))
    first = regions.index.get(TILE_SIG)
    stop = threading.Event()
    committed = threading.Condition()
    read_rows = tiles_repo.tile_rows

    def tile_rows_after_a_commit(*args, **kwargs):
        """Naming hits outside the read lock lets commits land between the search and the naming; make
        that window certain (wait for the next commit) instead of a matter of timing. Inside the read
        lock no commit can land, so nothing waits."""
        if not catalog.lock.holds_read():
            with committed:
                seen = commits[0]
                committed.wait_for(lambda: commits[0] > seen or stop.is_set(), timeout=2)
        return read_rows(*args, **kwargs)

    monkeypatch.setattr(tiles_repo, "tile_rows", tile_rows_after_a_commit)
    errors: list[BaseException] = []
    answers, commits = [0, 0], [0]

    def check(result, k=8, per_patient=3):
        (qsid, qx) = result.query["slide_id"], result.query["x_um"]
        query = stored[(qsid, float(qx))][1]
        assert sum(len(p.tiles) for p in result.patients) <= k
        for p in result.patients:
            assert p.patient not in (result.query["patient"],) and 1 <= len(p.tiles) <= per_patient
            assert p.score == p.tiles[0].score
            for tile in p.tiles:
                owner, token = stored[(tile.slide_id, tile.x_um)]  # KeyError: a tile never stored
                assert owner == p.patient, (owner, p.patient)
                assert abs(tile.score - float(token @ query)) < 1e-4, (tile.score, float(token @ query))
        scores = [p.score for p in result.patients]
        assert scores == sorted(scores, reverse=True)

    def search_loop(seed: int, outer_lock: bool) -> None:
        r = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                query = {"patient": anchors[int(r.integers(len(anchors)))], "tile": int(r.integers(1, 7))}
                if outer_lock:
                    with catalog.reading():  # the check sees the catalog the answer was given from
                        result = regions.search(query, k=8, per_patient=3)
                        for p in result.patients:
                            pid = catalog.patient_ids([p.patient])[p.patient]
                            present = {(t.slide_id, t.x_um) for t in tiles_repo.stored_patient_tiles(catalog, pid, TILE_SIG)}
                            missing = [(t.slide_id, t.x_um) for t in p.tiles if (t.slide_id, t.x_um) not in present]
                            assert not missing, f"hits of {p.patient} not in the catalog: {missing}"
                else:
                    result = regions.search(query, k=8, per_patient=3)
                check(result)
                answers[outer_lock] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    def mutate_loop() -> None:
        r = np.random.default_rng(99)
        try:
            while not stop.is_set():
                chosen = [others[i] for i in r.choice(len(others), size=int(r.integers(1, 4)), replace=False)]
                change = []
                for name in chosen:
                    pid, sid = slides[name]
                    # removed (no slide left with tiles) or replaced by new tiles (a patient without tiles gets some)
                    change.append((pid, [] if r.random() < 0.4 else [(sid, fresh(name, sid, int(r.integers(2, 8))))]))
                catalog.write(lambda s, c=change: tiles_repo.put_patients_tiles(s, TILE_SIG, c, 25))
                with committed:
                    commits[0] += 1
                    committed.notify_all()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            stop.set()

    threads = ([threading.Thread(target=search_loop, args=(i, i % 3 == 0)) for i in range(6)]
               + [threading.Thread(target=mutate_loop)])
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    with committed:
        committed.notify_all()
    for t in threads:
        t.join(60)
    assert not errors, repr(errors[0])
    assert min(answers) > 10 and commits[0] > 10, (answers, commits[0])

    info = tiles_repo.tile_set(catalog, TILE_SIG)
    live = regions.index.get(TILE_SIG)
    assert live is first and live.info.generation == info.generation  # followed in place, never rebuilt
    ids, patients, raw = tiles_repo.load_tokens(catalog, TILE_SIG)
    np.testing.assert_array_equal(live.ids, ids)
    np.testing.assert_array_equal(live.patients, patients)
    for tid, row in zip(ids, raw):
        np.testing.assert_allclose(live.index.reconstruct(int(tid)), row / np.linalg.norm(row), rtol=1e-5, atol=1e-6)


def test_a_write_that_waited_for_readers_is_logged_naming_them(service, monkeypatch, caplog):
    """Why a save seemed to hang must be in the server log: the wait, and which threads were reading."""
    from eagle_index.store import catalog as catalog_module

    monkeypatch.setattr(catalog_module, "SLOW_WRITE_WAIT_S", 0.0)
    lock, reading, writer_waits = service.catalog.lock, threading.Event(), threading.Event()

    def slow_reader():
        with service.catalog.reading():
            reading.set()
            writer_waits.wait(30)

    reader = threading.Thread(target=slow_reader, name="slow region search")
    reader.start()
    assert reading.wait(30)
    stored = []
    writing = threading.Thread(target=lambda: stored.extend(_store(service, ["P-LOGGED"], np.eye(1, DIM, dtype=np.float32))))
    with caplog.at_level("WARNING", logger="eagle_index.store.catalog"):
        writing.start()
        deadline = time.monotonic() + 30
        while not lock._writers_waiting and time.monotonic() < deadline:  # the write now waits for the reader
            time.sleep(0.01)
        writer_waits.set()
        writing.join(30)
        reader.join(30)
    assert not writing.is_alive()
    assert service.catalog.external_ids(stored) == {stored[0]: "P-LOGGED"}
    assert any("waited" in r.message and "slow region search" in r.message for r in caplog.records), caplog.text
