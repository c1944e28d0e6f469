"""The owner stores results with a short writer section (`ingest/storing.py`, issue 19 item 5).

The new path (artifacts, reading the patient's other artifacts and re-aggregating outside
`catalog.write`, only rows inside it; several results per transaction) must store exactly what
the previous path (everything inside the write, `store_job_result_in_writer`) stores: the same
vectors, tile rows, patient selections and artifacts, bit for bit, also when two slides of one
patient are stored at the same time.
"""

from __future__ import annotations

import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from eagle_index import aggregation, pipeline
from eagle_index.config import Settings
from eagle_index.ingest.steps import ModelIdentity
from eagle_index.ingest.worker import BatchStorer, store_job_result, store_job_result_in_writer, store_job_results
from eagle_index.service import EagleService
from eagle_index.store import tiles_repo

FEAT_DIM, TOKEN_DIM = 48, 64
KINDS = ("eagle", "chief", "mean-ctranspath")
IDENTITY = ModelIdentity({k: f"test-{k}" for k in KINDS}, {k: {"signature": f"test-{k}", "models": "test"} for k in KINDS})


def make_result(name: str, seed: int, n_tiles: int = 120, top_k: int = 25) -> pipeline.SlideResult:
    """A slide result as the pipeline makes it, with random arrays (ties in the scores included)."""
    rng = np.random.default_rng(seed)
    cols = 16
    x_um = (np.arange(n_tiles) % cols * 448.0 + 1000.25).astype(np.float64)
    y_um = (np.arange(n_tiles) // cols * 448.0 + 500.125).astype(np.float64)
    scores = np.round(rng.normal(size=n_tiles), 1).astype(np.float32)  # rounded: ties across slides
    feats = rng.normal(size=(n_tiles, FEAT_DIM)).astype(np.float16).astype(np.float32)
    candidates = aggregation.slide_candidates(name, scores, x_um, y_um, top_k)
    candidates.class_tokens = rng.normal(size=(len(candidates), TOKEN_DIM)).astype(np.float32)
    return pipeline.SlideResult(name=name, x_um=x_um, y_um=y_um, feats=feats, scores=scores, candidates=candidates,
                                tile_um=448.0, tile_px=224, mpp=0.5, mpp_source="test", level=0, width_px=8000,
                                height_px=6000, format="generic-tiff", timings={"total": 1.0})


# (patient, slide name, seed): P has four slides, arriving out of name order; Q one.
SLIDES = [("P", "P-DX3", 3), ("P", "P-DX1", 1), ("Q", "Q-DX1", 7), ("P", "P-DX2", 2), ("P", "P-DX0", 5)]


def fingerprint(seed: int) -> str:
    return f"sha256:{seed:02d}" + "ab" * 31


@pytest.fixture
def results():
    return {name: make_result(name, seed) for _, name, seed in SLIDES}


def _open(tmp_path: Path, name: str) -> EagleService:
    return EagleService(Settings(data_dir=tmp_path / name))


def _claim(service, patient: str, name: str, seed: int):
    service.jobs.enqueue(fingerprint(seed), f"/nowhere/{name}.svs", patient)
    job = service.jobs.claim()
    assert job is not None and job.fingerprint == fingerprint(seed)
    return job


def _store_all(service, results, how: str, batch: int = 2) -> None:
    ctx = service.ingest_context()
    jobs = [(_claim(service, patient, name, seed), results[name]) for patient, name, seed in SLIDES]
    if how == "old":
        for job, result in jobs:
            store_job_result_in_writer(ctx, job, result, 1.0, identity=IDENTITY)
    elif how == "new":
        for job, result in jobs:
            store_job_result(ctx, job, result, 1.0, identity=IDENTITY)
    elif how == "pool":  # results handed over one by one; threads store whatever is ready in batches
        with BatchStorer(ctx, threads=3, batch=batch) as storer:
            futures = [storer.submit(job, result, 1.0, identity=IDENTITY) for job, result in jobs]
        assert all(isinstance(f.result(), int) for f in futures)
    else:
        for start in range(0, len(jobs), batch):
            out = store_job_results(ctx, [(job, result, 1.0) for job, result in jobs[start:start + batch]], identity=IDENTITY)
            assert all(isinstance(o, int) for o in out), out


def snapshot(service) -> dict:
    """Everything the stored results determine, by patient and slide name (ids may differ)."""
    catalog = service.catalog
    names = catalog.external_ids(catalog.patient_ids(["P", "Q"]).values())
    out: dict = {"vectors": {}, "tiles": {}, "artifacts": {}}
    for kind in KINDS:
        ids, raw = catalog.load_vectors(kind, IDENTITY.signature(kind))
        out["vectors"][kind] = {names[int(i)]: raw[n].tobytes() for n, i in enumerate(ids)}
    for pid, patient in names.items():
        rows = tiles_repo.stored_patient_tiles(catalog, pid)
        _, sigs, tokens = tiles_repo.load_tokens_by_id(catalog, [r.id for r in rows])
        out["tiles"][patient] = [(r.slide, r.x_um, r.y_um, r.slide_rank, r.patient_rank, r.attention, sig, t.tobytes())
                                 for r, sig, t in zip(rows, sigs, tokens)]
    for _, name, _ in SLIDES:
        (info,) = tiles_repo.slides_named(catalog, name)
        path = Path(info.artifact_path)
        assert path.is_file()
        with h5py.File(path, "r") as handle:
            data = {}
            handle.visititems(lambda key, obj: data.__setitem__(key, obj[()].tobytes()) if isinstance(obj, h5py.Dataset) else None)
            attrs = {k: str(v) for k, v in handle.attrs.items()}
        out["artifacts"][name] = (path.relative_to(service.settings.data_dir).as_posix(), info.patient, info.status, data, attrs)
    sets = {(s.kind, s.signature): s.count for s in catalog.vector_sets()}
    out["sets"] = sets
    return out


def selection_of(service, patient: str) -> list[tuple]:
    """The patient's selected tiles, re-derived from its stored artifacts (what the viewer shows)."""
    from eagle_index.store.artifacts import read_slide_artifact

    catalog = service.catalog
    pid = catalog.patient_ids([patient])[patient]
    with catalog.transaction() as session:
        paths = catalog.done_artifacts(session, pid)
    vectors = pipeline.aggregate_patient([read_slide_artifact(Path(p)) for p in paths], service.settings.eagle.top_k)
    return [tuple(sorted(s.items())) for s in vectors.selection]


def test_as_stored_is_what_the_artifact_reads_back(tmp_path, results):
    from eagle_index.store.artifacts import as_stored, read_slide_artifact, write_slide_artifact

    result = results["P-DX1"]
    back = read_slide_artifact(write_slide_artifact(tmp_path / "a.h5", result, {"signature": "x"}))
    view = as_stored(result)
    for key in ("name", "tile_um", "tile_px", "mpp", "mpp_source", "level", "width_px", "height_px", "format"):
        assert getattr(view, key) == getattr(back, key), key
    for key in ("x_um", "y_um", "feats", "scores"):
        a, b = getattr(view, key), getattr(back, key)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key
    assert view.candidates.slide_name == back.candidates.slide_name
    for key in ("tile_index", "x_um", "y_um", "scores", "class_tokens"):
        a, b = getattr(view.candidates, key), getattr(back.candidates, key)
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), key


