"""The traceback hunt: every command of the README's table, run with bad inputs.

Each case runs the real CLI (`python -m eagle_index`) and asserts: exit code != 0, stderr is
one line that names the problem (a file, value or id given), and no `Traceback` anywhere.
Bad inputs: missing, unreadable, wrong-type and corrupt files, wrong dimensions, NaN,
unknown ids, bad numbers, a folder where a file belongs, a locked catalog, a taken port.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import clustered_vectors, write_eagle_h5

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DIM = 64


def run(args, cwd=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAGLE_INDEX_")}
    env["EAGLE_INDEX_CACHE"] = os.environ.get("EAGLE_INDEX_CACHE", "")
    return subprocess.run([sys.executable, "-m", "eagle_index", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An archive (8 patients, labels, a cohort), a real slide, and a shelf of bad files."""
    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("hunt")
    data = root / "data"
    ids = [f"P{i}" for i in range(8)]
    write_eagle_h5(root / "good.h5", ids, clustered_vectors(8, DIM))
    (root / "clinical.csv").write_text("PATIENT,TISSUE\n" + "".join(f"P{i},{'ab'[i % 2]}\n" for i in range(8)))
    with EagleService(Settings(data_dir=data)) as service:
        service.import_embeddings([root / "good.h5"])
        service.import_labels(root / "clinical.csv")
        service.cohorts.create("c1", labels=["TISSUE=a"])
    slide = root / "slide.tiff"
    write_pyramidal_tiff(slide, mpp=0.5, size_um=(1792.0, 1344.0), tissue_boxes_um=[(448.0, 448.0, 896.0, 448.0)])
    bad = {
        "text": root / "notes.txt",
        "fake_slide": root / "fake.tiff",
        "fake_h5": root / "fake.h5",
        "nan_h5": root / "nan.h5",
        "dim32_h5": root / "dim32.h5",
        "nan_npy": root / "nan.npy",
        "dim32_npy": root / "dim32.npy",
        "matrix_npy": root / "matrix.npy",
        "empty_csv": root / "empty.csv",
        "filename_only_csv": root / "filename-only.csv",
        "no_patient_csv": root / "nopatient.csv",
        "folder": root / "a-folder",
        "a_file_dir": root / "data-is-a-file",
        "unreadable": root / "unreadable.csv",
        "missing": root / "missing.h5",
        "missing_slide": root / "missing.svs",
    }
    bad["text"].write_text("hello\n")
    bad["fake_slide"].write_bytes(b"not a slide at all")
    bad["fake_h5"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 10)
    vec = clustered_vectors(2, DIM, seed=3)
    vec[0, 3] = np.nan
    write_eagle_h5(bad["nan_h5"], ["N0", "N1"], vec)
    write_eagle_h5(bad["dim32_h5"], ["W0", "W1"], clustered_vectors(2, 32))
    nan = np.ones(DIM, np.float32)
    nan[0] = np.nan
    np.save(bad["nan_npy"], nan)
    np.save(bad["dim32_npy"], np.ones(32, np.float32))
    np.save(bad["matrix_npy"], np.ones((3, DIM), np.float32))
    bad["empty_csv"].write_text("")
    bad["filename_only_csv"].write_text("FILENAME\nslide.tiff\n")
    bad["no_patient_csv"].write_text("NAME,TISSUE\nP1,a\n")
    bad["folder"].mkdir()
    bad["a_file_dir"].write_text("I am a file\n")
    bad["unreadable"].write_text("PATIENT,TISSUE\nP1,a\n")
    bad["unreadable"].chmod(0)
    return {"root": root, "data": data, "slide": slide, **bad}


def _geojson(root: Path) -> Path:
    """A well-formed QuPath GeoJSON file (for the annotations cases whose error is elsewhere)."""
    path = root / "ok.geojson"
    path.write_text('[{"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {}}]')
    return path


