"""Embedding on Ray workers while the owner process alone writes the catalog.

Ray Core actors, one per worker: each `SlideEmbedder` loads the three models once (and holds
its GPU) and turns a slide path into a `SlideResult` (`ingest.steps.compute_slide`, the same
code single-process ingestion runs). The owner runs the one job loop (`ingest.worker.Worker`,
issue 22 item 4) with `RayCompute` as its compute step: the loop claims jobs from the catalog's
job queue (the source of truth: fingerprints, attempts, failures), admits them, and stores every
result itself (`ingest.worker.store_job_results` through a `BatchStorer`: artifact, slide row,
the patient re-aggregated, job `done`, in one transaction), so there is still one writer; this
module only sends each job to a free actor as a Ray future and reports what comes back (actor
deaths and job leases included).

Why actors and not Ray Data: the unit of work is one slide whose fate the queue must record
(which worker, done, retried, failed); Ray Data would bring its own dataset, scheduling and
retries, a second source of truth next to the queue, and would stream tiles between
processes. Actors keep multi-GB weights resident, get a GPU each through `num_gpus`, and a
dead actor is visible per call (`RayActorError`), which is exactly what requeueing needs.

Ray is imported only here, and only when a command is given `--cluster` (importing this
module does not import ray).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eagle_index.errors import EagleIndexError, InputError, ModelError

log = logging.getLogger(__name__)

# Quiet, prompt-free Ray: no usage-stats prompt or upload, no import warnings.
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_USAGE_STATS_PROMPT_ENABLED": "0", "RAY_DISABLE_IMPORT_WARNING": "1",
           "RAY_DEDUP_LOGS": "0",
           # SIGTERM must reach the owner's handler (requeue, clean exit), not Ray's crash handler (abort)
           "RAY_DISABLE_FAILURE_SIGNAL_HANDLER": "1"}
DEATHS_PER_JOB = 3  # a slide that takes down this many workers fails for good


@dataclass
class ClusterOptions:
    address: str = "local"  # local | auto | ray://HOST:PORT | HOST:PORT
    workers: int | None = None  # default: one per GPU of the cluster, else one
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs, else 0
    threads_per_worker: int | None = None  # torch CPU threads; default: the owner's (bit-identical CPU numbers)
    slides_in_flight: int | None = None  # concurrent slides per worker; default 2 on a GPU, 1 on CPU
    object_store_mb: int = 200  # `local` only: Ray's shared-memory object store
    max_replacements: int | None = None  # new actors started for dead ones; default 2 per worker

    def __post_init__(self) -> None:
        address = self.address.strip()
        if not (address in ("local", "auto") or address.startswith("ray://") or _host_port(address)):
            raise InputError(f"--cluster {self.address!r}: expected local, auto, ray://HOST:PORT or HOST:PORT")
        if self.workers is not None and self.workers < 1:
            raise InputError(f"--workers {self.workers}: must be at least 1")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise InputError(f"--gpus-per-worker {self.gpus_per_worker}: must be 0 or more")


def _host_port(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit()


def connect(options: ClusterOptions):
    """Start (`local`) or join a Ray cluster; returns the `ray` module."""
    for key, value in RAY_ENV.items():  # a write, not a read: Ray (and the workers it spawns) take these only from the environment
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return ray
    common = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=True)
    try:
        if options.address == "local":
            _watch_local_cluster()  # before ray.init: a kill during its start leaves nothing either
            ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False,
                     object_store_memory=options.object_store_mb * 1024 * 1024, **common)
        else:
            ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise EagleIndexError(f"cannot start or reach the Ray cluster {options.address!r}: {str(exc).splitlines()[0]}") from None
    return ray


def _watch_local_cluster() -> None:
    """Make the local Ray cluster die with its owner (issue 24 item 11): Ray fate-shares the
    processes the driver starts (raylet, GCS), but the agents raylet starts (ray::DashboardAgent,
    ray::RuntimeEnvAgent) outlived a SIGKILLed owner. A watchdog process, in a session of its own
    so a terminal's signals pass it by, waits for the owner's exit (a pidfd) and then kills every
    Ray process still holding a file of the owner's Ray sessions (Ray names a session folder after
    its driver's pid: `<ray temp dir>/session_<time>_<pid>`), until none is left. A clean shutdown
    has already stopped them: it finds nothing."""
    import subprocess
    import sys

    try:
        from ray._common.utils import get_default_ray_temp_dir

        root = get_default_ray_temp_dir()
    except (ImportError, AttributeError):  # another Ray version: its default
        root = "/tmp/ray"
    code = "import sys; from eagle_index.cluster import watchdog; watchdog(int(sys.argv[1]), sys.argv[2])"
    subprocess.Popen([sys.executable, "-c", code, str(os.getpid()), root], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)


def watchdog(owner: int, root: str) -> None:
    """The body of `_watch_local_cluster`'s process: wait for `owner` to exit, then kill what is left
    of its Ray sessions under `root` (the folders Ray named after the owner's pid)."""
    import glob
    import select
    import signal

    try:
        fd = os.pidfd_open(owner)
    except (AttributeError, OSError):  # no pidfd (old kernel), or the owner is already gone
        fd = None
    if fd is not None:
        select.select([fd], [], [])
    else:
        while _alive(owner):
            time.sleep(1.0)
    sessions = glob.glob(os.path.join(glob.escape(root), f"session_*_{owner}"))
    for _ in range(100):
        victims = _session_processes(sessions)
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _session_processes(sessions: list[str]) -> list[int]:
    """Live Ray processes (ours to signal) of these session folders, read from /proc now: those
    naming a session in their command line (raylet, GCS, monitors), and `ray::...` processes
    (agents, workers: Ray rewrites their command line) holding a file under one."""
    markers = [s.rstrip("/") for s in sessions]
    if not markers:
        return []
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if any(m.encode() in cmdline for m in markers):
                found.append(pid)
                continue
            if not cmdline.startswith(b"ray::"):
                continue
            for fd in os.scandir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(fd.path)
                except OSError:
                    continue
                if any(target.startswith(m + "/") for m in markers):
                    found.append(pid)
                    break
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


class SlideEmbedder:
    """The Ray actor body: models loaded once, one slide path in, one `SlideResult` out."""

    def __init__(self, settings, threads: int | None):
        import torch

        from eagle_index.ingest.steps import ModelIdentity
        from eagle_index.models import load_models

        if threads:
            torch.set_num_threads(threads)
        self.settings = settings
        self.error = None
        try:
            self.models = load_models(settings)
            self.identity = ModelIdentity.of(self.models)
        except EagleIndexError as exc:  # reported by info(), so the owner can say it in one line
            self.error = str(exc)

    def info(self) -> dict:
        import ray
        import torch

        device = getattr(getattr(self, "models", None), "device", None) or self.settings.device
        if str(device).startswith("cuda") and torch.cuda.is_available():
            device = f"cuda:{torch.cuda.current_device()} ({torch.cuda.get_device_name()})"
        # node: the host; node_id: the Ray node (several nodes may share one host)
        return {"pid": os.getpid(), "node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(),
                "device": str(device), "error": self.error,
                "identity": getattr(self, "identity", None), "threads": torch.get_num_threads()}

    def embed(self, path: str, patient: str, mpp: float | None):
        from eagle_index.ingest.steps import SlideJob, compute_slide

        try:
            if not Path(path).exists():
                raise EagleIndexError(f"{path}: file not found on worker {socket.gethostname()} "
                                      "(workers read slides from a path shared with the owner)")
            return "ok", compute_slide(self.models, self.settings, SlideJob(Path(path), patient, mpp))
        except EagleIndexError as exc:
            return "error", str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad slide fails its job only
            return "error", f"{path}: {type(exc).__name__}: {exc}"


@dataclass
class _Worker:
    id: str
    actor: object
    ready_ref: object
    slots: int = 1
    ready: bool = False
    alive: bool = True
    node: str | None = None
    node_id: str | None = None  # the Ray node's id
    device: str | None = None
    pid: int | None = None
    identity: object = None
    slides_done: int = 0
    busy_seconds: float = 0.0
    in_flight: dict = field(default_factory=dict)  # ObjectRef -> (ClaimedJob, started)


class RayCompute:
    """The Ray compute step of the one job loop (`ingest.worker.Worker`, issue 22 item 4): a Ray
    future per slide on `SlideEmbedder` actors. It asks the loop for a job whenever a ready actor
    has a free slot, and yields each job's `Finished` as its future resolves: the result (stored by
    the loop through its `BatchStorer`, signed with the actor's `ModelIdentity`), the actor's error
    (the attempt counts), the job given back when its actor died (failed for good once
    `DEATHS_PER_JOB` actors died on it), or failed when it outlived its job lease
    (`ingest.worker.job_deadline`; the actor is killed). Admission, superseding, storing, failing
    and giving back on stop are the loop's. The owner embeds nothing, so its own death is no
    evidence against a slide: no position is recorded (an actor's death is, counted here).

    `ray` (tests): a module-like object to use instead of connecting (`connect`)."""

    records_position = False
    continuous = True  # actors stay up between jobs: the stream asks for jobs until stop
    batched_store = True

    def __init__(self, options: ClusterOptions, heartbeat_seconds: float = 10.0, ray=None):
        self.options = options
        self.heartbeat_seconds = heartbeat_seconds
        self.ray = ray
        self._connect = ray is None
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._deaths: dict[int, int] = {}  # job id -> workers lost while embedding it
        self._deadlines: dict = {}  # ObjectRef -> (monotonic deadline, seconds): ingest.worker.job_deadline
        self._spawned = 0
        self._replacements = 0
        self.loop = None

    # -- what `status` shows ------------------------------------------------------------------------
    def stats(self) -> list[dict]:
        with self._lock:
            return [{"id": w.id, "node": w.node, "node_id": w.node_id, "device": w.device, "slides_done": w.slides_done,
                     "seconds_per_slide": round(w.busy_seconds / w.slides_done, 3) if w.slides_done else None,
                     "pid": w.pid, "in_flight": len(w.in_flight),
                     "in_flight_files": sorted(job.path for job, _ in w.in_flight.values()),
                     "state": "ready" if w.ready else "starting"}
                    for w in self._workers.values() if w.alive]

    # -- the compute step -------------------------------------------------------------------------
    def open(self, loop) -> None:
        self.loop = loop
        if loop.stop.is_set():
            return
        if self._connect:
            self.ray = connect(self.options)
        self._plan()
        for _ in range(self.workers):
            self._spawn()

    def stream(self, jobs, loop, on_start=None, progress=None):
        """Send jobs pulled from `jobs` (None: none queued now) to actors with a free slot; yield
        each one's `Finished` as it comes back. Ends at stop; what is still in flight then is the
        loop's to give back (the actors are killed by `close`)."""
        last_beat = time.monotonic()
        try:
            while not loop.stop.is_set():
                self._fill(jobs, loop)
                refs = self._refs()
                if not refs:
                    loop.wake.wait(loop.poll_seconds)
                    loop.wake.clear()
                    continue
                done, _ = self.ray.wait(refs, num_returns=1, timeout=0.5)
                if loop.stop.is_set():  # shutting down: whatever came back is redone next time
                    return
                for ref in done:
                    yield from self._handle(ref)
                yield from self._expire()
                if time.monotonic() - last_beat >= self.heartbeat_seconds:
                    self._heartbeat()
                    last_beat = time.monotonic()
        finally:
            with self._lock:  # in flight: given back by the loop, their results no longer wanted
                for w in self._workers.values():
                    w.in_flight.clear()
                self._deadlines.clear()

    def close(self) -> None:
        """Stop the actors and leave Ray."""
        for w in list(self._workers.values()):
            if self.ray is not None and w.alive:
                try:
                    self.ray.kill(w.actor)
                except Exception:  # noqa: BLE001
                    pass
            w.alive = False
        if self.ray is not None:
            self.ray.shutdown()

    def _plan(self) -> None:
        resources = self.ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 1))
        per = self.options.gpus_per_worker
        if per is None:
            per = 1.0 if gpus else 0.0
        if per > 0 and gpus == 0:
            raise InputError(f"--gpus-per-worker {per:g}: the Ray cluster {self.options.address!r} has no GPUs (use --gpus-per-worker 0)")
        self.gpus_per_worker = per
        self.workers = self.options.workers or (max(1, int(gpus // per)) if per else 1)
        # CPUs are a scheduling hint only (fractions allowed); the torch thread count is set apart.
        self.cpus_per_worker = 0 if per else max(0.01, min(1.0, cpus / self.workers))
        self.threads = self.options.threads_per_worker or _torch_threads()
        self.slots = self.options.slides_in_flight or (2 if per else 1)
        self.max_replacements = self.options.max_replacements if self.options.max_replacements is not None else 2 * self.workers
        log.info(json.dumps({"event": "cluster_start", "address": self.options.address, "workers": self.workers,
                             "gpus_per_worker": per, "threads_per_worker": self.threads, "slides_in_flight": self.slots,
                             "cluster_cpus": cpus, "cluster_gpus": gpus}))

    def _spawn(self) -> None:
        remote = self.ray.remote(SlideEmbedder).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_concurrency=self.slots, max_restarts=0,
        )
        worker_id = f"w{self._spawned}"
        self._spawned += 1
        actor = remote.remote(self.loop.ctx.settings.without_secrets(), self.threads)  # cache dir, digest switch... travel; tokens do not
        with self._lock:
            self._workers[worker_id] = _Worker(worker_id, actor, actor.info.remote(), slots=self.slots)

    def _refs(self) -> list:
        refs = []
        for w in self._workers.values():
            if not w.alive:
                continue
            if not w.ready:
                refs.append(w.ready_ref)
            refs.extend(w.in_flight)
        return refs

    def _fill(self, jobs, loop) -> None:
        from eagle_index.ingest.worker import job_deadline

        for w in list(self._workers.values()):
            while w.alive and w.ready and len(w.in_flight) < w.slots and not loop.stop.is_set():
                job = next(jobs, None)  # admitted by the loop (superseded or gone ones never come here)
                if job is None:
                    return
                ref = w.actor.embed.remote(job.path, job.patient or Path(job.path).stem, job.mpp)
                seconds = job_deadline(loop.ctx.settings, Path(job.path))
                self._deadlines[ref] = (time.monotonic() + seconds, seconds)
                with self._lock:
                    w.in_flight[ref] = (job, time.perf_counter())
                loop.queue.heartbeat(job.id, {"stage": "embedding", "worker": w.id, "node": w.node})

    def _owner_of(self, ref):
        for w in self._workers.values():
            if not w.ready and ref == w.ready_ref:
                return w, None
            if ref in w.in_flight:
                return w, w.in_flight[ref]
        return None, None

    def _handle(self, ref):
        from eagle_index.ingest.worker import Finished

        errors = self.ray.exceptions
        w, entry = self._owner_of(ref)
        if w is None:
            return
        if entry is None:  # the actor answered info(): it is ready, or it could not load its models
            try:
                info = self.ray.get(ref)
            except errors.RayError as exc:
                yield from self._lost(w, exc)
                return
            self._ready(w, info)
            return
        job, started = entry
        self._deadlines.pop(ref, None)
        with self._lock:
            del w.in_flight[ref]
        try:
            status, payload = self.ray.get(ref)
        except errors.RayTaskError as exc:
            status, payload = "error", f"{job.path}: {_first_line(exc)}"
        except errors.RayError as exc:  # the actor or its node is gone: the slide goes back to the queue
            yield self._requeue_lost(w, job, exc)
            yield from self._lost(w, exc)
            return
        if status != "ok":
            yield Finished(job, EagleIndexError(payload))
            return

        def stored(result, seconds: float, store_seconds: float) -> dict:
            with self._lock:
                w.slides_done += 1
                w.busy_seconds += result.timings.get("total", seconds)
            return {"worker": w.id, "node": w.node, "node_id": w.node_id, "store_seconds": round(store_seconds, 3)}

        yield Finished(job, payload, identity=w.identity, on_stored=stored)

    def _ready(self, w: _Worker, info: dict) -> None:
        if info.get("error"):
            raise ModelError(f"Ray worker {w.id} on {info['node']}: {info['error']}")
        first = next((o.identity for o in self._workers.values() if o.identity is not None), None)
        if first is not None and first.signatures != info["identity"].signatures:
            raise ModelError(f"Ray worker {w.id} on {info['node']} loaded other models (signature {info['identity'].signature()}) "
                             f"than the other workers ({first.signature()}); give every node the same weights")
        with self._lock:
            w.ready, w.node, w.device, w.pid, w.identity = True, info["node"], info["device"], info["pid"], info["identity"]
            w.node_id = info.get("node_id")
        log.info(json.dumps({"event": "worker_ready", "worker": w.id, "node": w.node, "node_id": w.node_id,
                             "device": w.device, "pid": w.pid,
                             "threads": info["threads"]}))

    def _requeue_lost(self, w: _Worker, job, exc):
        from eagle_index.ingest.worker import FinalFailure, Finished, GiveBack

        deaths = self._deaths[job.id] = self._deaths.get(job.id, 0) + 1
        reason = f"Ray worker {w.id} on {w.node} died while embedding it ({_first_line(exc)})"
        if self.loop.stop.is_set() or deaths < DEATHS_PER_JOB:
            return Finished(job, GiveBack(reason))
        return Finished(job, FinalFailure(f"{job.path}: {deaths} Ray workers died while embedding it; last: {reason}"))

    def _lost(self, w: _Worker, exc):
        """A dead actor: its other slides go back to the queue, and a replacement starts."""
        if not w.alive:
            return
        with self._lock:
            w.alive = False
            orphans = list(w.in_flight.values())
            w.in_flight.clear()
        for job, _ in orphans:
            yield self._requeue_lost(w, job, exc)
        log.warning(json.dumps({"event": "worker_died", "worker": w.id, "node": w.node, "pid": w.pid,
                                "error": _first_line(exc)}))
        if self.loop.stop.is_set():
            return
        if not w.ready and w.identity is None and self._replacements >= self.max_replacements:
            raise EagleIndexError(f"Ray worker {w.id} could not start: {_first_line(exc)}")
        if self._replacements < self.max_replacements:
            self._replacements += 1
            self._spawn()
        elif not any(o.alive for o in self._workers.values()):
            raise EagleIndexError(f"every Ray worker died ({self._replacements} replaced); last: {_first_line(exc)}")

    def _expire(self):
        """The lease of a job on an actor (issue 24 item 3): reads there are bounded by the read
        lease in the actor's own reader pool (a blocked read fails the slide, as in the daemon);
        an actor that has not answered by `job_deadline` is presumed hung: it is killed (its
        reader processes die with it), the job fails with that reason, its other slides go back
        to the queue uncounted and a replacement starts."""
        from eagle_index.ingest.worker import Finished, GiveBack

        now = time.monotonic()
        for w in list(self._workers.values()):
            expired = [(ref, entry) for ref, entry in list(w.in_flight.items())
                       if self._deadlines.get(ref, (float("inf"), 0))[0] <= now]
            if not expired or not w.alive:
                continue
            with self._lock:
                orphans = [entry for ref, entry in w.in_flight.items() if ref not in dict(expired)]
                w.in_flight.clear()
            for ref, (job, _) in expired:
                seconds = self._deadlines.pop(ref)[1]
                log.warning(json.dumps({"event": "job_expired", "job": job.id, "file": job.path, "worker": w.id,
                                        "seconds": round(seconds, 1)}))
                yield Finished(job, EagleIndexError(f"{job.path}: did not finish within {round(seconds, 1):g} s on Ray "
                                                    f"worker {w.id} (its job lease, three read leases); the worker was killed"))
            for job, _ in orphans:
                yield Finished(job, GiveBack(f"Ray worker {w.id} was killed after another slide's lease"))
            try:
                self.ray.kill(w.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
            yield from self._lost(w, RuntimeError(f"killed after a job's lease ran out on {w.id}"))

    def _heartbeat(self) -> None:
        for w in list(self._workers.values()):
            for job, _ in list(w.in_flight.values()):
                self.loop.queue.heartbeat(job.id)


def cluster_worker(ctx, queue, stop: threading.Event, options: ClusterOptions, max_attempts: int = 3,
                   backoff_seconds: float = 5.0, quarantine: Path | None = None, poll_seconds: float = 1.0,
                   heartbeat_seconds: float = 10.0, ray=None):
    """The owner's job loop on Ray actors: `ingest.worker.Worker` with a `RayCompute` step (its
    `compute.stats` is what `status` shows)."""
    from eagle_index.ingest.worker import Worker

    return Worker(ctx, queue, stop, max_attempts, backoff_seconds, poll_seconds=poll_seconds, quarantine=quarantine,
                  compute=RayCompute(options, heartbeat_seconds=heartbeat_seconds, ray=ray))


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    lines = [line for line in text if line.strip() and not line.startswith(("Traceback", "  "))]
    return (lines[-1] if lines else type(exc).__name__)[:300]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()