def test_the_owners_aggregation_is_the_pipelines_bit_for_bit(results):
    from eagle_index.ingest.storing import aggregate
    from eagle_index.store.artifacts import as_stored

    slides = [as_stored(results[name]) for name in ("P-DX0", "P-DX1", "P-DX2", "P-DX3")]
    for chosen in (slides[:1], slides[1:3], slides):
        want, got = pipeline.aggregate_patient(chosen, 25), aggregate(chosen, 25)
        for kind, vector in want.by_kind().items():
            assert vector.dtype == got.by_kind()[kind].dtype and vector.tobytes() == got.by_kind()[kind].tobytes(), kind
        assert got.selection == want.selection


def test_new_path_and_batches_store_bit_identical_results(tmp_path, results):
    snaps, selections = {}, {}
    for how in ("old", "new", "batch", "pool"):
        with _open(tmp_path, how) as service:
            _store_all(service, results, how, batch=3)
            snaps[how] = snapshot(service)
            selections[how] = selection_of(service, "P")
            # the FAISS index followed: P's nearest neighbour is Q (the only other patient)
            assert [h.patient for h in service.search_patient("P", k=3)] == ["Q"]
    assert len(snaps["old"]["tiles"]["P"]) == 4 * 25 and len(selections["old"]) == 25
    assert {r[0] for r in snaps["old"]["tiles"]["P"] if r[4] is not None} >= {"P-DX0", "P-DX1"}  # a multi-slide selection
    for how in ("new", "batch", "pool"):
        for key in ("vectors", "tiles", "artifacts", "sets"):
            assert snaps[how][key] == snaps["old"][key], (how, key)
        assert selections[how] == selections["old"], how


