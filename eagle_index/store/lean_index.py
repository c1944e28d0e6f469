"""The memory-lean index type ("lean", issue 20 item 2): PQ codes in RAM, exact re-ranking from disk.

RAM per vector is bounded by compressed codes, not floats. A `LeanIndex` is:
- `base`: a FAISS IVF index whose vectors are 4-bit fast-scan PQ codes of the residuals
  (`IVF{nlist},PQ{m}x4fsr`, the same coarse index and codes as the "ivf" type, without its
  in-RAM float copy); its ids are slot numbers. In RAM: the codes (dim / `ivf_pq_dims_per_code`
  / 2 bytes: 160 B at 1280-d) plus FAISS's 8-byte id per code;
- a refine store: the unit vectors in 16-bit fixed point (int16 = round(x * 32767); |x| <= 1),
  one row per *slot*, in a file next to the index (`<basename>.<token>.i16`), memory-mapped
  read-only; the slot -> id array and its sorted lookup (24 B per slot) are in RAM.
A search asks `base` for `k_factor * k` candidates (nprobe lists), reads their rows from the map
and re-ranks them exactly (float32 inner product with the query scaled by 1/32767, store/rerank.py), so scores are
the cosines of the fixed-point vectors (each component within 1.5e-5 of the float32 one, a cosine within
5.5e-4 at worst, about 1e-5 typically) and the order is exact among the candidates. Fixed point rather than float16: numpy
widens int16 to float32 in SIMD, float16 in scalar code, so re-ranking a row costs about a quarter
(1,280 scattered rows: 0.9 ms vs 3.1 ms, docs/benchmarks.md) at the same 2 bytes per value.

In-place updates (the writer thread, under the catalog's exclusive lock) are append-only:
removals tombstone their slots (slot id -1; their codes stay in `base` and are skipped at search);
additions take new slots, append fixed-point rows to the end of the refine file (rows already written
are never changed, so an older saved index still reads its own slots correctly) and add their
codes to `base`. `base` is never asked to remove: FAISS 1.15.1's fast-scan IVF gives codes added
after a `remove_ids` wrong distances (measured: up to 0.44 off in inner product, the self-match of
a new vector ranked 133rd instead of 2nd), so removals would silently cost recall. When tombstones
pass half of the slots a removal raises RuntimeError, which `DerivedIndex._apply` answers with a
rebuild (a rewrite of both files).

Files: the index file (`<basename>.faiss`, written atomically by `DerivedIndex._save`) holds a
header (format, dim, slot count, the refine file's name), the slot ids and the FAISS base; every build
writes a new refine file under a fresh token, so the saved index file switches refine files
atomically. `remove_stale_refine_files` deletes the others after a save (a reader that still
maps one keeps its pages; Linux frees them at unmap).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import secrets
import tempfile
from pathlib import Path

import numpy as np

from eagle_index.store.rerank import row_scores, top_k_by_score

log = logging.getLogger(__name__)

LEAN_FORMAT = 3  # 3: int16 fixed-point refine rows (.i16); 2 (float16 rows) is read as stale and rebuilt
MAX_TOMBSTONE_SHARE = 0.5
MAGIC = b"EAGLELEAN"
FIXED_POINT = 32767.0  # refine rows hold round(x * FIXED_POINT) as int16 (unit vectors: |x| <= 1)
REFINE_SUFFIXES = (".i16", ".f16")  # this format's refine files, and format 2's (removed as stale)
WARM_CHUNK_PAGES = 16_384  # pages touched per numpy call while warming (64 MiB)


class LeanIndex:
    """IVF-PQ codes in RAM + exact re-ranking from memory-mapped fixed-point vectors; FAISS-like API
    (`d`, `ntotal`, `search`, `add_with_ids`, `remove_ids`) for `DerivedIndex`."""

    def __init__(self, base, dim: int, refine_path: Path, k_factor: float = 128.0, slot_ids: np.ndarray | None = None):
        self.base = base  # faiss.IndexIVF (fast-scan PQ), ids = catalog ids
        self.d = int(dim)
        self.k_factor = float(k_factor)
        self.refine_path = Path(refine_path)
        self.slot_ids = np.zeros(0, np.int64) if slot_ids is None else np.asarray(slot_ids, np.int64)
        self._map: np.ndarray | None = None
        self._mmap: mmap.mmap | None = None
        self._index_lookup()
        self._remap()

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def create(cls, base, dim: int, store_dir: Path | None, stem: str, k_factor: float) -> "LeanIndex":
        """An empty lean index over a trained `base`, with a new (empty) refine file in `store_dir`
        (None: the temp directory - benchmarks and tests)."""
        directory = Path(store_dir) if store_dir is not None else Path(tempfile.gettempdir())
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{stem}.{secrets.token_hex(6)}{REFINE_SUFFIXES[0]}"
        path.write_bytes(b"")
        return cls(base, dim, path, k_factor)

    def write(self, path: Path) -> None:
        """Write the index file: magic, a JSON header (format, dim, slots, refine file name), the slot ids,
        then the FAISS base streamed by `faiss.write_index`; the refine rows are on disk already (fsynced here)."""
        import faiss

        with open(self.refine_path, "rb+") as handle:
            os.fsync(handle.fileno())
        header = json.dumps({"format": LEAN_FORMAT, "dim": self.d, "slots": len(self.slot_ids),
                             "refine": self.refine_path.name}).encode()
        with open(path, "wb") as out:
            out.write(MAGIC + len(header).to_bytes(4, "little") + header)
            out.write(np.ascontiguousarray(self.slot_ids, "<i8").tobytes())
            faiss.write_index(self.base, faiss.PyCallbackIOWriter(out.write))
            out.flush()
            os.fsync(out.fileno())

    @classmethod
    def read(cls, path: Path, k_factor: float) -> "LeanIndex":
        """Open a saved lean index; ValueError/OSError if it or its refine file is missing or short."""
        import faiss

        with open(path, "rb") as handle:
            if handle.read(len(MAGIC)) != MAGIC:
                raise ValueError("not a lean index file")
            header = json.loads(handle.read(int.from_bytes(handle.read(4), "little")))
            if header.get("format") != LEAN_FORMAT:
                raise ValueError(f"lean index format {header.get('format')}")
            dim, slots = int(header["dim"]), int(header["slots"])
            slot_ids = np.frombuffer(handle.read(slots * 8), "<i8").astype(np.int64)
            if len(slot_ids) != slots:
                raise ValueError("lean index file truncated")
            base = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
            refine = Path(path).parent / str(header["refine"])
        need = len(slot_ids) * dim * 2
        if not refine.exists() or refine.stat().st_size < need:
            raise ValueError(f"refine file {refine.name} missing or shorter than {need} bytes")
        return cls(base, dim, refine, k_factor, slot_ids)

    # -- state ----------------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        """Live vectors (slots less tombstones)."""
        return len(self._sorted_ids)

    @property
    def tombstones(self) -> int:
        return self._tombstones

    def _index_lookup(self) -> None:
        """The sorted id -> slot lookup and the tombstone count (counted here, not per search: 2 ms at 5M slots)."""
        live = np.flatnonzero(self.slot_ids >= 0)
        self._tombstones = len(self.slot_ids) - len(live)
        order = np.argsort(self.slot_ids[live], kind="stable")
        self._sorted_ids = self.slot_ids[live][order]
        self._sorted_slots = live[order]

    def _remap(self) -> None:
        """Map the refine file's rows as a plain ndarray over an mmap (np.memmap's subclass hooks cost
        0.4 us a row gathered). The old map is dropped, not closed: a search or warm-up still reading it
        keeps it valid until it lets go."""
        n = len(self.slot_ids)
        if not n:
            self._mmap, self._map = None, np.zeros((0, self.d), np.int16)
            return
        with open(self.refine_path, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), n * self.d * 2, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):  # re-ranking reads scattered rows: no read-ahead around each
            mapped.madvise(mmap.MADV_RANDOM)
        self._mmap, self._map = mapped, np.frombuffer(mapped, dtype="<i2", count=n * self.d).reshape(n, self.d)

    def warm(self) -> int:
        """Read the refine file into page cache and map every page into this process, so re-ranking
        takes no page faults (at 5M vectors a query's 3,200 scattered rows otherwise fault 4-5k pages:
        about half its time). Returns the bytes touched. Safe beside searches and adds: it reads the
        map it started with (an add remaps; the old map stays valid until this drops it)."""
        rows, mapped = self._map, self._mmap
        if mapped is None or rows is None or not len(rows):
            return 0
        if hasattr(mmap, "MADV_WILLNEED"):
            mapped.madvise(mmap.MADV_WILLNEED)  # asynchronous read-ahead of the whole file
        flat = rows.reshape(-1)
        per_page = max(1, mmap.PAGESIZE // flat.itemsize)
        step = WARM_CHUNK_PAGES * per_page
        for start in range(0, flat.size, step):
            int(flat[start:start + step:per_page].sum(dtype=np.int64))  # one read per page
        return int(flat.nbytes)

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slots of live ids (-1 for ids not held)."""
        ids = np.asarray(ids, np.int64)
        if not len(self._sorted_ids):
            return np.full(ids.shape, -1, np.int64)
        pos = np.clip(np.searchsorted(self._sorted_ids, ids), 0, len(self._sorted_ids) - 1)
        return np.where(self._sorted_ids[pos] == ids, self._sorted_slots[pos], -1)

    # -- updates --------------------------------------------------------------------------------
    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = np.ascontiguousarray(vectors, np.float32)
        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        if (self.slots_of(ids) >= 0).any():
            raise RuntimeError("lean index: id added twice")
        with open(self.refine_path, "r+b") as handle:  # append after the last slot (drops a torn tail)
            handle.truncate(len(self.slot_ids) * self.d * 2)
            handle.seek(0, os.SEEK_END)
            handle.write(to_fixed_point(vectors).tobytes())
        first = len(self.slot_ids)
        self.base.add_with_ids(vectors, np.arange(first, first + len(ids), dtype=np.int64))
        self.slot_ids = np.concatenate([self.slot_ids, ids])
        self._index_lookup()
        self._remap()

    def remove_ids(self, ids) -> int:
        slots = self.slots_of(np.unique(np.asarray(ids, np.int64)))
        slots = slots[slots >= 0]
        if not len(slots):
            return 0
        if self.tombstones + len(slots) > MAX_TOMBSTONE_SHARE * len(self.slot_ids):
            raise RuntimeError("lean index: over half its refine rows would be tombstones")
        self.slot_ids = self.slot_ids.copy()
        self.slot_ids[slots] = -1  # the codes stay in base (see the module doc), skipped at search
        self._index_lookup()
        return len(slots)

    # -- search ---------------------------------------------------------------------------------
    def search(self, x: np.ndarray, k: int, params=None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k]: `k_factor * k` PQ candidates per query re-ranked exactly; -1 / -inf pads.
        (FAISS `params` such as id selectors are not supported: `base` holds slots, not ids.)"""
        if params is not None:
            raise RuntimeError("lean index: search params are not supported")
        x = np.ascontiguousarray(x, np.float32)
        nq = len(x)
        out_ids = np.full((nq, k), -1, np.int64)
        out_scores = np.full((nq, k), -np.inf, np.float32)
        if self.ntotal == 0 or k <= 0:
            return out_scores, out_ids
        want = int(min(self.base.ntotal, max(k, round(k * self.k_factor)) + self.tombstones))
        _, cand = self.base.search(x, want)
        scaled = x / FIXED_POINT  # the fixed-point rows' scale folded into the query
        for q in range(nq):
            slots = np.sort(cand[q][cand[q] >= 0])  # read the map in file order
            slots = slots[self.slot_ids[slots] >= 0]  # tombstones out
            if not len(slots):
                continue
            scores = row_scores(self._map, slots, scaled[q])
            ids = self.slot_ids[slots]
            best = top_k_by_score(scores, ids, k)  # best first, ties by id
            out_ids[q, :len(best)] = ids[best]
            out_scores[q, :len(best)] = scores[best]
        return out_scores, out_ids


def to_fixed_point(vectors: np.ndarray) -> np.ndarray:
    """Unit vectors as the refine file's little-endian int16 rows: round(x * 32767), clipped to [-1, 1]."""
    return np.rint(np.clip(vectors, -1.0, 1.0) * FIXED_POINT).astype("<i2")


def remove_stale_refine_files(directory: Path, stem: str, keep: Path | None) -> None:
    """Delete `<stem>.*.i16` (and format 2's `.f16`) refine files other than `keep`, after the index
    file naming `keep` was saved."""
    paths = [p for suffix in REFINE_SUFFIXES for p in Path(directory).glob(f"{stem}.*{suffix}")]
    for path in paths:
        if keep is None or path.name != Path(keep).name:
            try:
                path.unlink()
            except OSError:
                pass
