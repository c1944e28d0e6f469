"""Shared fixtures: temporary data dirs, settings, and writers of small files in real formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from eagle_index.config import Settings

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEMO_FEATURES = SHARED_DATA / "eagle-demo-tcga-crc"


def run_cli(*args, check: bool = True, timeout: float = 300, env: dict | None = None):
    """`python -m eagle_index ARGS` as a user runs it (a real process); check=True fails on a non-zero exit."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "eagle_index", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout, check=False, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"eagle-index {' '.join(map(str, args))} exited {result.returncode}: {result.stderr}")
    return result


@pytest.fixture(name="run_cli")
def run_cli_fixture():
    """The shared CLI runner (see `run_cli`)."""
    return run_cli


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not present (../shared is absent on this machine)")


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def service(settings):
    from eagle_index.service import EagleService

    with EagleService(settings) as svc:
        yield svc


def clustered_vectors(n: int, dim: int, seed: int = 0, clusters: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim))
    return (centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def write_eagle_h5(path: Path, ids: list[str], vectors: np.ndarray) -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        for pid, vec in zip(ids, vectors):
            handle.create_dataset(pid, data=vec)
    return path


def write_stamp_v2_tiles(path: Path, feats: np.ndarray, x_um, y_um, tile_um=448.0, extractor="ctranspath") -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("feats", data=np.asarray(feats, dtype=np.float16))
        handle.create_dataset("coords", data=np.stack([x_um, y_um], axis=1).astype(np.float32))
        handle.attrs.update({"unit": "um", "tile_size_um": tile_um, "tile_size_px": 224, "extractor": extractor,
                             "stamp_version": "2.5.0", "feat_type": "tile"})
    return path


@pytest.fixture(autouse=True)
def _private_weight_cache(tmp_path_factory, monkeypatch):
    """Keep digest caches and downloaded weights out of the user's ~/.cache during tests."""
    monkeypatch.setenv("EAGLE_INDEX_CACHE", str(tmp_path_factory.getbasetemp() / "eagle-cache"))
    # settings built in process without Settings.load() (no environment) default to this cache too
    import eagle_index.config

    monkeypatch.setattr(eagle_index.config, "default_cache_dir", lambda: tmp_path_factory.getbasetemp() / "eagle-cache")


# Node ids of the tests whose call phase passed in this process: the route-coverage check counts the
# routes that such tests of the API modules requested, not what was collected.
PASSED: set[str] = set()


def pytest_runtest_logreport(report):
    if report.when == "call" and report.passed:
        PASSED.add(report.nodeid)


def pytest_collection_modifyitems(session, config, items):
    """The API route-coverage check reads what the other API tests called: it always runs last,
    whatever order the test files were given in."""
    last = [item for item in items if item.name == "test_every_api_route_was_called"]
    for item in last:
        items.remove(item)
    items.extend(last)


# Modules that must share one pytest-xdist worker: the route-coverage check (last, above) reads the
# routes both API modules called in its process.
SAME_WORKER = {"tests/test_web_api.py": "api", "tests/test_web_api_workflows.py": "api"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`make test` runs `-n auto --dist loadfile`: each test module goes whole to one worker, in
    collection order (so its module-scoped fixtures - an ingested archive, a demo run, a Ray
    cluster - are built once), and the two API modules go to the same worker.

    A scheduler rather than `xdist_group` marks: `--dist loadgroup` relies on rewriting node ids,
    which pytest 9.2 no longer honours (pytest-xdist issue #1386), so the marks were silently ignored.
    """
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ModuleScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module, module)

    return ModuleScheduling(config, log)
