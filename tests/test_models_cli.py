"""`eagle-index models info | verify | download`, on a fresh app with only this command group."""

from __future__ import annotations

import json
import os

import pytest
import typer
from typer.testing import CliRunner

from eagle_index.cli import models_cmds
from eagle_index.errors import ModelError
from eagle_index.models import weights
from model_fixtures import write_official_layout_weights


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    for name in list(os.environ):
        if name.startswith(weights.ENV_HUB_PREFIX) or name in ("EAGLE_INDEX_WEIGHTS", weights.ENV_ALLOW_MISMATCH):
            monkeypatch.delenv(name)


@pytest.fixture
def app():
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """test root"""

    models_cmds.register(app)
    return app


def run(app, *args):
    return CliRunner().invoke(app, ["models", *args])


def test_info_json_lists_each_model_and_what_is_missing(app, tmp_path):
    result = run(app, "info", "--json", "--weights-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    rows = {r["id"]: r for r in data["models"]}
    assert set(rows) == {"ctranspath", "chief", "virchow2"}
    assert rows["ctranspath"]["dim"] == 768 and rows["virchow2"]["dim"] == 1280
    assert rows["ctranspath"]["expected_digest"].startswith("7c998680")
    assert rows["ctranspath"]["weights"].startswith("missing: ctranspath.pth from ")
    assert "paige-ai/Virchow2" in rows["virchow2"]["weights"]
    assert "CC-BY-NC-ND-4.0" in rows["virchow2"]["licence"]


def test_info_table_for_tiny(app):
    result = run(app, "info", "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert "generated (seed" in result.output and "preset: tiny" in result.output


def test_verify_tiny_from_files_passes(app, tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny")
    result = run(app, "verify", "--models", "tiny", "--weights-dir", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["ok"] and {r["status"] for r in data["models"]} == {"ok (digest not pinned)"}


def test_verify_lists_every_problem_and_fails(app, tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny", models=("chief",))  # tiny shapes: wrong for default
    result = run(app, "verify", "--weights-dir", str(tmp_path))
    assert result.exit_code == ModelError.exit_code
    assert result.output.count("problem:") == 3
    assert "ctranspath.pth" in result.output and "virchow2/pytorch_model.bin" in result.output
    assert "do not fit" in result.output or "SHA-256" in result.output


def test_download_offline_fails_clearly(app, tmp_path):
    result = run(app, "download", "--weights-dir", str(tmp_path))
    assert result.exit_code == ModelError.exit_code
    assert "not on the Hugging Face hub" in result.output  # CTransPath, CHIEF: Google Drive only
    assert "cannot download config.json from https://huggingface.co/paige-ai/Virchow2" in result.output
    assert "CC-BY-NC-ND-4.0" in result.output


def test_download_refuses_tiny(app):
    result = run(app, "download", "--models", "tiny")
    assert isinstance(result.exception, ModelError)


def test_unknown_model_id_is_an_error(app):
    result = run(app, "info", "--only", "uni")
    assert isinstance(result.exception, ModelError)