def test_a_batch_is_one_transaction_and_one_vector_write_per_set(tmp_path, results):
    with _open(tmp_path, "one") as service:
        ctx = service.ingest_context()
        done = [(_claim(service, patient, name, seed), results[name], 2.0) for patient, name, seed in SLIDES]
        out = store_job_results(ctx, done, identity=IDENTITY)
        assert len(set(out)) == len(SLIDES)
        generations = {s.kind: s.generation for s in service.catalog.vector_sets()}
        assert generations == {k: 1 for k in KINDS}
        assert service.jobs.states([job.id for job, _, _ in done])["done"] == len(SLIDES)


def test_the_writer_reads_no_artifact(tmp_path, results, monkeypatch):
    """Reading the patient's other artifacts and aggregating happen before the write."""
    with _open(tmp_path, "io") as service:
        ctx = service.ingest_context()
        opened_in_writer = []
        real_file = h5py.File

        def spy(path, mode="r", *args, **kwargs):
            if service.catalog.writer.on_writer_thread():
                opened_in_writer.append((str(path), mode))
            return real_file(path, mode, *args, **kwargs)

        monkeypatch.setattr(h5py, "File", spy)
        for patient, name, seed in SLIDES:
            store_job_result(ctx, _claim(service, patient, name, seed), results[name], 1.0, identity=IDENTITY)
        assert opened_in_writer == []
        monkeypatch.setattr(h5py, "File", real_file)
        assert len(snapshot(service)["tiles"]["P"]) == 100


def test_two_slides_of_one_patient_stored_at_once_equal_sequential_storage(tmp_path, results):
    with _open(tmp_path, "seq") as service:
        _store_all(service, results, "old")
        expected = snapshot(service)
    with _open(tmp_path, "threads") as service:
        ctx = service.ingest_context()
        jobs = [(_claim(service, patient, name, seed), results[name]) for patient, name, seed in SLIDES]
        for rounds in ([0, 1], [2, 3, 4]):  # two, then three results arrive at once (four of one patient)
            start = threading.Barrier(len(rounds))
            errors: list[BaseException] = []

            def store(i):
                try:
                    start.wait()
                    store_job_result(ctx, jobs[i][0], jobs[i][1], 1.0, identity=IDENTITY)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=store, args=(i,)) for i in rounds]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert not errors, errors
        got = snapshot(service)
    for key in ("vectors", "tiles", "artifacts"):
        assert got[key] == expected[key], key


def test_a_plan_overtaken_by_another_write_is_reaggregated_in_the_writer(tmp_path, results, caplog):
    """Without the per-patient lock (another writer): slide P-DX1 is prepared, P-DX3 commits in
    between; the check inside the write sees a different slide set and recomputes."""
    from eagle_index.ingest import storing
    from eagle_index.ingest.worker import slide_job_of

    with _open(tmp_path, "seq") as service:
        _store_all(service, results, "old")
        expected = snapshot(service)
    with _open(tmp_path, "race") as service:
        ctx = service.ingest_context()
        jobs = [(_claim(service, patient, name, seed), results[name]) for patient, name, seed in SLIDES]

        def item(i):
            job, result = jobs[i]
            return storing.StoreItem(slide_job_of(job), job.fingerprint, result, identity=IDENTITY, job_id=job.id, seconds=1.0)

        late = storing.prepare(ctx, [item(1)])  # P-DX1, planned while P has no slide
        assert late.plans[0].slides == ((jobs[1][0].fingerprint, late.plans[0].slides[0][1]),)
        storing.store_results(ctx, [item(0)])  # P-DX3 commits first
        with caplog.at_level("INFO", logger="eagle_index.ingest.storing"):
            (slide_id,) = service.catalog.write(lambda session: storing.commit(ctx, session, late))
        ctx.sync_index()
        assert isinstance(slide_id, int) and "re-aggregated in the writer" in caplog.text
        storing.store_results(ctx, [item(2), item(3), item(4)])
        got = snapshot(service)
    for key in ("vectors", "tiles", "artifacts"):
        assert got[key] == expected[key], key


