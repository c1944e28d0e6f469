"""Issue 22 item 4: one job loop (`ingest.worker.Worker`) with a pluggable compute step.

The same scenario runs against each step: the in-process one (`LocalCompute`, the pipeline stream
reading ahead) and the Ray one (`cluster.RayCompute`, a future per slide on actors) - on a fake Ray
whose actors run `SlideEmbedder` on threads of this process and whose refs are futures (fast), and,
marked slow, on a real local Ray cluster. A good slide is stored; a corrupt slide fails alone; a file
changed after it was queued is superseded, never embedded; and when the loop is stopped with a job
claimed, that job goes back to the queue with its attempt uncounted.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from slide_fixtures import write_pyramidal_tiff

BOX = 448.0
TIMEOUT = 600


def _slide(path: Path, seed: int = 0) -> Path:
    return write_pyramidal_tiff(path, mpp=1.0, size_um=(5 * BOX, 4 * BOX), tissue_boxes_um=[(BOX, BOX, 3 * BOX, 2 * BOX)],
                                seed=seed).path


# -- a fake Ray: actors are objects whose calls run on their own threads; refs are futures -----------
class _RayError(Exception):
    pass


class _RayTaskError(_RayError):
    pass


class _Actor:
    def __init__(self, body, concurrency: int):
        self._body = body
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, concurrency))

    def __getattr__(self, name):
        method = getattr(self._body, name)

        def call(*args):
            try:
                return method(*args)
            except Exception as exc:  # as Ray does: a task's exception comes back as RayTaskError
                raise _RayTaskError(f"{type(exc).__name__}: {exc}") from exc

        return types.SimpleNamespace(remote=lambda *args: self._pool.submit(call, *args))

    def kill(self):
        self._pool.shutdown(wait=True, cancel_futures=True)


class FakeRay:
    exceptions = types.SimpleNamespace(RayError=_RayError, RayTaskError=_RayTaskError)

    def __init__(self):
        self.actors: list[_Actor] = []
        self.was_shut_down = False

    def cluster_resources(self) -> dict:
        return {"CPU": 2.0}

    def remote(self, cls):
        fake = self

        class Options:
            def __init__(self, **options):
                self.concurrency = options.get("max_concurrency", 1)

            def remote(self, *args):
                actor = _Actor(cls(*args), self.concurrency)
                fake.actors.append(actor)
                return actor

        return types.SimpleNamespace(options=lambda **options: Options(**options))

    def wait(self, refs, num_returns=1, timeout=None):
        done, rest = concurrent.futures.wait(refs, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED)
        return list(done), list(rest)

    def get(self, ref):
        return ref.result()

    def kill(self, actor):
        actor.kill()

    def shutdown(self):
        self.was_shut_down = True
        for actor in self.actors:
            actor.kill()

    # what `SlideEmbedder.info` asks of the `ray` module inside an actor
    def get_runtime_context(self):
        return types.SimpleNamespace(get_node_id=lambda: "fake-node")


def _local(monkeypatch):
    return None  # Worker's default: LocalCompute


def _fake_ray(monkeypatch):
    from eagle_index.cluster import ClusterOptions, RayCompute

    fake = FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)  # `import ray` inside the actor body
    return RayCompute(ClusterOptions("local", workers=1), ray=fake)


def _real_ray(monkeypatch):
    pytest.importorskip("ray")
    from eagle_index.cluster import ClusterOptions, RayCompute

    return RayCompute(ClusterOptions("local", workers=1))


@pytest.mark.parametrize("make_compute", [
    _local,
    _fake_ray,
    pytest.param(_real_ray, marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
], ids=["in-process", "ray-future-fake", "ray-local"])
def test_one_loop_stores_fails_supersedes_and_gives_back_on_stop(tmp_path, monkeypatch, make_compute):
    from eagle_index.config import Settings
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.ingest.worker import POSITION_FILE, Worker
    from eagle_index.service import EagleService

    folder = tmp_path / "slides"
    folder.mkdir()
    good = _slide(folder / "TCGA-AA-0001-01Z-00-DX1.tiff", seed=0)
    corrupt = folder / "TCGA-AA-0002-01Z-00-DX1.tiff"
    content = _slide(tmp_path / "source.tiff", seed=1).read_bytes()
    corrupt.write_bytes(content[: len(content) // 3])  # a truncated TIFF
    changed = _slide(folder / "TCGA-AA-0003-01Z-00-DX1.tiff", seed=2)
    last = _slide(folder / "TCGA-AA-0004-01Z-00-DX1.tiff", seed=3)

    with EagleService(Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")) as service:
        queue = service.jobs
        for path in (good, corrupt, changed):
            queue.enqueue(slide_fingerprint(path), str(path), path.stem[:12], None)
        later = time.time() + 2
        changed.write_bytes(_slide(tmp_path / "other.tiff", seed=4).read_bytes())  # new content after it was queued
        os.utime(changed, (later, later))

        stop, claim, claimed = threading.Event(), queue.claim, []

        def claim_and_stop_at_the_last(**options):
            job = claim(**options)
            if job is not None:
                claimed.append(job.path)
                if job.path == str(last):  # stop while this job is claimed and not stored
                    stop.set()
            return job

        queue.claim = claim_and_stop_at_the_last
        compute = make_compute(monkeypatch)
        worker = Worker(service.ingest_context(), queue, stop, max_attempts=1, backoff_seconds=0, poll_seconds=0.1,
                        compute=compute)
        errors: list[BaseException] = []

        def run():
            try:
                worker.run()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        thread = threading.Thread(target=run, name="job-loop")
        thread.start()
        try:
            def states() -> dict[str, tuple[str, int, str | None]]:
                return {Path(j["file"]).name: (j["state"], j["attempts"], j["error"]) for j in queue.jobs(limit=100)}

            deadline = time.monotonic() + TIMEOUT
            while any(s in ("queued", "running") for s, _, _ in states().values()):
                assert not errors and thread.is_alive(), errors
                assert time.monotonic() < deadline, states()
                worker.wake.wait(0.2)
            # the first three are final: now the last one, claimed as the loop is stopped
            queue.enqueue(slide_fingerprint(last), str(last), last.stem[:12], None)
            worker.wake.set()
            thread.join(TIMEOUT)
            assert not thread.is_alive()
        finally:
            stop.set()
            worker.wake.set()
            thread.join(TIMEOUT)
        assert not errors, errors

        got = states()
        assert got[good.name][:2] == ("done", 1), got
        assert got[corrupt.name][0] == "failed" and str(corrupt) in got[corrupt.name][2], got  # it failed alone
        assert got[changed.name][0] == "skipped" and "changed after it was queued" in got[changed.name][2], got
        assert got[last.name][:2] == ("queued", 0), got  # given back, its attempt uncounted
        assert claimed.count(str(last)) == 1
        assert service.stats()["slides"] == 1  # only the good slide was stored
        position = tmp_path / "data" / POSITION_FILE  # nothing held any more
        assert not position.exists() or position.read_bytes().strip() == b"{}"
    if compute is not None:
        assert compute.stats() == []  # every actor stopped
