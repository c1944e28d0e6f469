"""Content fingerprints of slide files: the same slide renamed or copied is the same slide."""

from __future__ import annotations

import hashlib
from pathlib import Path

from eagle_index.errors import SlideError

CHUNK = 1 << 22


def companion_files(path: Path) -> list[Path]:
    """Files that belong to a multi-file slide (MRXS: the folder named after the file's stem)."""
    if path.suffix.lower() == ".mrxs":
        folder = path.with_suffix("")
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file())
    return []


def slide_fingerprint(path: Path) -> str:
    """SHA-256 over the slide's bytes (and its companion files, by relative name)."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        for part in [path, *companion_files(path)]:
            digest.update(str(part.relative_to(path.with_suffix(""))).encode() if part != path else b"main")
            with open(part, "rb") as handle:
                while block := handle.read(CHUNK):
                    digest.update(block)
    except OSError as exc:
        raise SlideError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    return f"sha256:{digest.hexdigest()}"
