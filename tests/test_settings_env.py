"""The environment is read in one place, `eagle_index/config.py`, and every variable still works
through the `Settings` it builds (table: docs/environment.md)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from eagle_index.config import Settings
from eagle_index.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "eagle_index", ROOT / "web"]
READER = ROOT / "eagle_index" / "config.py"
# Writes that configure other libraries before they start (each has a one-line why beside it).
ALLOWED_WRITES = {
    "eagle_index/__init__.py": {"setdefault"},  # OMP_WAIT_POLICY for FAISS/torch's OpenMP
    "eagle_index/cluster.py": {"setdefault"},  # Ray's quiet settings, which it reads only from the environment
}
TOKEN = "a-test-token-of-24-chars"


def environment_uses(path: Path) -> list[tuple[int, str]]:
    """(line, what) for every use of the process environment: os.environ / os.environb (with the
    method called on it, if any), os.getenv / os.getenvb, `from os import environ, getenv`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    os_names = {"os"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {alias.asname or alias.name for alias in node.names if alias.name == "os"}
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [(node.lineno, f"from os import {a.name}") for a in node.names if a.name in ("environ", "environb", "getenv", "getenvb")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in os_names:
            if node.attr in ("getenv", "getenvb"):
                found.append((node.lineno, f"os.{node.attr}"))
            elif node.attr in ("environ", "environb"):
                parent = parents.get(node)
                method = parent.attr if isinstance(parent, ast.Attribute) else ""
                found.append((node.lineno, f"os.{node.attr}" + (f".{method}" if method else "")))
    return found


def test_only_config_reads_the_environment():
    offenders = []
    for folder in SOURCES:
        for path in sorted(folder.rglob("*.py")):
            if path == READER:
                continue
            rel = path.relative_to(ROOT).as_posix()
            for line, what in environment_uses(path):
                method = what.rpartition(".")[2] if what.startswith("os.environ.") else None
                if method is None or method not in ALLOWED_WRITES.get(rel, set()):
                    offenders.append(f"{rel}:{line} uses {what}")
    assert not offenders, "read the environment in eagle_index/config.py (Settings) only:\n" + "\n".join(offenders)
    assert environment_uses(READER), "config.py reads the environment (or this walk sees nothing)"


def test_the_walk_sees_every_form(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nimport os as o\nfrom os import getenv\n"
                      "def f():\n    a = os.environ.get('X')\n    b = o.getenv('Y')\n    c = os.environ['Z']\n"
                      "    os.environ.setdefault('W', '1')\n    return dict(os.environ)\n")
    assert sorted(environment_uses(sample)) == [(3, "from os import getenv"), (5, "os.environ.get"), (6, "os.getenv"),
                                                (7, "os.environ"), (8, "os.environ.setdefault"), (9, "os.environ")]


@pytest.fixture
def clean_env(monkeypatch):
    """No eagle-index variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("EAGLE_INDEX_") or name in ("HF_TOKEN", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_defaults_without_environment(clean_env):
    settings = Settings.load()
    assert (settings.cache_dir, settings.allow_digest_mismatch, settings.hub_repos, settings.hf_token, settings.token,
            settings.log_level, settings.max_upload_mb) == (None, False, {}, None, None, None, 4096)
    import eagle_index.config as config

    assert settings.weights_cache_dir == config.default_cache_dir() / "weights"


@pytest.mark.parametrize("name, raw, field, value", [
    ("EAGLE_INDEX_ALLOW_DIGEST_MISMATCH", "1", "allow_digest_mismatch", True),
    ("EAGLE_INDEX_ALLOW_DIGEST_MISMATCH", "Yes", "allow_digest_mismatch", True),
    ("EAGLE_INDEX_HUB_CHIEF", "me/chief:CHIEF_pretraining.pth", "hub_repos", {"chief": "me/chief:CHIEF_pretraining.pth"}),
    ("HF_TOKEN", "hf_abc", "hf_token", "hf_abc"),
    ("EAGLE_INDEX_TOKEN", TOKEN, "token", TOKEN),
    ("EAGLE_INDEX_LOG", "warning", "log_level", "WARNING"),
    ("EAGLE_INDEX_MAX_UPLOAD_MB", "64", "max_upload_mb", 64),
    ("EAGLE_INDEX_DEVICE", "cpu", "device", "cpu"),
    ("EAGLE_INDEX_ALLOWED_HOSTS", "a.example, b.example", "allowed_hosts", ("a.example", "b.example")),
])
def test_each_variable_becomes_a_setting(clean_env, name, raw, field, value):
    clean_env.setenv(name, raw)
    assert getattr(Settings.load(), field) == value
    assert getattr(Settings(), field) != value  # only Settings.load() reads the environment


def test_the_digest_switch_is_off_for_false_words(clean_env):
    for raw in ("0", "false", "No", "off", ""):
        clean_env.setenv("EAGLE_INDEX_ALLOW_DIGEST_MISMATCH", raw)
        assert Settings.load().allow_digest_mismatch is False, raw


def test_cache_folder_from_eagle_index_cache_else_xdg(clean_env, tmp_path):
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.load().weights_cache_dir == tmp_path / "xdg" / "eagle-index" / "weights"
    clean_env.setenv("EAGLE_INDEX_CACHE", str(tmp_path / "mine"))
    assert Settings.load().weights_cache_dir == tmp_path / "mine" / "weights"


def test_secrets_stay_out_of_repr_and_ray_workers(clean_env):
    clean_env.setenv("EAGLE_INDEX_TOKEN", TOKEN)
    clean_env.setenv("HF_TOKEN", "hf_secret_value")
    settings = Settings.load()
    assert TOKEN not in repr(settings) and "hf_secret_value" not in repr(settings)
    worker = settings.without_secrets()
    assert (worker.token, worker.hf_token) == (None, None) and worker.data_dir == settings.data_dir


@pytest.mark.parametrize("name, raw", [
    ("EAGLE_INDEX_ALLOW_DIGEST_MISMATCH", "maybe"),
    ("EAGLE_INDEX_HUB_CTRANSPATH", "no-slash"),
    ("EAGLE_INDEX_LOG", "LOUD"),
    ("EAGLE_INDEX_MAX_UPLOAD_MB", "lots"),
    ("EAGLE_INDEX_MAX_UPLOAD_MB", "0"),
    ("EAGLE_INDEX_TILE_QUALITY", "101"),
])
def test_an_invalid_value_is_one_line_naming_variable_and_value(clean_env, capsys, tmp_path, name, raw):
    clean_env.setenv(name, raw)
    with pytest.raises(InputError, match=f"^{name}={raw!r}: expected "):
        Settings.load()
    from eagle_index.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["stats", "--data-dir", str(tmp_path / "data")])
    assert exited.value.code == InputError.exit_code
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and f"{name}={raw!r}" in err and "Traceback" not in err


def test_debug_switch(clean_env):
    from eagle_index.config import debug_tracebacks

    assert not debug_tracebacks()
    clean_env.setenv("EAGLE_INDEX_DEBUG", "1")
    assert debug_tracebacks()


def test_a_bad_variable_fails_the_real_command_with_one_line(tmp_path):
    done = run_cli("stats", "--data-dir", tmp_path / "data", check=False, env={"EAGLE_INDEX_LOG": "LOUD"})
    assert done.returncode == InputError.exit_code
    assert done.stderr.strip() == "error: EAGLE_INDEX_LOG='LOUD': expected a log level: DEBUG, INFO, WARNING, ERROR, CRITICAL"


def test_server_token_and_log_level_reach_serve_and_the_client(tmp_path):
    """serve takes its token and log level from the environment (through Settings); other commands
    send the token from theirs: with it `status` answers through the server, without it it is refused."""
    data = tmp_path / "data"
    log = tmp_path / "serve.log"
    env = {**os.environ, "EAGLE_INDEX_TOKEN": TOKEN, "EAGLE_INDEX_LOG": "WARNING"}
    with open(tmp_path / "serve.out", "w") as out, open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "eagle_index", "serve", "--port", "0", "--models", "tiny", "--device", "cpu",
                                 "--data-dir", str(data)], stdout=out, stderr=err, env=env)
    try:
        deadline = time.time() + 120
        while not (data / "owner.json").exists() or "url" not in (data / "owner.json").read_text():
            assert proc.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        with_token = run_cli("status", "--json", "--data-dir", data, env={"EAGLE_INDEX_TOKEN": TOKEN})
        assert json.loads(with_token.stdout)["owner"]["pid"] == proc.pid
        without = run_cli("status", "--json", "--data-dir", data, check=False,
                          env={k: "" for k in ("EAGLE_INDEX_TOKEN",)})
        assert without.returncode != 0 and "Traceback" not in without.stderr
        assert len(without.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(60)
    assert "listening on" in (tmp_path / "serve.out").read_text()
    assert "serve ready" not in log.read_text()  # logged at INFO, serve's default level: EAGLE_INDEX_LOG=WARNING hides it
