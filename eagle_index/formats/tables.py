"""Slide tables (`PATIENT,FILENAME[,MPP]`) and clinical tables (`PATIENT` + label columns).

Patient ids, label names and label values follow `eagle_index.identifiers`' rule; errors name the
file, the line and the column. Every CSV eagle-index writes goes through `csv_cell`: a cell that a
spreadsheet would run as a formula (starting with =, +, -, @, a tab or a carriage return, and not
a plain number) is written with a leading apostrophe, and `read_table` takes that apostrophe off
again, so the app's own exports re-import to the same values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from eagle_index.errors import InputError
from eagle_index.formats.suffixes import STEM_SUFFIXES
from eagle_index.identifiers import check_identifier, check_label_name, check_label_value

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def csv_cell(value) -> str:
    """A value as a CSV cell no spreadsheet runs as a formula (None: empty)."""
    text = "" if value is None else str(value)
    if text[:1] in FORMULA_PREFIXES and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def csv_row(values) -> list[str]:
    return [csv_cell(v) for v in values]


def _uncell(text):
    """What `csv_cell` neutralised, back as it was (other text unchanged)."""
    if isinstance(text, str) and text[:1] == "'" and text[1:2] in FORMULA_PREFIXES and not _PLAIN_NUMBER.fullmatch(text[1:]):
        return text[1:]
    return text


def read_table(path: Path):
    """CSV or Excel into a DataFrame of strings; errors name the file.

    Only empty cells are missing: "NA", "None", "null", "nan" are values like any other (a label
    value or a patient may be called that), not pandas' default missing markers."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".xlsx", ".xls"):
            frame = pd.read_excel(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_csv(path, dtype=str, sep=_delimiter(path), engine="python", keep_default_na=False, na_values=[""])
    except Exception as exc:  # pandas raises many parser types
        raise InputError(f"{path}: cannot read table ({str(exc).splitlines()[0]})") from None
    frame.columns = [_uncell(str(c)).strip() for c in frame.columns]
    frame = frame.map(_uncell)
    return frame.astype(object).where(frame.notna(), None)


DELIMITERS = (",", ";", "\t", "|")


def _delimiter(path: Path) -> str:
    """The delimiter of a CSV table: the one of `DELIMITERS` its header line uses most (a comma when it uses none).

    Not csv.Sniffer's guess: on a one-column table (`FILENAME`) it picks a letter of the header."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        header = handle.readline()
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # ties: the earlier one (the comma first)
    return best if counts[best] else ","


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def _require(frame, path: Path, *columns: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(frame.columns)})")


@dataclass(frozen=True)
class SlideRow:
    patient: str
    filename: str
    mpp: float | None = None

    @property
    def stem(self) -> str:
        """The slide name STAMP uses for its feature file (file name without extension)."""
        name = Path(self.filename).name
        for suffix in STEM_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return name


def read_slide_table(path: Path) -> list[SlideRow]:
    frame = read_table(path)
    _require(frame, path, "PATIENT", "FILENAME")
    rows: list[SlideRow] = []
    seen: dict[str, str] = {}
    for number, record in enumerate(frame.to_dict("records"), start=2):
        patient = _cell(record.get("PATIENT"))
        filename = _cell(record.get("FILENAME"))
        if not patient or not filename:
            raise InputError(f"{path}: line {number}: empty PATIENT or FILENAME")
        patient = check_identifier("patient id", patient, where=f"{path}: line {number}")
        mpp = None
        raw_mpp = _cell(record.get("MPP"))
        if raw_mpp:
            try:
                mpp = float(raw_mpp)
            except ValueError:
                raise InputError(f"{path}: line {number}: MPP {raw_mpp!r} is not a number") from None
        row = SlideRow(patient, filename, mpp)
        if row.stem in seen and seen[row.stem] != patient:
            raise InputError(f"{path}: slide {row.stem!r} is listed for two patients ({seen[row.stem]!r} and {patient!r})")
        if row.stem in seen:
            continue
        seen[row.stem] = patient
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no slides listed")
    return rows


@dataclass
class ClinicalTable:
    path: Path
    labels: dict[str, dict[str, str]]  # patient -> {label name: value}
    columns: list[str]


def read_clinical_table(path: Path) -> ClinicalTable:
    frame = read_table(path)
    _require(frame, path, "PATIENT")
    columns = [c for c in frame.columns if c != "PATIENT" and not c.startswith("Unnamed")]
    if not columns:
        raise InputError(f"{path}: no label columns besides PATIENT")
    for column in columns:
        check_label_name(column, where=f"{path}: line 1")
    labels: dict[str, dict[str, str]] = {}
    for number, record in enumerate(frame.to_dict("records"), start=2):
        patient = _cell(record.get("PATIENT"))
        if not patient:
            raise InputError(f"{path}: line {number}: empty PATIENT")
        patient = check_identifier("patient id", patient, where=f"{path}: line {number}")
        values = {c: check_label_value(_cell(record.get(c)), where=f"{path}: line {number}", name=c)
                  for c in columns if _cell(record.get(c))}
        if patient in labels and labels[patient] != values:
            raise InputError(f"{path}: patient {patient!r} appears twice with different values (line {number})")
        labels[patient] = values
    return ClinicalTable(Path(path), labels, columns)
