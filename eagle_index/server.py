"""Composition root: the owner process runs the service, the HTTP API/UI, the worker and the watcher.

`eagle-index daemon` and `eagle-index serve` both run this; `serve` binds the web app to the
given host/port, `daemon` serves the API on an ephemeral loopback port so that `status`,
`search` and friends can reach the catalog it holds. SIGTERM/SIGINT stop the watcher, let
the worker finish or requeue its job, close the server and release the catalog.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from eagle_index.config import Settings
from eagle_index.errors import EagleIndexError, InputError

log = logging.getLogger(__name__)


@dataclass
class OwnerOptions:
    role: str = "daemon"  # or "serve"
    watch: list[Path] = field(default_factory=list)
    slide_table: Path | None = None
    patient_regex: str | None = None
    host: str = "127.0.0.1"
    port: int = 0
    settle_seconds: float = 5.0
    poll_seconds: float = 2.0
    max_attempts: int = 3
    backoff_seconds: float = 5.0
    quarantine: Path | None = None
    shutdown_timeout: float = 60.0
    token: str | None = None
    cluster: object = None  # eagle_index.cluster.ClusterOptions: embed on Ray workers instead of in process
    session: object = None  # e.g. eagle_index.backfill.Backfill: start(service), tick(service) -> done?, finish(...)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_owner(settings: Settings, options: OwnerOptions) -> int:
    """Run until a signal arrives; returns the exit code."""
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker
    from eagle_index.owner import Ownership
    from eagle_index.service import EagleService
    from web import create_app

    from web.security import check_token

    try:
        options.token = check_token(options.token)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not is_loopback(options.host) and not options.token:
        raise InputError(f"refusing to bind {options.host}: set EAGLE_INDEX_TOKEN (an access token) to serve beyond this machine")
    for folder in options.watch:
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: watch folder not found")
    if options.slide_table is not None and not Path(options.slide_table).is_file():
        raise InputError(f"{options.slide_table}: slide table not found")
    if options.patient_regex is not None:
        import re

        try:
            re.compile(options.patient_regex)
        except re.error as exc:
            raise InputError(f"--patient-regex {options.patient_regex!r}: {exc}") from None
    check_port(options.host, options.port)  # a taken port leaves no new data folder or catalog behind
    ownership = Ownership(settings.data_dir, options.role).acquire()
    stop = threading.Event()
    try:
        removed = remove_stale_temp_files(settings, recheck=True)  # eagle_index/housekeeping.py (issue 24 item 9)
        if removed:
            log.info("removed %d temp file(s) left by killed runs: %s", len(removed), ", ".join(map(str, removed[:5])))
        service = EagleService(settings)
        recovered = recover_after_crash(service, options.max_attempts)
        service.probes.recover()
        service.vectors.sync_all()  # reconcile FAISS with the catalog after any crash
        service.regions.sync()  # tile indexes too (and tiles of slides embedded before revision 0005)
        if recovered["requeued"] or recovered["failed"]:
            log.info("jobs left running by a previous process: %d requeued, %d failed (it died at the same point of them each time)",
                     recovered["requeued"], recovered["failed"])
        resolver = PatientResolver(options.slide_table, options.patient_regex)
        owner = {"role": options.role, "roots": list(options.watch), "resolver": resolver, "token": options.token,
                 "host": options.host}
        app = create_app(settings, service=service, owner=owner)
        try:
            server = make_http_server(app, options.host, options.port)
        except OSError as exc:
            raise _bind_error(options.host, options.port, exc) from None
        url = f"http://{_url_host(options.host)}:{server.effective_port}"
        ownership.publish(url)
        if options.cluster is not None:
            from eagle_index.cluster import cluster_worker

            worker = cluster_worker(service.ingest_context(), service.jobs, stop, options.cluster, options.max_attempts,
                                    options.backoff_seconds, quarantine=options.quarantine)
            service.worker_stats = worker.compute.stats
        else:
            worker = Worker(service.ingest_context(), service.jobs, stop, options.max_attempts, options.backoff_seconds,
                            quarantine=options.quarantine)
        watcher = Watcher(options.watch, service.jobs, resolver, options.settle_seconds, options.poll_seconds) if options.watch else None

        interrupted = []

        def on_signal(signum, _frame):
            log.info("received %s: stopping", signal.Signals(signum).name)
            interrupted.append(signum)
            stop.set()
            worker.wake.set()
            if watcher is not None:
                watcher.wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        errors: list[BaseException] = []
        threads = [threading.Thread(target=server.run, name="http", daemon=True),
                   threading.Thread(target=_guard(worker.run, stop, errors), name="worker")]
        if watcher is not None:
            threads.append(threading.Thread(target=_guard(lambda: watcher.run(stop), stop, errors), name="watcher"))
        for thread in threads:
            thread.start()
        log.info("%s ready: %s (pid %d), watching %s", options.role, url, os.getpid(), ", ".join(map(str, options.watch)) or "nothing")
        print(f"eagle-index {options.role} listening on {url} (pid {os.getpid()})", flush=True)
        if options.session is not None:
            try:
                options.session.start(service, stop)  # workers already take jobs while it enqueues
            except BaseException:
                stop.set()
                worker.wake.set()
                for thread in threads[1:]:
                    thread.join(options.shutdown_timeout)
                close_http_server(server, threads[0])
                service.close()
                raise
            worker.wake.set()
        while not stop.is_set():
            stop.wait(0.5)
            if options.session is not None and not stop.is_set() and options.session.tick(service):
                stop.set()  # the session's work is done (a backfill: nothing left in the queue)
                worker.wake.set()
        for thread in threads[1:]:
            thread.join(options.shutdown_timeout)
        code = options.session.finish(service, bool(interrupted), errors) if options.session is not None else 0
        close_http_server(server, threads[0])
        service.close()
        if errors and options.session is None:
            raise errors[0] if isinstance(errors[0], EagleIndexError) else EagleIndexError(
                f"{options.role} stopped: {type(errors[0]).__name__}: {errors[0]}")
        return code
    finally:
        ownership.release()


HTTP_THREADS = 8
from eagle_index.housekeeping import STALE_TEMP_SECONDS, TEMP_NAME as _TEMP_NAME, remove_stale_temp_files  # noqa: E402,F401


def make_http_server(app, host: str, port: int):
    """The waitress server `serve` and `daemon` run, with one upload limit: the app's
    MAX_CONTENT_LENGTH. Waitress reads a whole body before the app sees it, so it must refuse
    a too-large Content-Length itself (before reading a byte); it then answers like the app
    does - the JSON error shape and the security headers - instead of its plain-text page."""
    import json

    from waitress.channel import HTTPChannel
    from waitress.server import create_server
    from waitress.task import ErrorTask

    from web.errors import limit_text
    from web.security import security_headers

    limit = int(app.config.get("MAX_CONTENT_LENGTH") or 0) or (1 << 40)
    wsgi = _one_compute_thread_per_request(app)

    class JsonErrorTask(ErrorTask):
        def execute(self):
            error = self.request.error
            message = (f"request larger than the server's limit ({limit_text(limit)})" if error.code == 413
                       else f"{error.reason}: {error.body}")
            body = json.dumps({"error": {"status": error.code, "message": message}}).encode()
            self.status = f"{error.code} {error.reason}"
            self.response_headers.extend([("Content-Type", "application/json"), *security_headers("application/json").items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        error_task_class = JsonErrorTask

    server = create_server(wsgi, host=host, port=port, threads=HTTP_THREADS, ident="eagle-index",
                           max_request_body_size=limit + 1)  # waitress refuses Content-Length >= this
    for each in getattr(server, "map", {}).values() if not hasattr(server, "effective_port") else [server]:
        each.channel_class = Channel
    return server


def close_http_server(server, loop: threading.Thread | None = None, timeout: float = 10.0) -> None:
    """Let requests being answered finish (up to `timeout`), then close every socket. Waitress's
    own `close` shuts the wake-up pipe first, and a request still running (a status poll as
    SIGTERM arrives) then fails on its last write to it with a logged traceback. The sockets
    are closed by the event `loop` thread itself (a wake-up callback), so its select never sees
    a socket closed under it; without a running loop they are closed here."""
    from waitress import wasyncore

    server.task_dispatcher.shutdown(cancel_pending=True, timeout=timeout)
    sockets = server._map if hasattr(server, "_map") else server.map
    if loop is not None and loop.is_alive():
        trigger = next((each.trigger for each in [server, *sockets.values()] if hasattr(each, "trigger")), None)
        if trigger is not None:
            try:
                trigger.pull_trigger(lambda: wasyncore.close_all(sockets))
                loop.join(timeout)
            except OSError:  # the wake-up pipe is already closed (a second stop): close them here
                pass
    wasyncore.close_all(sockets)  # no loop, or it did not stop: nothing left to race with


def _one_compute_thread_per_request(app):
    """Requests run in parallel on the HTTP threads; inside one request FAISS uses one OpenMP
    thread. A single query is far too small to split (its parallel regions cost more than they
    save), and N request threads x the default OpenMP team would oversubscribe the cores, where
    spinning OpenMP workers stall everything. OpenMP's thread count is per calling thread, so
    this leaves the ingestion worker's index builds alone."""
    local = threading.local()

    def wsgi(environ, start_response):
        if not getattr(local, "ready", False):
            local.ready = True
            try:
                import faiss

                faiss.omp_set_num_threads(1)
            except ImportError:  # pragma: no cover - faiss is a dependency
                pass
        return app(environ, start_response)

    wsgi.flask_app = app
    return wsgi


