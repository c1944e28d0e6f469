"""A newcomer's first hour (issue 10): paths, provenance through import, failed slides, files users
share, progress bars, a mistyped data folder. Every test runs the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import select
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clustered_vectors, write_eagle_h5

TINY = ["--models", "tiny", "--device", "cpu"]


def run(*args, cwd=None, umask=None, check=False, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAGLE_INDEX_") or k == "EAGLE_INDEX_CACHE"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    result = subprocess.run([sys.executable, "-m", "eagle_index", *map(str, args)], capture_output=True, text=True,
                            cwd=cwd, env=env, timeout=timeout, preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)
    if check and result.returncode != 0:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    folder = tmp_path_factory.mktemp("first-hour-slides")
    out = {}
    for i, name in enumerate(["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0002-01Z-00-DX1", "case-x"]):
        out[name] = folder / f"{name}.tiff"
        write_pyramidal_tiff(out[name], mpp=0.5, size_um=(1792.0, 1344.0), tissue_boxes_um=[(448.0, 448.0, 896.0, 448.0)], seed=i)
    (folder / "broken.tiff").write_bytes(b"not a slide at all")
    out["broken"] = folder / "broken.tiff"
    return out


def test_settings_resolve_relative_paths_against_the_working_directory(tmp_path, monkeypatch):
    from eagle_index.config import Settings

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EAGLE_INDEX_WEIGHTS", "w")
    settings = Settings.load(data_dir=Path("./demo-data"))
    assert settings.data_dir == tmp_path / "demo-data" and settings.data_dir.is_absolute()
    assert settings.weights_dir == tmp_path / "w"
    assert Settings(data_dir=Path("~/x")).data_dir == Path.home() / "x"


def test_a_relative_data_dir_is_the_working_directorys(tmp_path):
    write_eagle_h5(tmp_path / "v.h5", [f"P{i}" for i in range(4)], clustered_vectors(4, 16))
    run("import-embeddings", "v.h5", "--data-dir", "rel-data", cwd=tmp_path, check=True)
    assert (tmp_path / "rel-data" / "catalog.duckdb").is_file()


def test_a_mistyped_data_dir_is_not_a_new_archive(tmp_path):
    for args in (["stats"], ["search", "--patient", "P1"], ["status"], ["cohort", "list"], ["db", "current"]):
        result = run(*args, "--data-dir", tmp_path / "typo")
        assert result.returncode != 0 and f"no catalog at {tmp_path / 'typo'}" in result.stderr, args
    assert not (tmp_path / "typo").exists()


def test_embed_output_keeps_its_signature_through_import(tmp_path, slides):
    data = tmp_path / "data"
    run("ingest", slides["TCGA-AA-0001-01Z-00-DX1"], *TINY, "--data-dir", data, check=True)
    run("embed", slides["case-x"], "--out", tmp_path / "x.h5", "--patient", "CASE-X", *TINY, check=True)
    run("import-embeddings", tmp_path / "x.h5", "--data-dir", data, check=True)
    stats = json.loads(run("stats", "--json", "--data-dir", data, check=True).stdout)
    eagle = [s for s in stats["vector_sets"] if s["kind"] == "eagle"]
    assert len(eagle) == 1 and eagle[0]["count"] == 2 and eagle[0]["signature"].startswith("tiny:"), stats
    hits = json.loads(run("search", "--patient", "CASE-X", "--json", "--data-dir", data, check=True).stdout)
    assert [h["patient"] for h in hits] == ["TCGA-AA-0001"]


def test_a_search_without_neighbours_says_so(tmp_path):
    data = tmp_path / "data"
    write_eagle_h5(tmp_path / "one.h5", ["ALONE"], clustered_vectors(1, 16))
    run("import-embeddings", tmp_path / "one.h5", "--data-dir", data, check=True)
    result = run("search", "--patient", "ALONE", "--data-dir", data)
    assert result.returncode != 0 and "no other patients" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_failed_slides_are_failed_jobs_not_patients(tmp_path, slides):
    data = tmp_path / "data"
    result = run("ingest", slides["broken"], slides["TCGA-AA-0002-01Z-00-DX1"], *TINY, "--data-dir", data)
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("failed: ") and errors[0].count("broken.tiff") == 1, result.stderr
    assert "1 ingested, 0 skipped (already stored), 1 failed" in result.stdout.splitlines()[-1]
    assert "TCGA-AA-0002 (patient id from the file name)" in result.stdout
    stats = json.loads(run("stats", "--json", "--data-dir", data, check=True).stdout)
    assert (stats["patients"], stats["slides"], stats["failed"]) == (1, 1, 1), stats
    status = json.loads(run("status", "--json", "--data-dir", data, check=True).stdout)
    assert [Path(f["file"]).name for f in status["failures"]] == ["broken.tiff"] and status["queue"]["failed"] == 1
    again = run("ingest", slides["TCGA-AA-0002-01Z-00-DX1"], *TINY, "--data-dir", data, check=True)
    assert again.stdout.splitlines()[-1] == "0 ingested, 1 skipped (already stored), 0 failed"


def test_missing_weights_are_reported_once(tmp_path, slides):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    result = run("ingest", slides["case-x"], slides["TCGA-AA-0002-01Z-00-DX1"], "--weights-dir", empty, "--device", "cpu",
                 "--data-dir", tmp_path / "data")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model weights not found"), result.stderr


def test_outputs_follow_the_umask_and_the_extension(tmp_path, slides):
    from PIL import Image

    jpg = tmp_path / "thumb.jpg"
    run("thumbnail", slides["case-x"], "--out", jpg, umask=0o027, check=True)
    assert stat.S_IMODE(jpg.stat().st_mode) == 0o640
    assert Image.open(jpg).format == "JPEG"
    png = tmp_path / "thumb.png"
    run("thumbnail", slides["case-x"], "--out", png, umask=0o022, check=True)
    assert stat.S_IMODE(png.stat().st_mode) == 0o644 and Image.open(png).format == "PNG"
    out = tmp_path / "e.h5"
    run("embed", slides["case-x"], "--out", out, *TINY, umask=0o022, check=True)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    tiles = tmp_path / "tiles.h5"
    run("tiles", slides["case-x"], "--out", tiles, umask=0o002, check=True)
    assert stat.S_IMODE(tiles.stat().st_mode) == 0o664
    data = tmp_path / "data"
    write_eagle_h5(tmp_path / "v.h5", [f"P{i}" for i in range(4)], clustered_vectors(4, 16))
    run("import-embeddings", tmp_path / "v.h5", "--data-dir", data, check=True)
    run("cohort", "create", "all", "--data-dir", data, check=True)
    export = tmp_path / "all.csv"
    run("cohort", "export", "all", "--format", "clinical", "--out", export, "--data-dir", data, umask=0o022, check=True)
    assert stat.S_IMODE(export.stat().st_mode) == 0o644


def _in_terminal(args, timeout=300) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal; returns (exit code, what the terminal showed)."""
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EAGLE_INDEX_") or k == "EAGLE_INDEX_CACHE"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1]), COLUMNS="120", TERM="xterm")
    proc = subprocess.Popen([sys.executable, "-m", "eagle_index", *map(str, args)], stdout=subprocess.DEVNULL, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            proc.kill()
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    return proc.wait(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bars_on_a_terminal_only(tmp_path, slides):
    args = ["embed", slides["case-x"], slides["TCGA-AA-0002-01Z-00-DX1"], "--out", tmp_path / "o.h5", *TINY]
    code, shown = _in_terminal(args)
    assert code == 0 and "slides" in shown and "2/2" in shown and "tiles" in shown and "eta" in shown, shown
    code, shown = _in_terminal([*args, "--json"])
    assert code == 0 and "eta" not in shown and "━" not in shown, shown
    piped = run(*args)
    assert piped.returncode == 0 and piped.stderr == ""


def test_help_is_readable_for_every_command(capsys, monkeypatch):
    """No `<bool>`/`<list[Path]>` type labels, no `--k -k`, no `[default: default]` in any --help."""
    from typer.main import get_command

    from eagle_index.cli import app, main

    monkeypatch.setenv("COLUMNS", "200")
    paths: list[list[str]] = [[]]

    def walk(command, prefix):
        for name, sub in getattr(command, "commands", {}).items():
            paths.append([*prefix, name])
            walk(sub, [*prefix, name])

    walk(get_command(app), [])
    assert len(paths) > 30
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0, path
        text = capsys.readouterr().out
        assert "Usage:" in text, path
        for bad in ("<bool>", "<str>", "<path>", "<int", "<float", "<list[", "[default: default]", "--k "):
            assert bad not in text, (path, bad, text)
