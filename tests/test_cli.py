"""The CLI contract: JSON shapes, --data-dir everywhere, one-line errors without tracebacks."""

import json
import subprocess
import sys

import pytest

from conftest import DEMO_FEATURES, clustered_vectors, needs_shared, write_eagle_h5
from conftest import run_cli as run



@pytest.fixture
def imported(tmp_path):
    data = tmp_path / "data"
    write_eagle_h5(tmp_path / "c.h5", [f"P{i}" for i in range(8)], clustered_vectors(8, 64))
    run("import-embeddings", tmp_path / "c.h5", "--data-dir", data)
    return data


def test_search_json_contract(imported):
    hits = json.loads(run("search", "--patient", "P0", "-k", "3", "--json", "--data-dir", imported).stdout)
    assert len(hits) == 3
    assert all({"patient", "score"} <= set(h) for h in hits)
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert "P0" not in [h["patient"] for h in hits]


def test_stats_json_contract(imported):
    stats = json.loads(run("stats", "--json", "--data-dir", imported).stdout)
    assert isinstance(stats["patients"], int) and stats["patients"] == 8
    assert isinstance(stats["slides"], int) and isinstance(stats["labels"], int)
    assert stats["vectors"] == {"eagle": 8}


def test_errors_are_one_line_without_traceback(imported, tmp_path):
    result = run("search", "--patient", "NOPE", "--data-dir", imported, check=False)
    assert result.returncode != 0
    assert result.stderr.strip() == "error: unknown patient 'NOPE'"
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    result = run("import-embeddings", tmp_path / "broken.h5", "--data-dir", imported, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "broken.h5" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_env_var_sets_the_data_dir(imported, monkeypatch):
    monkeypatch.setenv("EAGLE_INDEX_DATA", str(imported))
    stats = json.loads(run("stats", "--json").stdout)
    assert stats["patients"] == 8


@needs_shared(DEMO_FEATURES)
def test_import_features_cli_and_search_json(tmp_path):
    data = tmp_path / "data"
    run("import-features", "--slide-table", DEMO_FEATURES / "slide_table.csv", "--ctranspath", DEMO_FEATURES / "ctranspath", "--data-dir", data)
    hits = json.loads(run("search", "--patient", "TCGA-CK-5916", "--kind", "mean-ctranspath", "--json", "--data-dir", data).stdout)
    assert len(hits) == 6 and "TCGA-CK-5916" not in [h["patient"] for h in hits]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and all(-1.0 <= s <= 1.0 for s in scores)


def test_help_does_not_import_torch():
    code = "import sys; from eagle_index.cli import app; import eagle_index.cli.catalog_cmds; print('torch' in sys.modules, 'faiss' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    assert out == "False False"