def recover_after_crash(service, max_attempts: int) -> dict:
    """Jobs found `running` belong to a dead process: they go back to the queue, the attempt not
    counted. A death counts against a slide only with evidence that its own processing killed the
    process (issue 24 item 5): the dead worker's position (`ingest.worker.last_position`) names the
    slide, it was embedded alone after a clean start, and it died at the same point `max_attempts`
    times - then it is failed for good with that reason, so a slide that kills the process does
    not loop forever under a supervisor. Operator restarts and OOM kills land anywhere and fail
    nothing. (A slide that kills its reader processes fails in the pool, as any bad slide.)"""
    from eagle_index.ingest.worker import last_position

    requeued, failed = service.jobs.recover_dead_owner(max_attempts, last_position(service.settings.data_dir))
    for job in failed:  # the failed job (state, error) is the record: no slide row, no patient
        log.warning("job %d (%s) failed for good: %s", job.id, job.path, job.error)
    return {"requeued": requeued, "failed": len(failed)}


def _bind_error(host: str, port: int, exc: OSError) -> InputError:
    import errno

    if exc.errno == errno.EADDRINUSE:
        return InputError(f"port {port} on {host} is already in use (another eagle-index?); choose another with --port")
    if exc.errno == errno.EACCES:
        return InputError(f"port {port} on {host}: permission denied; choose a port above 1023 with --port")
    return InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address or --port")


def check_port(host: str, port: int) -> None:
    """Fail early (before long work such as the demo's embedding) when host:port cannot be bound."""
    import socket

    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as waitress binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise _bind_error(host, port, exc) from None


def _guard(target, stop: threading.Event, errors: list | None = None):
    """Run a thread body; a crash there stops the whole process instead of leaving it half alive."""

    def run():
        try:
            target()
        except Exception as exc:  # noqa: BLE001
            if isinstance(exc, EagleIndexError):  # an expected failure: one line, no traceback
                log.error("%s stopped: %s", threading.current_thread().name, " ".join(str(exc).split()))
            else:
                log.exception("%s crashed; stopping", threading.current_thread().name)
            if errors is not None:
                errors.append(exc)
            stop.set()

    return run


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
