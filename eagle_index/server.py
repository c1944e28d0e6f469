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
import signal
import threading
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


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_owner(settings: Settings, options: OwnerOptions) -> int:
    """Run until a signal arrives; returns the exit code."""
    from waitress.server import create_server

    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.watcher import Watcher
    from eagle_index.ingest.worker import Worker
    from eagle_index.owner import Ownership
    from eagle_index.service import EagleService
    from web import create_app

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
    ownership = Ownership(settings.data_dir, options.role).acquire()
    stop = threading.Event()
    try:
        service = EagleService(settings)
        recovered = service.jobs.recover()
        service.probes.recover()
        service.vectors.sync_all()  # reconcile FAISS with the catalog after any crash
        if recovered:
            log.info("requeued %d job(s) left running by a previous process", recovered)
        resolver = PatientResolver(options.slide_table, options.patient_regex)
        owner = {"role": options.role, "roots": list(options.watch), "resolver": resolver, "token": options.token}
        app = create_app(settings, service=service, owner=owner)
        try:
            server = create_server(app, host=options.host, port=options.port, threads=8, ident="eagle-index")
        except OSError as exc:
            raise _bind_error(options.host, options.port, exc) from None
        url = f"http://{_url_host(options.host)}:{server.effective_port}"
        ownership.publish(url)
        worker = Worker(service, service.jobs, stop, options.max_attempts, options.backoff_seconds,
                        quarantine=options.quarantine)
        watcher = Watcher(options.watch, service.jobs, resolver, options.settle_seconds, options.poll_seconds) if options.watch else None

        def on_signal(signum, _frame):
            log.info("received %s: stopping", signal.Signals(signum).name)
            stop.set()
            worker.wake.set()
            if watcher is not None:
                watcher.wake.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        threads = [threading.Thread(target=server.run, name="http", daemon=True),
                   threading.Thread(target=_guard(worker.run, stop), name="worker")]
        if watcher is not None:
            threads.append(threading.Thread(target=_guard(lambda: watcher.run(stop), stop), name="watcher"))
        for thread in threads:
            thread.start()
        log.info("%s ready: %s (pid %d), watching %s", options.role, url, os.getpid(), ", ".join(map(str, options.watch)) or "nothing")
        print(f"eagle-index {options.role} listening on {url} (pid {os.getpid()})", flush=True)
        while not stop.is_set():
            stop.wait(0.5)
        for thread in threads[1:]:
            thread.join(options.shutdown_timeout)
        server.close()
        service.close()
        return 0
    finally:
        ownership.release()


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


def _guard(target, stop: threading.Event):
    """Run a thread body; a crash there stops the whole process instead of leaving it half alive."""

    def run():
        try:
            target()
        except EagleIndexError as exc:  # an expected failure: one line, no traceback
            log.error("%s stopped: %s", threading.current_thread().name, " ".join(str(exc).split()))
            stop.set()
        except Exception:  # noqa: BLE001
            log.exception("%s crashed; stopping", threading.current_thread().name)
            stop.set()

    return run


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