def _cases(w) -> list[tuple[str, list, str]]:
    """(name, argv, a fragment the one-line error must contain)."""
    import itertools
    import shutil

    counter = itertools.count()
    root, slide = w["root"], w["slide"]

    class Fresh(list):
        """--data-dir of a private copy of the archive (cases run in parallel; DuckDB allows one writer)."""

        def __iter__(self):
            copy = root / "copies" / str(next(counter))
            if not copy.exists():
                shutil.copytree(w["data"], copy)
            return iter(["--data-dir", copy])

    d = Fresh()
    tiny = ["--models", "tiny", "--device", "cpu"]
    cases = [
        # embed
        ("embed missing slide", ["embed", w["missing_slide"], "--out", root / "o.h5", *tiny], "missing.svs"),
        ("embed not a slide", ["embed", w["fake_slide"], "--out", root / "o.h5", *tiny], "fake.tiff"),
        ("embed out folder missing", ["embed", slide, "--out", root / "no-such-dir" / "o.h5", *tiny], "no-such-dir"),
        ("embed out is a folder", ["embed", slide, "--out", w["folder"], *tiny], "a-folder"),
        ("embed bad mpp", ["embed", slide, "--out", root / "o.h5", "--mpp", "abc", *tiny], "abc"),
        ("embed missing weights", ["embed", slide, "--out", root / "o.h5", "--weights-dir", w["folder"], "--device", "cpu"], "weight"),
        # ingest
        ("ingest missing slide", ["ingest", w["missing_slide"], *tiny, *d], "missing.svs"),
        ("ingest not a slide", ["ingest", w["fake_slide"], *tiny, "--data-dir", root / "ingest-data"], "fake.tiff"),
        ("ingest slide table without PATIENT", ["ingest", slide, "--slide-table", w["filename_only_csv"], *tiny, *d],
         "missing column(s) PATIENT (found: FILENAME)"),
        ("ingest slide table missing", ["ingest", slide, "--slide-table", root / "missing.csv", *tiny, *d], "missing.csv"),
        ("ingest empty folder", ["ingest", w["folder"], *tiny, "--data-dir", root / "ingest-empty"], "no slides found in"),
        ("ingest missing weights", ["ingest", slide, "--weights-dir", w["folder"], "--device", "cpu", "--data-dir", root / "ingest-w"], "weight"),
        # import-embeddings
        ("import missing file", ["import-embeddings", w["missing"], *d], "missing.h5"),
        ("import text file", ["import-embeddings", w["text"], *d], "notes.txt"),
        ("import corrupt h5", ["import-embeddings", w["fake_h5"], *d], "fake.h5"),
        ("import NaN", ["import-embeddings", w["nan_h5"], *d], "nan"),
        ("import wrong dims", ["import-embeddings", w["dim32_h5"], *d], "dim"),
        ("import mixed dims", ["import-embeddings", w["dim32_h5"], root / "good.h5", "--data-dir", root / "mixed"], "dim"),
        ("import unknown kind", ["import-embeddings", root / "good.h5", "--kind", "foo", *d], "unknown vector kind 'foo'"),
        ("import into a file", ["import-embeddings", root / "good.h5", "--data-dir", w["a_file_dir"]], "data-is-a-file"),
        # import-features
        ("features table missing", ["import-features", "--slide-table", root / "missing.csv", "--ctranspath", w["folder"], *d], "missing.csv"),
        ("features folder missing", ["import-features", "--slide-table", root / "clinical.csv", "--ctranspath", root / "nofeat", *d], "clinical.csv"),
        # labels import
        ("labels missing", ["labels", "import", root / "missing.csv", *d], "missing.csv"),
        ("labels wrong type", ["labels", "import", w["text"], *d], "notes.txt"),
        ("labels empty", ["labels", "import", w["empty_csv"], *d], "empty.csv"),
        ("labels no PATIENT", ["labels", "import", w["no_patient_csv"], *d], "PATIENT"),
        ("labels a folder", ["labels", "import", w["folder"], *d], "a-folder"),
        # search
        ("search unknown patient", ["search", "--patient", "NOPE", *d], "NOPE"),
        ("search k not a number", ["search", "--patient", "P0", "-k", "many", *d], "many"),
        ("search k zero", ["search", "--patient", "P0", "-k", "0", *d], "-k"),
        ("search unknown kind", ["search", "--patient", "P0", "--kind", "nokind", *d], "nokind"),
        ("search no query", ["search", *d], "--patient"),
        ("search vector missing", ["search", "--vector", root / "missing.npy", *d], "missing.npy"),
        ("search vector NaN", ["search", "--vector", w["nan_npy"], *d], "nan.npy"),
        ("search vector wrong dims", ["search", "--vector", w["dim32_npy"], *d], "32"),
        ("search vector matrix", ["search", "--vector", w["matrix_npy"], *d], "matrix.npy"),
        ("search bad label filter", ["search", "--patient", "P0", "--label", "TISSUE", *d], "TISSUE"),
        ("search unknown label", ["search", "--patient", "P0", "--label", "NOSUCH=x", *d], "known labels: TISSUE"),
        ("search min-score not a number", ["search", "--patient", "P0", "--min-score", "high", *d], "high"),
        ("search unknown cohort", ["search", "--patient", "P0", "--cohort", "nocohort", *d], "nocohort"),
        ("search slide missing", ["search", "--slide", w["missing_slide"], "--models", "tiny", *d], "missing.svs"),
        ("search mistyped data dir", ["search", "--patient", "P0", "--data-dir", root / "dtaa"], "no catalog"),
        # eval
        ("eval unknown label", ["eval", "retrieval", "--label", "NOLABEL", *d], "NOLABEL"),
        ("eval bad k", ["eval", "retrieval", "--label", "TISSUE", "-k", "1,x", *d], "k"),
        # cohort
        ("cohort show unknown", ["cohort", "show", "nocohort", *d], "nocohort"),
        ("cohort refresh unknown", ["cohort", "refresh", "nocohort", *d], "nocohort"),
        ("cohort create bad rule", ["cohort", "create", "x", "--label", "TISSUE", *d], "TISSUE"),
        ("cohort create unknown seed", ["cohort", "create", "x", "--seed", "NOPE", "--min-similarity", "0.5", *d], "NOPE"),
        ("cohort export bad format", ["cohort", "export", "c1", "--format", "docx", "--out", root / "c.docx", *d], "docx"),
        ("cohort export folder missing", ["cohort", "export", "c1", "--format", "stamp", "--out", root / "nodir" / "c.csv", *d], "nodir"),
        ("cohort export unknown", ["cohort", "export", "nocohort", "--format", "stamp", "--out", root / "c.csv", *d], "nocohort"),
        ("cohort duplicates bad threshold", ["cohort", "duplicates", "--threshold", "2", *d], "threshold"),
        ("cohort leakage unknown", ["cohort", "leakage", "c1", "nocohort", *d], "nocohort"),
        ("cohort umap unknown", ["cohort", "umap", "nocohort", *d], "nocohort"),
        ("cohort list mistyped dir", ["cohort", "list", "--data-dir", root / "dtaa"], "no catalog"),
        # probe
        ("probe train unknown label", ["probe", "train", "NOLABEL", *d], "NOLABEL"),
        ("probe train folds", ["probe", "train", "TISSUE", "--folds", "1", *d], "folds"),
        ("probe train bad model", ["probe", "train", "TISSUE", "--model", "forest", "--folds", "2", *d], "forest"),
        ("probe fewshot bad ks", ["probe", "fewshot", "TISSUE", "--ks", "1,two", *d], "two"),
        ("probe apply unknown", ["probe", "apply", "noprobe", *d], "noprobe"),
        ("probe compare without the other kind", ["probe", "compare", "TISSUE", *d], "chief"),
        ("probe list mistyped dir", ["probe", "list", "--data-dir", root / "dtaa"], "no catalog"),
        # stats / status / reindex / db
        ("stats mistyped dir", ["stats", "--data-dir", root / "dtaa"], "no catalog"),
        ("stats data dir is a file", ["stats", "--data-dir", w["a_file_dir"]], "data-is-a-file"),
        ("status mistyped dir", ["status", "--data-dir", root / "dtaa"], "no catalog"),
        ("reindex mistyped dir", ["reindex", "--data-dir", root / "dtaa"], "no catalog"),
        ("db current mistyped dir", ["db", "current", "--data-dir", root / "dtaa"], "no catalog"),
        ("db upgrade into a file", ["db", "upgrade", "--data-dir", w["a_file_dir"]], "data-is-a-file"),
        ("db upgrade bad revision", ["db", "upgrade", "--revision", "9999", "--data-dir", root / "db-rev"], "9999"),
        # daemon / serve
        ("daemon watch missing", ["daemon", "--watch", root / "no-inbox", "--models", "tiny", "--data-dir", root / "dmn"], "no-inbox"),
        ("serve bad port", ["serve", "--port", "eighty", *d], "eighty"),
        ("serve public without token", ["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", root / "srv"], "EAGLE_INDEX_TOKEN"),
        ("serve slide table missing", ["serve", "--slide-table", root / "missing.csv", "--watch", w["folder"], "--port", "0",
                                       "--data-dir", root / "srv2"], "missing.csv"),
        # tiles / thumbnail
        ("tiles missing", ["tiles", w["missing_slide"]], "missing.svs"),
        ("tiles not a slide", ["tiles", w["fake_slide"]], "fake.tiff"),
        ("tiles not a slide in words", ["tiles", w["fake_slide"]], "not a slide or image file OpenSlide/PIL can read"),
        ("tiles negative mpp", ["tiles", slide, "--mpp", "-1"], "mpp"),
        ("tiles out folder missing", ["tiles", slide, "--out", root / "nodir" / "t.h5"], "nodir"),
        ("thumbnail missing", ["thumbnail", w["missing_slide"], "--out", root / "t.png"], "missing.svs"),
        ("thumbnail unknown extension", ["thumbnail", slide, "--out", root / "t.xyz"], ".xyz"),
        ("thumbnail folder missing", ["thumbnail", slide, "--out", root / "nodir" / "t.png"], "nodir"),
        # models
        ("models verify no weights", ["models", "verify", "--weights-dir", w["folder"]], "a-folder"),
        ("models info unknown model", ["models", "info", "--only", "resnet"], "resnet"),
        ("models download unknown model", ["models", "download", "--only", "resnet", "--weights-dir", root / "w"], "resnet"),
        # backfill (issue 12) and search-tiles (issue 14)
        ("backfill missing path", ["backfill", root / "nowhere", *tiny, *d], "nowhere"),
        ("backfill workers without cluster", ["backfill", slide, "--workers", "2", *tiny, *d], "--cluster"),
        ("search-tiles unknown patient", ["search-tiles", "--patient", "NOPE", "--tile", "1", *d], "NOPE"),
        ("search-tiles half a query", ["search-tiles", "--tile", "1", *d], "--patient"),
        # annotations (issue 23)
        ("annotations import missing", ["annotations", "import", root / "missing.geojson", "--slide", "S1", *d], "missing.geojson"),
        ("annotations import not json", ["annotations", "import", w["text"], "--slide", "S1", *d], "notes.txt: not valid JSON"),
        ("annotations import a folder", ["annotations", "import", w["folder"], "--slide", "S1", *d], "a-folder"),
        ("annotations import unknown slide", ["annotations", "import", _geojson(root), "--slide", "NOSLIDE", *d], "NOSLIDE"),
        ("annotations export unknown slide", ["annotations", "export", "--slide", "NOSLIDE", *d], "NOSLIDE"),
        ("annotations export folder missing", ["annotations", "export", "--slide", "S1", "--out", root / "nodir" / "a.geojson", *d],
         "nodir"),
        ("annotations list unknown slide", ["annotations", "list", "--slide", "NOSLIDE", *d], "NOSLIDE"),
        ("annotations delete unknown", ["annotations", "delete", "424242", *d], "424242"),
        ("annotations delete not a number", ["annotations", "delete", "abc", *d], "abc"),
        ("search-tiles annotation without slide", ["search-tiles", "--annotation", "a", *d], "--slide"),
        # demo
        ("demo too few patients", ["demo", "--patients", "1", "--data-dir", root / "demo"], "--patients"),
        ("demo into a file", ["demo", "--no-serve", "--data-dir", w["a_file_dir"]], "data-is-a-file"),
        # unknown command / option
        ("unknown command", ["serach", *d], "serach"),
        ("unknown option", ["stats", "--jsn", *d], "--jsn"),
    ]
    if os.geteuid() != 0:  # root reads anything
        cases.append(("labels unreadable", ["labels", "import", w["unreadable"], *d], "unreadable.csv"))
    return cases


