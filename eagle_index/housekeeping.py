"""Start-up cleanup of the data folder: what killed runs leave behind (issue 24 item 9).

The owner (`server.run_owner`) calls `remove_stale_temp_files` right after it takes the data
folder, so no other eagle-index writer of this folder is alive. Only names this project writes
are touched, and never a file modified within the last `settings.stale_file_seconds` (env
`EAGLE_INDEX_STALE_FILE_SECONDS`, default 60 s):

- temp files of `atomic.py` (`.NAME.XXXXXXXX.tmp`, mkstemp's 8 characters) in the data folder
  itself (`.owner.json.*.tmp`: a kill while `owner.json` was published), `index/`, `artifacts/`,
  `cache/` (every subfolder: dzi, thumbnails, tiles, exports, umap) and `uploads/`;
- exports (`cache/exports/<32 hex>.<suffix>`): each is deleted once sent, so one still there was
  being sent when its process died;
- upload images of the old layout (`cache/thumbnails/upload-*.png`, `cache/tiles/upload-*.png`):
  an upload's images now live in `cache/uploads/<id>/` and leave with the upload, so these are
  never served again; and the cached images (`cache/uploads/<id>/`) of uploads that are gone;
- stray uploads (`uploads/<32 hex>.<suffix>`, `uploads/labels-XXXXXXXX.csv|xlsx`): the tasks and
  pages that used them lived in the dead process. An upload whose path the catalog records (a slide
  or a job ingested from it) stays; when the catalog cannot be read, every upload stays.

A file too fresh at start (a supervisor restarting the owner within the threshold of a kill) would
otherwise stay forever; `recheck=True` (what the owner passes) looks again once the threshold has
passed, and then deletes only such files that predate this process's start - never one of its own.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

# Temp names this project writes (eagle_index.atomic.atomic_path, used by formats.h5util, store.vectors,
# owner.Ownership.publish, the caches, ...): `.NAME.XXXXXXXX.tmp` beside the target (mkstemp's 8 characters).
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")
STALE_TEMP_SECONDS = 60.0  # the default of Settings.stale_file_seconds
GENERATED = re.compile(r"^[0-9a-f]{32}(\.[A-Za-z0-9]{1,8})?$")  # uploads and exports: uuid4().hex + suffix
OLD_UPLOAD_IMAGE = re.compile(r"^upload-[0-9a-f]{32}-[0-9-]+\.png$")
LABEL_UPLOAD = re.compile(r"^labels-[A-Za-z0-9_]{8}\.(csv|xlsx)$")  # web/api/catalog.py's mkstemp names


def _temp_files(settings) -> list[Path]:
    data = Path(settings.data_dir)
    found = [p for p in data.glob(".owner.json.*.tmp") if TEMP_NAME.match(p.name)]
    for folder in (settings.index_dir, settings.artifacts_dir, data / "cache", data / "uploads"):
        if folder.is_dir():
            found.extend(p for p in folder.rglob(".*.tmp") if TEMP_NAME.match(p.name))
    return found


def _exports(settings) -> list[Path]:
    cache = Path(settings.data_dir) / "cache"
    found = [p for p in (cache / "exports").iterdir() if GENERATED.match(p.name)] if (cache / "exports").is_dir() else []
    for folder in (cache / "thumbnails", cache / "tiles"):  # upload images of the old layout (before issue 24)
        if folder.is_dir():
            found.extend(p for p in folder.glob("upload-*.png") if OLD_UPLOAD_IMAGE.match(p.name))
    return found


def _uploads(settings) -> list[Path]:
    folder = Path(settings.data_dir) / "uploads"
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if GENERATED.match(p.name) or LABEL_UPLOAD.match(p.name)]


def catalog_paths_under(settings, folder: Path) -> set[str] | None:
    """Paths under `folder` that the catalog's slides or jobs record; None if the catalog cannot be read.

    Read with a short read-only DuckDB connection (before the service opens the catalog)."""
    path = Path(settings.catalog_path)
    if not path.exists():
        return set()
    try:
        import duckdb

        connection = duckdb.connect(str(path), read_only=True)
        try:
            prefixes = sorted({str(folder).rstrip("/") + "/%", str(Path(folder).resolve()).rstrip("/") + "/%"})
            tables = {row[0] for row in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
            found: set[str] = set()
            for table in ("slides", "jobs"):
                if table in tables:
                    for prefix in prefixes:
                        found.update(row[0] for row in connection.execute(
                            f"SELECT path FROM {table} WHERE path LIKE ?", [prefix]).fetchall())
            return found
        finally:
            connection.close()
    except Exception as exc:  # noqa: BLE001 - whatever the reason, keeping the uploads is the safe answer
        log.warning("start-up cleanup: cannot read the catalog (%s); keeping every upload", " ".join(str(exc).split())[:200])
        return None


def _candidates(settings, referenced: set[str] | None) -> list[Path]:
    """What may go (the age is checked by `_remove`). `referenced`: the catalog's upload paths (None: the
    catalog could not be read, every upload stays)."""
    found = _temp_files(settings) + _exports(settings)
    uploads = [p for p in _uploads(settings) if not TEMP_NAME.match(p.name)]
    if uploads:
        if referenced is None:
            uploads = []
        else:
            uploads = [p for p in uploads if str(p) not in referenced and str(p.resolve()) not in referenced]
    return sorted(set(found + uploads))


def _orphan_images(settings) -> list[Path]:
    """Cached images of uploads that are gone (`cache/uploads/<id>/*`, the layout of eagle_index/media.py)."""
    cached = Path(settings.data_dir) / "cache" / "uploads"
    if not cached.is_dir():
        return []
    uploads = Path(settings.data_dir) / "uploads"
    present = {p.name.split(".", 1)[0] for p in uploads.iterdir()} if uploads.is_dir() else set()
    return [p for folder in cached.iterdir() if folder.is_dir() and GENERATED.match(folder.name) and folder.name not in present
            for p in folder.iterdir()]


def _clean(settings, referenced: set[str] | None, cutoff: float) -> list[Path]:
    removed = _remove(_candidates(settings, referenced), cutoff)
    removed += _remove(_orphan_images(settings), cutoff)  # after the uploads: their images go with them
    for folder in {p.parent for p in removed if p.parent.parent.name == "uploads" and p.parent.parent.parent.name == "cache"}:
        try:
            folder.rmdir()
        except OSError:
            pass
    return removed


def _remove(paths: list[Path], cutoff: float) -> list[Path]:
    removed = []
    for path in paths:
        try:
            if path.is_file() and not path.is_symlink() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except OSError as exc:
            log.warning("cannot remove %s: %s", path, exc)
    return removed


def remove_stale_temp_files(settings, older_than: float | None = None, recheck: bool = False) -> list[Path]:
    """Delete what killed runs left (see the module's doc) that is older than `older_than` seconds
    (default `settings.stale_file_seconds`); the deleted paths. `recheck`: look again once that
    time has passed (a daemon timer), for files that predate this call but were too fresh now."""
    age = float(settings.stale_file_seconds if older_than is None else older_than)
    started = time.time()
    # read once, now, before the service opens the catalog (in the owner's process DuckDB refuses a second,
    # read-only connection to a catalog it holds open); the second pass uses the same answer
    referenced = catalog_paths_under(settings, Path(settings.data_dir) / "uploads") if _uploads(settings) else set()
    removed = _clean(settings, referenced, started - age)
    if recheck:
        timer = threading.Timer(age + 1.0, _second_pass, args=(settings, started, referenced))
        timer.daemon = True
        timer.name = "eagle-index-housekeeping"
        timer.start()
    return removed


def _second_pass(settings, started: float, referenced: set[str] | None) -> list[Path]:
    """Leftovers that were too fresh at start: only those modified before `started` (never this process's own).
    `referenced`: the catalog's upload paths as read at start (None: it could not be read; uploads stay)."""
    try:
        removed = _clean(settings, referenced, started)
    except Exception as exc:  # noqa: BLE001 - a background clean-up never takes the owner down
        log.warning("start-up cleanup, second pass: %s", exc)
        return []
    if removed:
        log.info("removed %d file(s) left by killed runs: %s", len(removed), ", ".join(map(str, removed[:5])))
    return removed