def test_an_unreadable_artifact_fails_its_patient_only(tmp_path, results):
    with _open(tmp_path, "bad") as service:
        ctx = service.ingest_context()
        jobs = [(_claim(service, patient, name, seed), results[name]) for patient, name, seed in SLIDES]
        first = store_job_result(ctx, jobs[0][0], jobs[0][1], 1.0, identity=IDENTITY)  # P-DX3
        (info,) = tiles_repo.slides_named(service.catalog, "P-DX3")
        Path(info.artifact_path).write_bytes(b"not hdf5")
        out = store_job_results(ctx, [(jobs[1][0], jobs[1][1], 1.0), (jobs[2][0], jobs[2][1], 1.0)], identity=IDENTITY)
        assert isinstance(out[0], Exception) and "not a readable HDF5 file" in str(out[0])  # P: its other slide is broken
        assert isinstance(out[1], int) and out[1] != first  # Q is stored
        assert service.jobs.states([jobs[2][0].id])["done"] == 1
        assert service.jobs.states([jobs[1][0].id])["running"] == 1  # the caller fails or retries it
        with pytest.raises(Exception, match="not a readable HDF5 file"):
            store_job_result(ctx, jobs[3][0], jobs[3][1], 1.0, identity=IDENTITY)


def test_attention_pooling_on_one_blas_thread_equals_the_librarys_default():
    """`attention_pooled` runs its product on one BLAS thread (the spinning second thread cost
    the owner half its CPU); the vectors are those of the library's default thread count."""
    from threadpoolctl import threadpool_info

    rng = np.random.default_rng(3)
    threads = max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
    for n, dim in ((2000, 768), (6001, 768), (12_345, 768), (300, FEAT_DIM), (50, 1280)):
        scores = rng.normal(size=n).astype(np.float32)
        feats = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16).astype(np.float32)
        weights = np.exp(scores.astype(np.float64) - scores.max())
        weights /= weights.sum()
        reference = (weights @ feats.astype(np.float64)).astype(np.float32)  # the library's default threads
        assert aggregation.attention_pooled(scores, feats).tobytes() == reference.tobytes(), (n, dim, threads)
    assert max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas") == threads  # restored


def test_one_blas_thread_inside_the_block_and_restored_after():
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    with aggregation.one_blas_thread(), aggregation.one_blas_thread():  # nested: no deadlock
        pass
    assert blas_threads() == before
    with aggregation.one_blas_thread():
        assert aggregation._blas[0].info()[0]["num_threads"] == 1  # numpy's BLAS (FAISS keeps its own)
    assert blas_threads() == before


KILL_CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from test_owner_store import IDENTITY, SLIDES, _claim, make_result
from eagle_index.config import Settings
from eagle_index.ingest import storing
from eagle_index.ingest.worker import store_job_results
from eagle_index.service import EagleService
from eagle_index.store import jobs, tiles_repo

data, where = sys.argv[1], sys.argv[2]
with EagleService(Settings(data_dir=data)) as service:
    ctx = service.ingest_context()
    done = [(_claim(service, patient, name, seed), make_result(name, seed), 1.0) for patient, name, seed in SLIDES]
    store_job_results(ctx, done[:2], identity=IDENTITY)  # committed: P-DX3, P-DX1
    die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    if where == "before-commit":  # the batch's artifacts are written, its transaction has not begun
        storing.commit = die
    else:  # inside the transaction: slides, tile rows (the Arrow insert), vectors written, jobs not yet done
        real = tiles_repo.put_patients_tiles
        def then_die(*a, **k):
            real(*a, **k)
            jobs.JobQueue.mark_many_done = staticmethod(die)
        tiles_repo.put_patients_tiles = then_die
    store_job_results(ctx, done[2:], identity=IDENTITY)
