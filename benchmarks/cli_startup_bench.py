"""CLI start-up: `eagle-index --help`, `stats --json` and `search --json` against a bare interpreter.

Each command runs as a fresh process (as a user types it), `--repeat` times, interleaved with
`python -c pass` in the same run; the table gives the best and the median wall time, the
difference of the median to the bare interpreter and the ratio (target of issue 20 item 4:
`stats --json` and `search --json` within 0.5 s, best of 5). A separate `-X importtime` run of each
command lists which heavy libraries (torch, timm, umap, openslide, faiss, alembic) it imported.

`--before DIR` also runs each command from another source tree (e.g. the commit before a change:
`git archive REV | tar -x -C DIR`), interleaved with the others on the same catalog, so a
before/after comparison shares the machine's load.

    python benchmarks/cli_startup_bench.py [--repeat 5] [--patients 1000] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEAVY = ("torch", "timm", "umap", "openslide", "faiss", "alembic", "sqlalchemy")


_CWD = [None]  # the commands' working directory: outside the source tree (python -m puts it first on sys.path)


def _env(source: Path | None) -> dict | None:
    if source is None:
        return None
    return {**os.environ, "PYTHONPATH": str(source)}  # ahead of the editable install's finder


def _time(argv: list[str], source: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, env=_env(source), cwd=_CWD[0])
    return time.perf_counter() - started


def _heavy_imports(argv: list[str], source: Path | None = None) -> list[str]:
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, check=True,
                            env=_env(source), cwd=_CWD[0])
    found = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:"):
            name = line.rsplit("|", 1)[-1].strip()
            if name in HEAVY:
                found.add(name)
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--before", type=Path, default=None, help="another source tree to time too (same runs, same catalog)")
    args = parser.parse_args()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="eagle-cli-bench-") as tmp:
        import h5py

        data = Path(tmp) / "data"
        rng = np.random.default_rng(0)
        with h5py.File(Path(tmp) / "v.h5", "w") as handle:
            for i in range(args.patients):
                handle.create_dataset(f"P{i:05d}", data=rng.normal(size=1280).astype(np.float32))
        subprocess.run([py, "-m", "eagle_index", "import-embeddings", str(Path(tmp) / "v.h5"), "--data-dir", str(data)],
                       check=True, capture_output=True)
        subprocess.run([py, "-m", "eagle_index", "search", "--patient", "P00001", "--data-dir", str(data)],
                       check=True, capture_output=True)  # builds the FAISS index once; the runs below load it
        _CWD[0] = tmp  # not the source tree: python -m puts the working directory ahead of --before's PYTHONPATH
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "eagle-index --help": [py, "-m", "eagle_index", "--help"],
            "eagle-index stats --json": [py, "-m", "eagle_index", "stats", "--json", "--data-dir", str(data)],
            "eagle-index search --json": [py, "-m", "eagle_index", "search", "--patient", "P00001", "-k", "10", "--json",
                                          "--data-dir", str(data)],
        }
        runs = {name: (argv, None) for name, argv in commands.items()}
        if args.before is not None:
            runs.update({f"{name} (before)": (argv, args.before.resolve()) for name, argv in commands.items()
                         if name != "python -c pass"})
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeat):  # interleaved: load on the machine hits every command alike
            for name, (argv, source) in runs.items():
                times[name].append(_time(argv, source))
        heavy = {name: _heavy_imports(argv, source) for name, (argv, source) in runs.items()}
    base = statistics.median(times["python -c pass"])
    print(f"{args.repeat} runs each, wall time; archive of {args.patients} patients (1280-d); "
          f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{'command':<37} {'best s':>7} {'median s':>9} {'- bare s':>9} {'ratio':>7}  heavy imports")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<37} {min(values):7.3f} {median:9.3f} {median - base:9.3f} {median / base:7.2f}  "
              f"{', '.join(heavy[name]) or 'none'}")


if __name__ == "__main__":
    main()
