"""Which patient a slide file belongs to: slide table, else a regex on the name, else the stem.

Every answer carries its source, and a note when it had to fall back, so that guesses are
reported (job progress, logs, status), never silent.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from eagle_index.formats.tables import read_slide_table
from eagle_index.pipeline import slide_name
from eagle_index.signatures import TCGA_PATIENT

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PatientAnswer:
    patient: str
    source: str  # "slide-table", "regex" or "stem"
    mpp: float | None = None
    note: str | None = None


class PatientResolver:
    def __init__(self, slide_table: Path | None = None, pattern: str | None = None):
        self.slide_table = Path(slide_table) if slide_table else None
        self.pattern = re.compile(pattern) if pattern else TCGA_PATIENT
        self._table: dict = {}
        self._table_mtime: float | None = None

    def _rows(self) -> dict:
        """The slide table, re-read whenever the file changes (scanners append to it)."""
        if self.slide_table is None:
            return {}
        try:
            mtime = self.slide_table.stat().st_mtime
        except OSError:
            return self._table
        if mtime != self._table_mtime:
            self._table = {row.stem: row for row in read_slide_table(self.slide_table)}
            self._table_mtime = mtime
        return self._table

    def resolve(self, path: Path) -> PatientAnswer:
        name = slide_name(path)
        row = self._rows().get(name)
        if row is not None:
            return PatientAnswer(row.patient, "slide-table", row.mpp)
        note = f"{Path(path).name} is not in slide table {self.slide_table}; " if self.slide_table else ""
        match = self.pattern.search(name)
        if match:
            patient = match.group(1) if match.groups() else match.group(0)
            return PatientAnswer(patient, "regex", note=(note + f"patient {patient!r} from the name pattern") if note else None)
        return PatientAnswer(name, "stem", note=note + f"no patient id found in {Path(path).name!r}: using the file stem as patient id")
