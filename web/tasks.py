"""Background tasks owned by the app: probe training, few-shot curves, searches by uploaded slide.

A request validates its input at once (errors come back as 400/404 immediately), then hands
the slow part to `TaskRunner.submit`, which runs it on a few daemon worker threads (so a
long training never holds up a server shutdown) and keeps its state, progress and result in
memory for polling (`GET /api/v1/tasks/<id>`). Tasks do not survive a restart; what they
produce that matters (a trained probe) is in the catalog.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from eagle_index.errors import EagleIndexError

log = logging.getLogger(__name__)

KEEP = 200  # finished tasks remembered for polling


@dataclass
class Task:
    id: str
    kind: str
    meta: dict
    state: str = "queued"  # queued -> running -> done | failed
    done: int = 0
    total: int = 0
    message: str = ""
    result: Any = None
    error: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None

    def as_dict(self, with_result: bool = True) -> dict:
        out = {"id": self.id, "kind": self.kind, "state": self.state, "meta": self.meta,
               "progress": {"done": self.done, "total": self.total, "message": self.message,
                            "fraction": round(self.done / self.total, 4) if self.total else None},
               "error": self.error,
               "seconds": round((self.finished_at or time.time()) - self.started_at, 3) if self.started_at else None}
        if with_result:
            out["result"] = self.result.as_dict() if hasattr(self.result, "as_dict") else self.result
        return out


class TaskRunner:
    def __init__(self, workers: int = 2):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self._lock = threading.Lock()
        self._workers = workers
        self._started: list[threading.Thread] = []

    def _worker(self) -> None:
        while True:
            task, work = self._queue.get()
            self._run(task, work)

    def submit(self, task_kind: str, work: Callable[[Callable[[int, int, str], None]], Any], /, **meta) -> Task:
        """Run `work(progress)` in the background; `progress(done, total, message)` updates the task."""
        task = Task(id=uuid.uuid4().hex, kind=task_kind, meta=meta)
        with self._lock:
            self._tasks[task.id] = task
            self._forget_old()
            if len(self._started) < self._workers:  # threads start on first use, not at app creation
                thread = threading.Thread(target=self._worker, name=f"eagle-task-{len(self._started)}", daemon=True)
                thread.start()
                self._started.append(thread)
        self._queue.put((task, work))
        return task

    def _run(self, task: Task, work) -> None:
        def progress(done: int, total: int, message: str = "") -> None:
            task.done, task.total, task.message = int(done), int(total), str(message)

        task.state, task.started_at = "running", time.time()
        try:
            task.result = work(progress)
            task.state = "done"
        except EagleIndexError as exc:
            from web.errors import page_words

            task.error, task.state = page_words(str(exc)), "failed"
        except Exception:  # noqa: BLE001 - a task must never take the server down
            log.exception("background task %s (%s) failed", task.id, task.kind)
            task.error, task.state = "internal error (details are in the server log)", "failed"
        finally:
            task.finished_at = time.time()

    def get(self, task_id: str) -> Task | None:
        with self._lock:
            return self._tasks.get(task_id)

    def find(self, task_kind: str, /, **meta) -> Task | None:
        """The newest task of `task_kind` whose meta matches (e.g. the training of one probe)."""
        with self._lock:
            for task in reversed(self._tasks.values()):
                if task.kind == task_kind and all(task.meta.get(k) == v for k, v in meta.items()):
                    return task
        return None

    def _forget_old(self) -> None:
        finished = [t.id for t in self._tasks.values() if t.state in ("done", "failed")]
        for task_id in finished[: max(0, len(finished) - KEEP)]:
            del self._tasks[task_id]
