"""benchmarks/api_bench.py runs (issue 24 item 12): both modes, on a tiny catalog, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "api_bench.py"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(BENCH), "--patients", "300", "--dim", "16", *args],
                            capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT)
    assert result.returncode == 0, f"api_bench {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_concurrent_mode_answers_every_request_correctly(tmp_path):
    out = _run("--concurrency", "2", "--requests", "40", "--pool", "12", "--data-dir", str(tmp_path / "data")).stdout
    row = re.search(r"^\| 2 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| (\d+) \|$", out, re.M)
    assert row, out
    assert float(row.group(1)) > 0
    assert (row.group(5), row.group(6)) == ("0", "0"), out  # no errors, no wrong answers
    # a second run reuses the filled catalog
    again = _run("--concurrency", "2", "--requests", "20", "--pool", "6", "--data-dir", str(tmp_path / "data")).stdout
    assert "set-up: reusing" in again and "| 2 |" in again, again


def test_sequential_mode_finds_identical_hits(tmp_path):
    out = _run("--requests", "12", "--data-dir", str(tmp_path / "data")).stdout
    assert "identical hits: 12/12" in out, out
    assert "| HTTP GET /api/v1/search (waitress, loopback) |" in out, out


def test_a_bad_data_dir_is_one_line_not_a_traceback(tmp_path):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "catalog.duckdb").write_text("not a database")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for data_dir in (junk, not_a_folder):
        result = subprocess.run([sys.executable, str(BENCH), "--patients", "50", "--dim", "8", "--requests", "5",
                                 "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("error: ") and str(data_dir) in result.stderr, result.stderr


def test_ceiling_mode_answers_from_the_memo_and_checks_every_answer(tmp_path):
    out = _run("--concurrency", "2", "--requests", "40", "--pool", "12", "--ceiling", "--data-dir", str(tmp_path / "data")).stdout
    rows = re.findall(r"^\| (real|ceiling) \| ([\d.]+) \|", out, re.M)
    assert [mode for mode, _ in rows] == ["real", "ceiling", "ceiling", "real"], out
    assert all(float(rate) > 0 for _, rate in rows), out
    assert "searches the memo had not seen: 0" in out, out  # every ceiling request skipped FAISS
    assert "wrong answers" in out and "differ from the in-process search" not in out, out
