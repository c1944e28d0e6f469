"""Stopping the HTTP server while a request is still being answered (a status poll as SIGTERM
arrives) must not log a traceback: the in-flight request finishes first, then the server's
sockets close. Waitress's own `close` closes the wake-up pipe under the running request,
whose last step writes to it (EBADF, logged as 'Exception when servicing')."""

from __future__ import annotations

import http.client
import logging
import threading

from flask import Flask


def test_closing_the_server_lets_an_in_flight_request_finish_without_a_traceback(caplog):
    from eagle_index.server import close_http_server, make_http_server

    entered, release = threading.Event(), threading.Event()
    app = Flask("slow")

    @app.get("/slow")
    def slow():
        entered.set()
        release.wait(2)  # without a release the request ends on its own: the test never hangs
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
            answers.append(exc)
        finally:
            connection.close()

    requester = threading.Thread(target=client)
    caplog.set_level(logging.WARNING, logger="waitress")
    requester.start()
    assert entered.wait(30)
    close_http_server(server, loop)  # while /slow is running
    release.set()
    server.task_dispatcher.shutdown()  # whatever was still running has ended before the log is read
    requester.join(30)
    loop.join(30)
    assert not requester.is_alive() and not loop.is_alive()
    assert answers == [200]
    assert not [r for r in caplog.records if r.exc_info or "Exception" in r.getMessage()], caplog.text
