"""CLI start-up: `eagle-index --help`, `stats --json` and `search --json` against a bare interpreter.

Each command runs as a fresh process (as a user types it), `--repeat` times, interleaved with
`python -c pass` in the same run; the table gives the median wall time, the difference to the
bare interpreter (target: within 1.0 s) and the ratio. A separate `-X importtime` run of each
command lists which heavy libraries (torch, timm, umap, openslide, faiss) it imported.

    python benchmarks/cli_startup_bench.py [--repeat 5] [--patients 1000]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEAVY = ("torch", "timm", "umap", "openslide", "faiss")


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


def _heavy_imports(argv: list[str]) -> list[str]:
    result = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], capture_output=True, text=True, check=True)
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
        commands = {
            "python -c pass": [py, "-c", "pass"],
            "eagle-index --help": [py, "-m", "eagle_index", "--help"],
            "eagle-index stats --json": [py, "-m", "eagle_index", "stats", "--json", "--data-dir", str(data)],
            "eagle-index search --json": [py, "-m", "eagle_index", "search", "--patient", "P00001", "-k", "10", "--json",
                                          "--data-dir", str(data)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):  # interleaved: load on the machine hits every command alike
            for name, argv in commands.items():
                times[name].append(_time(argv))
        heavy = {name: _heavy_imports(argv) for name, argv in commands.items()}
    base = statistics.median(times["python -c pass"])
    print(f"{args.repeat} runs each, median wall time; archive of {args.patients} patients (1280-d)")
    print(f"{'command':<28} {'median s':>9} {'- bare s':>9} {'ratio':>7}  heavy imports")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:9.3f} {median - base:9.3f} {median / base:7.2f}  {', '.join(heavy[name]) or 'none'}")


if __name__ == "__main__":
    main()