def _check(name, result, fragment) -> list[str]:
    problems = []
    everything = result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if name.startswith("models verify") and lines and all(line.startswith("problem: ") for line in lines):
        lines = [" ".join(lines).replace("problem: ", "error: ", 1)]  # a report: one `problem:` line per model
    if result.returncode == 0:
        problems.append(f"{name}: exit code 0")
    if "Traceback" in everything:
        problems.append(f"{name}: traceback:\n{everything[-2000:]}")
    elif len(lines) != 1:
        problems.append(f"{name}: expected one line on stderr, got {len(lines)}: {result.stderr[-1500:]!r}")
    elif not re.match(r"^(error|failed): ", lines[0]) or "internal error" in lines[0]:
        problems.append(f"{name}: not a one-line user error: {lines[0]!r}")
    elif fragment.lower() not in lines[0].lower():
        problems.append(f"{name}: {fragment!r} not named in {lines[0]!r}")
    return problems


def test_every_command_with_bad_input_fails_in_one_line(world):
    cases = _cases(world)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda case: run(case[1]), cases))
    problems = [p for (name, _, fragment), result in zip(cases, results) for p in _check(name, result, fragment)]
    assert problems == [], "\n".join(problems)


def test_the_hunt_covers_every_command_of_the_readme(world):
    table = README.read_text().split("## Command overview", 1)[1].split("\n\n", 2)[1]
    commands = set()
    for cell in re.findall(r"^\| `eagle-index ([^`]+)`", table, flags=re.M):
        words = cell.split()
        first = words[0]
        if len(words) > 1 and re.fullmatch(r"[a-z]+(\\?\|[a-z]+)+", words[1]):  # cohort create|list|...
            commands.update(f"{first} {sub}" for sub in words[1].replace("\\", "").split("|"))
        elif first in ("labels", "eval", "db"):
            commands.add(f"{first} {words[1]}")
        else:
            commands.add(first)
    commands |= {"db current", "probe fewshot", "probe apply", "probe list", "probe compare"}  # named in the text
    covered = set()
    for _, argv, _ in _cases(world):
        words = [str(a) for a in argv]
        covered.add(words[0])
        if len(words) > 1:
            covered.add(f"{words[0]} {words[1]}")
    missing = sorted(c for c in commands if c not in covered)
    # umbrella rows and subcommands without bad input of their own are checked through their siblings
    assert missing == [] or set(missing) <= {"cohort delete"}, missing


