"""Input hygiene (issue 24 items 10 and 11): one rule for identifiers and names at every entry point,
CSV exports that no spreadsheet runs as formulas, and error messages that name the value at fault.

Real components throughout: DuckDB catalogs, h5py files, pandas tables, the Flask app, the CLI as a process.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from eagle_index.config import Settings
from eagle_index.errors import InputError
from eagle_index.service import EagleService

HOSTILE = {
    "NUL": "ab\x00cd",
    "line feed": "ab\ncd",
    "carriage return": "ab\rcd",
    "U+202E": "ab\u202ecd",
    "U+2066": "ab\u2066cd",
}


def _service(data: Path, models: str | None = None) -> EagleService:
    return EagleService(Settings(data_dir=data, **({"models": models, "device": "cpu"} if models else {})))


def _h5(path: Path, vectors: dict[str, np.ndarray]) -> Path:
    with h5py.File(path, "w") as handle:
        for name, vector in vectors.items():
            handle.create_dataset(name, data=vector)
    return path


def _with_patients(service, tmp_path: Path, names: list[str], dim: int = 8) -> None:
    rng = np.random.default_rng(0)
    service.import_embeddings([_h5(tmp_path / "seed.h5", {n: rng.normal(size=dim) for n in names})], kind="eagle")


def _client(service, **owner):
    from web import create_app

    return create_app(service=service, owner={"role": "serve", **owner}).test_client()


def _error(response, status: int, field: str | None = None) -> str:
    body = response.get_json()
    assert response.status_code == status, (response.status_code, body)
    if field is not None:
        assert body["error"].get("field") == field, body
    return body["error"]["message"]


# -- the rule --------------------------------------------------------------------------------------
def test_the_rule_refuses_control_bidi_long_and_path_like_identifiers():
    from eagle_index.identifiers import check_identifier, check_label_name, check_label_value
    from eagle_index.limits import MAX_IDENTIFIER_CHARS

    assert check_identifier("patient id", "  TCGA-AA-0001 ") == "TCGA-AA-0001"
    assert check_identifier("patient id", "Müller, J. (2)") == "Müller, J. (2)"
    for what, value in HOSTILE.items():
        with pytest.raises(InputError, match=r"patient id .*contains"):
            check_identifier("patient id", value)
        with pytest.raises(InputError, match="label name"):
            check_label_name(value)
        with pytest.raises(InputError, match="label value"):
            check_label_value(value)
    for value in (".", "..", "a/b", "a\\b"):
        with pytest.raises(InputError, match="patient id"):
            check_identifier("patient id", value)
    assert check_label_value("a/b") == "a/b" and check_label_name("pT/pN") == "pT/pN"  # names, not addresses
    with pytest.raises(InputError, match=f"over the limit of {MAX_IDENTIFIER_CHARS}"):
        check_identifier("patient id", "x" * (MAX_IDENTIFIER_CHARS + 1))
    with pytest.raises(InputError, match="is empty"):
        check_identifier("cohort name", "   ")


def test_the_catalog_refuses_a_new_patient_id_that_breaks_the_rule(tmp_path):
    """Whatever the entry point, no patient row is created with such an id (the last line of defence)."""
    with _service(tmp_path / "data") as service:
        catalog = service.catalog
        for value in (*HOSTILE.values(), "a/b", ".."):
            with pytest.raises(InputError, match="patient id"):
                catalog.write(lambda session, v=value: catalog.patient_id(session, v, create=True))
        assert service.stats()["patients"] == 0


# -- POST /jobs --------------------------------------------------------------------------------------
def test_job_post_refuses_a_huge_patient_id_with_newline_and_nul(tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    slide = inbox / "TCGA-AA-0001-01Z-00-DX1.svs"
    slide.write_bytes(b"slide bytes" * 10)
    patient = "P" * 100_000 + "\n\x00" + "Q" * 100_001  # 200,003 characters
    with _service(tmp_path / "data") as service:
        client = _client(service, roots=[inbox])
        message = _error(client.post("/api/v1/jobs", json={"paths": [str(slide)], "patient": patient}), 400, "patient")
        assert "200,003 characters" in message and len(message) < 300, message
        message = _error(client.post("/api/v1/jobs", json={"paths": [str(slide)], "patient": "A\x00B"}), 400, "patient")
        assert "NUL" in message
        assert service.jobs.jobs() == []
        # a patient id taken from a file name obeys the same rule: that file is refused, with the reason
        odd = inbox / "case\u202e1.svs"
        odd.write_bytes(b"other bytes" * 10)
        answer = client.post("/api/v1/jobs", json={"paths": [str(odd)]})
        assert answer.status_code == 202, answer.get_json()
        refused = answer.get_json()["refused"]
        assert [Path(r["file"]).name for r in refused] == [odd.name] and "U+202E" in refused[0]["reason"], refused
        assert service.jobs.jobs() == []


# -- cohorts -----------------------------------------------------------------------------------------
def test_a_cohort_named_dot_dot_is_refused_everywhere(tmp_path, run_cli):
    with _service(tmp_path / "data") as service:
        _with_patients(service, tmp_path, ["P-1", "P-2"])
        client = _client(service)
        for name in ("..", ".", "a/b", "x\ny", "x\u202ey", "c" * 201):
            _error(client.post("/api/v1/cohorts", json={"name": name, "definition": {}}), 400, "name")
            with pytest.raises(InputError, match="cohort name"):
                service.cohorts.create(name)
        assert service.cohorts.list() == []
    result = run_cli("cohort", "create", "..", "--data-dir", tmp_path / "data", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cohort name '..' cannot be '.' or '..'" in result.stderr, result.stderr


# -- labels ------------------------------------------------------------------------------------------
def test_clinical_tables_with_control_or_bidi_characters_are_refused_naming_file_line_and_column(tmp_path):
    with _service(tmp_path / "data") as service:
        _with_patients(service, tmp_path, ["P-1", "P-2"])
        for what, value in HOSTILE.items():
            table = tmp_path / f"labels-{what.replace(' ', '-')}.csv"
            with open(table, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([["PATIENT", "MSI"], ["P-1", "high"], ["P-2", value]])
            with pytest.raises(InputError) as raised:
                service.import_labels(table)
            message = str(raised.value)
            assert message.startswith(f"{table}: line 3: value of label 'MSI'") and what in message, message
            # in a column name, and in a patient id (with create_missing: it would become a patient)
            named = tmp_path / f"named-{what.replace(' ', '-')}.csv"
            with open(named, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([["PATIENT", value], ["P-1", "high"]])
            with pytest.raises(InputError, match=rf"^{re.escape(str(named))}: line 1: label name .*{re.escape(what)}"):
                service.import_labels(named)
            patient = tmp_path / f"patient-{what.replace(' ', '-')}.csv"
            with open(patient, "w", newline="", encoding="utf-8") as handle:
                csv.writer(handle).writerows([["PATIENT", "MSI"], [value, "high"]])
            with pytest.raises(InputError, match=rf"^{re.escape(str(patient))}: line 2: patient id .*{re.escape(what)}"):
                service.import_labels(patient, create_missing=True)
        ids = service.catalog.patient_ids(["P-1", "P-2"]).values()
        assert all(labels == {} for labels in service.catalog.labels_of(ids).values())


def test_label_api_refuses_control_characters_in_names_and_values(tmp_path):
    with _service(tmp_path / "data") as service:
        _with_patients(service, tmp_path, ["P-1"])
        client = _client(service)
        for value in HOSTILE.values():
            _error(client.post("/api/v1/patients/P-1/labels", json={"name": value, "value": "x"}), 400, "name")
            _error(client.post("/api/v1/patients/P-1/labels", json={"name": "MSI", "value": value}), 400, "value")
        message = _error(client.post("/api/v1/patients/P-1/labels", json={"name": "MSI", "value": "v" * 1001}), 400, "value")
        assert "over the limit of 1,000" in message
        ok = client.post("/api/v1/patients/P-1/labels", json={"name": "MSI", "value": "=1+1"})
        assert ok.status_code == 200 and ok.get_json()["labels"] == {"MSI": "=1+1"}


TRICKY = ['=HYPERLINK("http://evil.example","click")', "+1+2", "-2+3", "@SUM(A1:A2)", "\tindented", "-0.5", "+3",
          'a,b "quoted"', "ünïcödé/µm", "'plain quote"]


def test_the_apps_clinical_export_neutralises_formulas_and_reimports_exactly(tmp_path):
    with _service(tmp_path / "data") as service:
        names = [f"P-{i}" for i in range(len(TRICKY))] + ["=cmd|'calc'!A0"]
        _with_patients(service, tmp_path, names)
        rows = [["PATIENT", "VALUE", "=NAME"]] + [[n, v, "x"] for n, v in zip(names, TRICKY + ["y"])]
        table = tmp_path / "tricky.csv"
        with open(table, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
        service.import_labels(table)
        stored = {n: labels for n, labels in zip(names, service.catalog.labels_of(
            [service.catalog.patient_ids(names)[n] for n in names]).values())}
        assert stored["P-0"] == {"VALUE": TRICKY[0], "=NAME": "x"}  # import keeps values as given
        service.cohorts.create("all", labels=["VALUE=*"])
        out = tmp_path / "clinical.csv"
        service.cohorts.export("all", "clinical", out)
        cells = [cell for row in csv.reader(io.StringIO(out.read_text(encoding="utf-8"))) for cell in row]
        dangerous = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r") and c not in ("-0.5", "+3")]
        assert not dangerous, dangerous
        assert "'=HYPERLINK(\"http://evil.example\",\"click\")" in cells and "'=NAME" in cells and "-0.5" in cells
        # the app reads its own export back to the same labels
        with _service(tmp_path / "again") as fresh:
            fresh.import_labels(out, create_missing=True)
            again = fresh.catalog.labels_of([fresh.catalog.patient_ids(names)[n] for n in names])
            assert dict(zip(names, again.values())) == stored


def test_probe_candidate_csv_neutralises_formulas(tmp_path):
    from eagle_index.probes import write_candidates_csv

    out = write_candidates_csv([{"rank": 1, "patient": "=HYPERLINK(\"x\")", "probability": 0.9, "predicted": "@high",
                                 "label_value": "+cmd", "in_training": False}], tmp_path / "c.csv")
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[1][:5] == ["1", "'=HYPERLINK(\"x\")", "0.9", "'@high", "'+cmd"], rows


# -- embedding imports -----------------------------------------------------------------------------
def test_embedding_ids_follow_the_rule_and_errors_name_the_file(tmp_path):
    with _service(tmp_path / "data") as service:
        blank = _h5(tmp_path / "blank.h5", {"P-1": np.ones(8), " ": np.ones(8)})
        with pytest.raises(InputError) as raised:
            service.import_embeddings([blank], kind="eagle")
        assert str(raised.value).startswith(f"{blank}: patient id is empty"), raised.value
        slashed = _h5(tmp_path / "slashed.h5", {"P-1": np.ones(8), "site/P-2": np.ones(8)})
        with pytest.raises(InputError, match=r"slashed\.h5: patient id 'site/P-2' contains '/'"):
            service.import_embeddings([slashed], kind="eagle")
        bidi = _h5(tmp_path / "bidi.h5", {"P-1": np.ones(8), "P-\u202e2": np.ones(8)})
        with pytest.raises(InputError, match=r"bidi\.h5: patient id .*U\+202E"):
            service.import_embeddings([bidi], kind="eagle")
        assert service.stats()["patients"] == 0


def test_a_value_too_large_for_float32_is_called_that_and_names_the_patient(tmp_path):
    with _service(tmp_path / "data") as service:
        path = _h5(tmp_path / "big.h5", {"P-1": np.ones(8), "P-2": np.r_[np.ones(7), 1e39]})
        with pytest.raises(InputError) as raised:
            service.import_embeddings([path], kind="eagle")
        message = str(raised.value)
        assert "too large for float32" in message and "'P-2'" in message and str(path) in message, message
        assert "NaN" not in message and "row" not in message, message


def test_a_bad_vector_in_the_second_file_names_that_file_and_the_patient(tmp_path):
    with _service(tmp_path / "data") as service:
        first = _h5(tmp_path / "a.h5", {"P-1": np.ones(8), "P-2": np.ones(8)})
        second = _h5(tmp_path / "b.h5", {"Q-1": np.ones(8), "Q-7": np.r_[np.ones(7), np.nan]})
        zero = _h5(tmp_path / "c.h5", {"Z-1": np.zeros(8)})
        with pytest.raises(InputError) as raised:
            service.import_embeddings([first, second], kind="eagle")
        message = str(raised.value)
        assert message.startswith(f"{second}: patient 'Q-7'") and "NaN" in message and "row" not in message, message
        with pytest.raises(InputError, match=r"c\.h5: patient 'Z-1'.*zero"):
            service.import_embeddings([zero], kind="eagle")
        assert service.stats()["patients"] == 0


# -- search bounds -----------------------------------------------------------------------------------
def test_post_search_holds_min_score_to_the_bounds_get_enforces(tmp_path):
    with _service(tmp_path / "data") as service:
        _with_patients(service, tmp_path, ["P-1", "P-2", "P-3"])
        client = _client(service)
        for value in (1e308, -1.5, 1.0001):
            message = _error(client.post("/api/v1/search", json={"patient": "P-1", "filters": {"min_score": value}}), 400, "filters")
            assert "min_score must be between -1 and 1" in message, message
            _error(client.get(f"/api/v1/search?patient=P-1&min_score={value}"), 400, "min_score")
        ok = client.post("/api/v1/search", json={"patient": "P-1", "filters": {"min_score": -1}})
        assert ok.status_code == 200 and len(ok.get_json()["hits"]) == 2


# -- region search messages ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_slide(tmp_path_factory):
    """One 3 x 2-tile slide of patient PX, ingested with the tiny models."""
    from slide_fixtures import write_pyramidal_tiff

    folder = tmp_path_factory.mktemp("hygiene-slide")
    tile = 448.0
    slide = write_pyramidal_tiff(folder / "PX-S1.tiff", mpp=2.0, size_um=(3 * tile, 2 * tile),
                                 tissue_boxes_um=[(0.0, 0.0, 3 * tile, 2 * tile)], seed=5).path
    service = _service(tmp_path_factory.mktemp("hygiene-data"), models="tiny")
    report = service.ingest([slide], patient="PX")
    assert not report.failed, report.failed
    yield service, slide
    service.close()


def test_point_queries_report_errors_as_a_point_not_a_box(one_slide):
    service, slide = one_slide
    client = _client(service)
    message = _error(client.post("/api/v1/search/tiles", json={"slide": "PX-S1", "x_um": 50_000, "y_um": 10}), 400)
    assert "point (50000, 10) µm" in message and "box" not in message, message
    with pytest.raises(InputError) as raised:
        service.regions.search({"slide": "PX-S1", "x_um": -900.0, "y_um": 10.0}, k=3, per_patient=1)
    assert "point" in str(raised.value) and "box" not in str(raised.value), raised.value
    # a box query still speaks of its box
    message = _error(client.post("/api/v1/search/tiles", json={"slide": "PX-S1", "box": [40_000, 0, 448, 448]}), 400)
    assert message.startswith("box (40000, 0, 448, 448) µm lies outside"), message


def test_region_api_errors_name_neither_server_paths_nor_cli_flags(one_slide, tmp_path):
    from PIL import Image

    service, slide = one_slide
    client = _client(service)
    buffer = io.BytesIO()
    Image.new("RGB", (600, 600), (200, 90, 120)).save(buffer, "PNG")  # no resolution recorded
    for form in ({}, {"mpp": "0.5"}):
        answer = client.post("/api/v1/search/tiles", data={"file": (io.BytesIO(buffer.getvalue()), "mine.png"), **form},
                             content_type="multipart/form-data")
        message = _error(answer, 400)
        assert message.startswith("mine.png: ") and "eagle-region" not in message and "--" not in message, message
    moved = slide.with_name("moved-away.tiff")
    slide.rename(moved)
    try:
        for query in ({"slide": "PX-S1", "box": [0, 0, 896, 896]}, {"slide": "PX-S1", "x_um": 5_000, "y_um": 5}):
            message = _error(client.post("/api/v1/search/tiles", json=query), 404)
            assert "--" not in message and str(slide.parent) not in message, message
    finally:
        moved.rename(slide)


def test_probe_names_follow_the_rule(tmp_path):
    with _service(tmp_path / "data") as service:
        for name in ("..", "a\nb", "x\u202ey"):
            with pytest.raises(InputError, match="probe name"):
                service.probes.begin("MSI", name=name)  # refused before the label is even looked at
        client = _client(service)
        _error(client.post("/api/v1/probes", json={"label": "MSI", "name": ".."}), 400)


def test_cli_patient_option_follows_the_rule_before_any_work(one_slide, tmp_path, run_cli):
    _, slide = one_slide
    for command in (["ingest", slide], ["embed", slide, "--out", tmp_path / "out.h5"]):
        result = run_cli(*command, "--patient", "site/P-1", "--models", "tiny", "--device", "cpu",
                         "--data-dir", tmp_path / "data", check=False)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert "error: --patient 'site/P-1' contains '/'" in result.stderr, result.stderr
    assert not (tmp_path / "out.h5").exists() and not (tmp_path / "data" / "artifacts").exists()


def test_ingest_refuses_a_bad_patient_id_naming_the_file(one_slide, tmp_path):
    """Through the service, as `ingest` runs: the slide fails, its error names the slide file ("empty patient id"
    named nothing), and no patient row is made."""
    _, slide = one_slide
    with _service(tmp_path / "data", models="tiny") as service:
        for patient, problem in (("site/P-1", "contains '/'"), ("   ", "is empty")):
            report = service.ingest([slide], patient=patient)
            assert not report.ingested and len(report.failed) == 1, report
            error = report.failed[0].error
            assert error.startswith(f"{slide}: patient id") and problem in error, error
        assert service.stats()["patients"] == 0


def test_slide_upload_search_holds_its_patient_name_to_the_rule(tmp_path):
    with _service(tmp_path / "data") as service:
        client = _client(service)
        for patient in ("a\nb", "..", "p" * 201):
            answer = client.post("/api/v1/search/upload", data={"file": (io.BytesIO(b"x" * 100), "s.svs"), "patient": patient},
                                 content_type="multipart/form-data")
            _error(answer, 400, "patient")
        assert not list((tmp_path / "data").glob("uploads/*"))


def test_a_search_vector_too_large_for_float32_is_called_that(tmp_path):
    with _service(tmp_path / "data") as service:
        _with_patients(service, tmp_path, ["P-1", "P-2"])
        client = _client(service)
        message = _error(client.post("/api/v1/search", json={"vector": [1.0] * 7 + [1e39]}), 400, "vector")
        assert "too large for float32" in message and "finite" not in message, message


def test_identifiers_is_on_the_ground_floor():
    """`eagle_index.identifiers` imports only `errors` and `limits` (front ends and formats may use it freely)."""
    import ast

    source = (Path(__file__).resolve().parents[1] / "eagle_index" / "identifiers.py").read_text()
    modules = {node.module for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom) and node.module}
    modules |= {alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for alias in node.names}
    assert modules <= {"__future__", "eagle_index.errors", "eagle_index.limits"}, modules


def test_ingest_of_a_folder_fails_only_the_slide_whose_name_gives_a_bad_patient_id(one_slide, tmp_path):
    from slide_fixtures import write_pyramidal_tiff

    from eagle_index.identifiers import visible

    _, slide = one_slide
    folder = tmp_path / "slides"
    folder.mkdir()
    good = folder / "TCGA-AA-0001-01Z-00-DX1.tiff"
    good.write_bytes(slide.read_bytes())
    bad = write_pyramidal_tiff(folder / "case\u202e7.tiff", mpp=2.0, size_um=(896.0, 896.0),
                               tissue_boxes_um=[(0.0, 0.0, 896.0, 896.0)], seed=9).path
    with _service(tmp_path / "data", models="tiny") as service:
        report = service.ingest([folder])
        assert [Path(s.file).name for s in report.ingested] == [good.name], report
        assert [Path(s.file).name for s in report.failed] == [bad.name], report
        assert visible(str(bad)) in report.failed[0].error and "U+202E" in report.failed[0].error, report.failed
        assert [j["state"] for j in service.jobs.jobs(state="failed")] == ["failed"]
        assert service.catalog.patient_ids(["TCGA-AA-0001"]) and service.stats()["patients"] == 1
