"""Stopping the HTTP server while a request is still being answered (a status poll as SIGTERM
arrives) must not log a traceback: the in-flight request finishes first, then the server's
sockets close. Waitress's own `close` closes the wake-up pipe under the running request,
whose last step writes to it (EBADF, logged as 'Exception when servicing').

The scenario runs in a fresh interpreter, as `eagle-index serve` does: file descriptors are
per process, and in a long pytest worker one closed twice by another test's leftovers can be
the number this server's wake-up pipe gets (one fresh-clone run failed with EBADF on that
pipe before the scenario was isolated)."""

from __future__ import annotations

import http.client
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path


def _scenario() -> dict:
    from flask import Flask

    from eagle_index.server import close_http_server, make_http_server

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("waitress").addHandler(handler)
    logging.getLogger("waitress").setLevel(logging.WARNING)

    entered, release = threading.Event(), threading.Event()
    app = Flask("slow")

    @app.get("/slow")
    def slow():
        entered.set()
        release.wait(2)  # without a release the request ends on its own: the scenario never hangs
        return {"ok": True}

    server = make_http_server(app, "127.0.0.1", 0)
    loop = threading.Thread(target=server.run, daemon=True)
    loop.start()
    answers: list = []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        try:
            connection.request("GET", "/slow")
            answers.append(connection.getresponse().status)
        except OSError as exc:
            answers.append(repr(exc))
        finally:
            connection.close()

    requester = threading.Thread(target=client)
    requester.start()
    assert entered.wait(30)
    close_http_server(server, loop)  # while /slow is running
    release.set()
    server.task_dispatcher.shutdown()  # whatever was still running has ended before the log is read
    requester.join(30)
    loop.join(30)
    return {"alive": [requester.is_alive(), loop.is_alive()], "answers": answers,
            "logged": [r.getMessage() for r in records if r.exc_info or "Exception" in r.getMessage()]}


def test_closing_the_server_lets_an_in_flight_request_finish_without_a_traceback():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["alive"] == [False, False]
    assert outcome["answers"] == [200]
    assert outcome["logged"] == [], done.stderr[-3000:]


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(_scenario()))