def test_a_locked_catalog_is_one_line(world, tmp_path):
    """Another process holds the DuckDB file (no owner record): read commands say so in one line."""
    import shutil

    data = tmp_path / "locked"
    shutil.copytree(world["data"], data, ignore=shutil.ignore_patterns("owner.*"))
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); "
                               "print('held', flush=True); time.sleep(300)", str(data / "catalog.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        d = ["--data-dir", data]
        cases = [("stats locked", ["stats", *d], "is locked by"), ("db current locked", ["db", "current", *d], "is locked by"),
                 ("search locked", ["search", "--patient", "P0", *d], "is locked by"),
                 ("labels locked", ["labels", "import", world["root"] / "clinical.csv", *d], "is locked by"),
                 ("cohort list locked", ["cohort", "list", *d], "is locked by")]
        problems = [p for name, argv, fragment in cases for p in _check(name, run(argv), fragment)]
        assert problems == [], "\n".join(problems)
    finally:
        holder.kill()
        holder.wait()


def test_a_taken_port_names_the_port_and_the_option(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run(["serve", "--port", port, "--data-dir", tmp_path / "data"])
        assert _check("serve taken port", result, str(port)) == []
        assert "--port" in result.stderr
        assert not (tmp_path / "data").exists()  # the port is checked before a new archive is made
        result = run(["demo", "--port", port, "--patients", "3", "--data-dir", tmp_path / "demo"])
        assert _check("demo taken port", result, str(port)) == []
        assert "--port" in result.stderr
        assert not (tmp_path / "demo" / "catalog.duckdb").exists()  # refused before minutes of embedding
