"""Progress bars for long commands: rich bars with counts and an ETA on a terminal, nothing otherwise.

Each context manager yields a callback the service accepts (or None when stderr is not a
terminal, or with --json), so piped output and JSON stay clean. rich comes with typer and is
imported only when a bar is shown.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager


def wanted(enabled: bool = True) -> bool:
    return enabled and sys.stderr.isatty()


def _bar(*, transient: bool = False):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=Console(stderr=True), transient=transient)


class SlideProgress:
    """Callback for embedding: called with a tile count; `.slide(i, n, name)` when a slide starts."""

    def __init__(self, bar):
        self.bar = bar
        self.slides = None
        self.tiles = bar.add_task("tiles", total=None, unit="tiles")

    def slide(self, index: int, total: int, name: str) -> None:
        if self.slides is None:
            self.slides = self.bar.add_task("slides", total=total, unit="slides")
        self.bar.update(self.slides, completed=index, description=f"slides ({name})")

    def done(self) -> None:
        if self.slides is not None:
            task = self.bar.tasks[self.slides]
            self.bar.update(self.slides, completed=task.total, description="slides")

    def __call__(self, n: int) -> None:
        self.bar.advance(self.tiles, n)


@contextmanager
def slide_progress(enabled: bool = True):
    """For `embed` and `ingest`: slides done of total (with ETA) and tiles embedded."""
    if not wanted(enabled):
        yield None
        return
    with _bar() as bar:
        tracker = SlideProgress(bar)
        yield tracker
        tracker.done()


@contextmanager
def step_progress(enabled: bool = True, description: str = "working", unit: str = "steps"):
    """For callbacks of the form `progress(done, total, message)` (probes, imports)."""
    if not wanted(enabled):
        yield None
        return
    with _bar() as bar:
        task = bar.add_task(description, total=None, unit=unit)

        def tick(done: int, total: int, message: str = "") -> None:
            bar.update(task, completed=done, total=total, description=message or description)

        yield tick


@contextmanager
def spinner(enabled: bool = True, description: str = "working"):
    """For one opaque computation (a UMAP fit): elapsed time while it runs."""
    if not wanted(enabled):
        yield None
        return
    from rich.console import Console

    with Console(stderr=True).status(description):
        yield None
