"""Slide files into the ingestion queue: the one way in, for the watcher, the backfill, the demo and the API (issue 22 item 6).

`enqueue_file` fingerprints a slide (unless its caller already did, e.g. the backfill's hashing
threads) and queues it: one job per fingerprint, ever (`JobQueue.enqueue`). What happens to a
queued job when a worker claims it (the file changed or vanished since) is decided by
`ingest/worker.admit`, not here.

`enqueue_paths` is `EagleService.enqueue` (the API's `POST /jobs`): files named by a client, accepted
only inside the folders the owner ingests from. Paths must be absolute; they are resolved (symlinks,
'..') before the check, and every slide found inside a named folder is checked again, so a link
cannot lead outside. A patient id taken from a file name obeys the identifier rule: that file is
refused, with why.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from eagle_index.errors import InputError
from eagle_index.fingerprint import slide_fingerprint


class PathRefused(InputError):
    """A requested path this owner does not ingest from (outside its folders, missing, not a file): 400 on `paths`."""


def enqueue_file(queue, path: str | Path, patient: str | None, mpp: float | None = None, note: str | None = None,
                 fingerprint: str | None = None) -> tuple[str, int]:
    """('queued' | 'duplicate' | 'skipped', job id) for one slide file (already checked by the caller)."""
    if fingerprint is None:
        fingerprint = slide_fingerprint(Path(path))
    return queue.enqueue(fingerprint, str(path), patient, mpp, note)


@dataclass(frozen=True)
class EnqueueAnswer:
    """Queued slides ({"file", "state", "job"}) and the files refused ({"file", "reason"})."""

    jobs: list[dict] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"jobs": list(self.jobs), "refused": list(self.refused)}


def inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def resolve_inside(raw: str, roots: list[Path]) -> Path:
    """The real path (symlinks and '..' resolved) of a requested file, if it lies inside a root; else PathRefused."""
    where = ", ".join(map(str, roots)) or "none configured: start the server with --watch"
    if not isinstance(raw, str) or not raw or len(raw) > 4096 or "\x00" in raw:
        raise PathRefused("each path must be a non-empty file path")
    try:
        path = Path(raw).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        raise PathRefused(f"{raw}: not a usable path") from None
    if not Path(raw).is_absolute() or not inside(path, roots):
        raise PathRefused(f"{raw} is outside the folders this server ingests from ({where})")
    try:
        mode = path.stat().st_mode
    except OSError:
        raise PathRefused(f"{raw}: file not found") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # a FIFO would block this thread in open() for ever
        raise PathRefused(f"{raw}: not a regular file (nor a folder)")
    return path


def enqueue_paths(queue, paths: list[str | Path], roots, patient: str | None = None, resolver=None) -> EnqueueAnswer:
    """Queue the slide files named (or found in folders named) by `paths` that lie inside `roots`.

    Every path is checked before anything is queued (one PathRefused names the first bad one);
    `patient` (held to the identifier rule) owns every slide, else the `resolver` (default: the
    file name) names each slide's patient."""
    from eagle_index.identifiers import check_identifier
    from eagle_index.ingest.patients import PatientResolver
    from eagle_index.ingest.steps import find_slides

    if patient is not None:
        patient = check_identifier("patient id", patient)
    resolver = resolver or PatientResolver()
    roots = [Path(r).resolve() for r in roots or ()]
    resolved = [resolve_inside(str(raw) if isinstance(raw, Path) else raw, roots) for raw in paths]
    accepted, refused = [], []
    for path in resolved:
        for slide in find_slides([path]):
            real = slide.resolve()
            if not inside(real, roots):
                refused.append({"file": str(slide), "reason": "links outside the ingest folders"})
                continue
            owner = patient or resolver.resolve(real).patient
            if patient is None:  # an id taken from the file name obeys the same rule: this file is refused, with why
                try:
                    owner = check_identifier("patient id", owner, where=f"{real.name} (patient id from the file name)")
                except InputError as exc:
                    refused.append({"file": str(slide), "reason": f"{exc}; give the patient in the request or a slide table"})
                    continue
            state, job_id = enqueue_file(queue, real, owner)
            accepted.append({"file": str(real), "state": state, "job": job_id})
    return EnqueueAnswer(accepted, refused)
