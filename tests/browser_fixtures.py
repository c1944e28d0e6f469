"""What every browser-test module shares: Chromium + Playwright, one way to start a server and a page.

The modules differ only in the server they start (a copied archive, the viewer's slide, `make demo`)
and in which failures a page may show on purpose; everything else lives here so a change to how
the browser is launched, how a page's problems are collected or how a server is awaited is made once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None

SKIPS = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (make test installs it)"),
    pytest.mark.skipif(not HAVE_PLAYWRIGHT, reason="playwright not installed (pip install -e .[dev])"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 60):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_server(proc: subprocess.Popen, url: str, log_path: Path, timeout_s: float = 120, own_pid: bool = False) -> None:
    """Until `url` answers /api/v1/health (from `proc` itself when `own_pid`: another server on the port would
    vanish mid-test); the server's log is the failure message if it exits or never answers."""
    deadline = time.time() + timeout_s
    while True:
        assert proc.poll() is None, Path(log_path).read_text()
        try:
            health = get_json(f"{url}/api/v1/health", timeout=30)
            if health["ok"] and (not own_pid or health.get("pid") == proc.pid):
                return
        except OSError:
            pass
        assert time.time() < deadline, f"server did not start within {timeout_s:.0f} s: {Path(log_path).read_text()[-2000:]}"
        time.sleep(0.2)  # polling a port, not waiting for an effect: the deadline above is what bounds it


@contextlib.contextmanager
def browser_context(profile: Path, viewport=(1280, 900), timeout_ms: int = 30_000, downloads: bool = True):
    """A persistent Chromium context (the system's Chromium, headless) with a default timeout."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True,
                                                   viewport={"width": viewport[0], "height": viewport[1]},
                                                   accept_downloads=downloads)
        ctx.set_default_timeout(timeout_ms)
        try:
            yield ctx
        finally:
            ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def watched_page(context, base: str, *, http_errors: bool = True, failed_requests: bool = True, ignore_console=()):
    """A new page whose script errors, console errors, failed requests and (with `http_errors`) 4xx/5xx
    answers are collected in `page.problems`; `check_page` asserts there are none. A request cut off
    because the test moved on (net::ERR_ABORTED) is not a problem."""
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" and not any(text in msg.text for text in ignore_console) else None)
    if failed_requests:
        page.on("requestfailed", lambda r: problems.append(f"failed {r.url}: {r.failure}")
                if "ERR_ABORTED" not in (r.failure or "") else None)
    if http_errors:
        page.on("response", lambda r: problems.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.base = base
    page.problems = problems
    return page


def check_page(page) -> None:
    page.close()
    assert page.problems == []


def goto(page, path: str) -> None:
    """Open a page and wait until its script has loaded its data (it sets body[data-ready])."""
    page.goto(f"{page.base}{path}")
    page.wait_for_selector("body[data-ready]", state="attached")