raise SystemExit("not killed")
"""


@pytest.mark.parametrize("where", ["before-commit", "in-commit"])
def test_a_kill_while_a_batch_is_stored_loses_nothing_stored_and_leaves_nothing_half_written(tmp_path, results, where):
    """SIGKILL after a batch's artifacts are written (before its commit, or inside its transaction
    after the tile rows went in): the batch committed before is intact, the killed one left no row
    and no job done, every file under artifacts/ is a whole artifact; the jobs, put back in the
    queue as a restarted owner does, store the same catalog as the old path."""
    import subprocess
    import sys

    from eagle_index.store.artifacts import read_slide_artifact

    with _open(tmp_path, "seq") as service:
        _store_all(service, results, "old")
        expected = snapshot(service)
    data = tmp_path / "killed"
    child = subprocess.run([sys.executable, "-c", KILL_CHILD, str(data), where, str(Path(__file__).parent)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -9, child.stderr
    with EagleService(Settings(data_dir=data)) as service:
        catalog = service.catalog
        states = service.jobs.states([1, 2, 3, 4, 5])
        assert (states["done"], states["running"]) == (2, 3), states
        assert tiles_repo.slides_named(catalog, "Q-DX1") == [] and tiles_repo.slides_named(catalog, "P-DX0") == []
        assert {(s.kind, s.count) for s in catalog.vector_sets()} == {(k, 1) for k in KINDS}  # P only
        pid = catalog.patient_ids(["P"])["P"]
        assert sorted({r.slide for r in tiles_repo.stored_patient_tiles(catalog, pid)}) == ["P-DX1", "P-DX3"]
        assert len(tiles_repo.stored_patient_tiles(catalog, pid)) == 50
        assert [h.patient for h in service.search_patient("P", k=3)] == []  # the index holds P alone
        files = [p for p in (data / "artifacts").rglob("*") if p.is_file()]
        assert len(files) == 5 and all(p.suffix == ".h5" for p in files)  # the killed batch's artifacts are whole
        for path in files:
            read_slide_artifact(path)
        for job_id in (3, 4, 5):  # what a restarted owner does with jobs left running
            service.jobs.requeue(job_id, "owner restarted")
        ctx = service.ingest_context()
        again = []
        for _ in range(3):
            job = service.jobs.claim()
            name = next(n for _, n, s in SLIDES if fingerprint(s) == job.fingerprint)
            again.append((job, results[name], 1.0))
        assert all(isinstance(o, int) for o in store_job_results(ctx, again, identity=IDENTITY))
        got = snapshot(service)
    for key in ("vectors", "tiles", "artifacts", "sets"):
        assert got[key] == expected[key], key


def test_put_vectors_replaces_several_patients_vectors_in_one_statement(tmp_path):
    """`Catalog.put_vectors` replaces existing vectors with one UPDATE (the batch's patients):
    each patient gets its own new vector and source, the others keep theirs, new ones are added,
    the loaded FAISS index follows."""
    from sqlalchemy import select

    from eagle_index.store.models import Vector

    with _open(tmp_path, "pv") as service:
        catalog = service.catalog
        rng = np.random.default_rng(4)
        first, second = rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(4, 8)).astype(np.float32)
        ids = catalog.write(lambda s: [catalog.patient_id(s, p, create=True) for p in ("A", "B", "C", "D", "E")])
        catalog.write(lambda s: catalog.put_vectors(s, "eagle", "sig", ids[:4], first, source="one"))
        assert service.vectors.get("eagle", "sig").ntotal == 4
        order = [ids[2], ids[0], ids[4], ids[3]]  # three replaced (out of id order), one new
        catalog.write(lambda s: catalog.put_vectors(s, "eagle", "sig", order, second, source="two"))
        got_ids, raw = catalog.load_vectors("eagle", "sig")
        stored = {int(i): r.tobytes() for i, r in zip(got_ids, raw)}
        assert stored == {ids[2]: second[0].tobytes(), ids[0]: second[1].tobytes(), ids[4]: second[2].tobytes(),
                          ids[3]: second[3].tobytes(), ids[1]: first[1].tobytes()}
        with catalog.transaction() as session:
            sources = dict(session.execute(select(Vector.patient_id, Vector.source)).all())
        assert sources == {ids[0]: "two", ids[1]: "one", ids[2]: "two", ids[3]: "two", ids[4]: "two"}
        assert catalog.vector_set("eagle", "sig").generation == 2
        assert service.vectors.get("eagle", "sig").ntotal == 5
        assert sorted(h.patient for h in service.search_patient("C", k=4)) == ["A", "B", "D", "E"]
