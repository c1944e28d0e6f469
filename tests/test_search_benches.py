"""The index benchmarks run as docs/benchmarks.md runs them (small sizes): a broken flag or a renamed
helper shows here, not in the next 5M-vector session."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(tmp_path, script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args, "--workdir", str(tmp_path / "new" / "workdir")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done.stdout


def test_search_bench_measures_a_warmed_lean_index(tmp_path):
    out = _bench(tmp_path, "search_bench.py", "--sizes", "5000", "--types", "lean", "--streamed-truth",
                 "--threads", "1", "--queries", "40", "--warm")
    assert "refine file warmed (LeanIndex.warm:" in out, out
    recall = float(re.search(r"recall@10 ([0-9.]+)", out).group(1))
    assert recall >= 0.9, out
    assert re.search(r"RssAnon delta\) [0-9.,]+ MiB = [0-9.]+ bytes/vector", out), out


def test_tile_search_bench_measures_a_warmed_lean_index(tmp_path):
    out = _bench(tmp_path, "tile_search_bench.py", "--patients", "400", "--tiles", "25", "--queries", "40",
                 "--type", "lean", "--warm")
    assert "refine file warmed (LeanIndex.warm:" in out, out
    recall = float(re.search(r"recall@20 ([0-9.]+)", out).group(1))
    assert recall >= 0.9, out


def test_search_bench_measures_an_ivf_index_against_the_exact_one(tmp_path):
    out = _bench(tmp_path, "search_bench.py", "--sizes", "3000", "--types", "ivf", "--threads", "1", "--queries", "30")
    row = next(line for line in out.splitlines() if line.startswith("| 3,000 | ivf |"))
    assert float(row.split("|")[-3]) >= 0.9, out  # recall@10
