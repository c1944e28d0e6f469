"""Weights in the official layouts load through the real loaders with strict=True."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import eagle_index.models as models_pkg
from eagle_index.config import Settings
from eagle_index.errors import ModelError
from eagle_index.models import REGISTRY, load_models, specs_for
from eagle_index.models import weights
from model_fixtures import MANIFEST_DIR, write_official_layout_weights

needs_manifests = pytest.mark.skipif(not MANIFEST_DIR.is_dir(), reason="../shared/manifests not available")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's cache; never see their weights folder or hub settings."""
    monkeypatch.setenv(weights.ENV_CACHE, str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith(weights.ENV_HUB_PREFIX) or name in ("EAGLE_INDEX_WEIGHTS", weights.ENV_ALLOW_MISMATCH):
            monkeypatch.delenv(name)
    return tmp_path / "cache"


def _pin(monkeypatch, **digests):
    """Pretend the official digest of some models is that of our random files."""
    pinned = {k: dataclasses.replace(v, digest=digests.get(k, v.digest)) for k, v in REGISTRY.items()}
    real = models_pkg.specs_for
    monkeypatch.setattr(models_pkg, "specs_for", lambda preset: pinned if preset == "default" else real(preset))


@needs_manifests
def test_manifest_shaped_files_load_strictly(tmp_path):
    paths = write_official_layout_weights(tmp_path / "w", preset="manifest", models=("ctranspath", "chief"))
    settings = Settings(weights_dir=tmp_path / "w", device="cpu")
    with pytest.raises(ModelError, match="SHA-256"):
        load_models(settings, only=("ctranspath",))
    models = load_models(settings, only=("ctranspath", "chief"), allow_digest_mismatch=True)
    assert models.ctranspath.digest == weights.file_sha256(paths["ctranspath"])
    assert models.ctranspath.origin == "weights-dir"
    tiles = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    feats = models.ctranspath.encode(tiles)
    assert feats.shape == (2, 768) and feats.dtype == np.float32
    assert models.chief.raw_attention(feats).shape == (2,)
    assert models.chief.slide_embedding(feats).shape == (768,)
    with pytest.raises(ModelError, match="not loaded"):
        models.virchow2
    # Mismatching digests are recorded, so these vectors can never pass as official ones.
    prov = models.provenance("chief")
    assert prov["models"]["ctranspath"]["digest_matches"] is False


@needs_manifests
def test_official_digest_is_accepted_and_recorded(tmp_path, monkeypatch):
    paths = write_official_layout_weights(tmp_path, preset="manifest", models=("chief",))
    digest = weights.file_sha256(paths["chief"])
    _pin(monkeypatch, chief=digest)
    models = load_models(Settings(weights_dir=tmp_path, device="cpu"), only=("chief",))
    assert models.chief.digest == digest and models.chief.origin == "weights-dir"
    _pin(monkeypatch, chief="0" * 64)
    with pytest.raises(ModelError, match="EAGLE_INDEX_ALLOW_DIGEST_MISMATCH"):
        load_models(Settings(weights_dir=tmp_path, device="cpu"), only=("chief",))
    monkeypatch.setenv(weights.ENV_ALLOW_MISMATCH, "1")  # through Settings.load, as every command builds its settings
    assert load_models(Settings.load(weights_dir=tmp_path, device="cpu"), only=("chief",)).chief.digest == digest


def test_tiny_files_in_official_layout_load_via_weights_dir(tmp_path):
    paths = write_official_layout_weights(tmp_path, preset="tiny", seed=42)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths.values()) == [
        "CHIEF_pretraining.pth",
        "ctranspath.pth",
        "virchow2/pytorch_model.bin",
    ]
    assert (tmp_path / "virchow2" / "config.json").is_file()
    from_files = load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"))
    generated = load_models(Settings(models="tiny", device="cpu"))
    assert {e.origin for e in (from_files.ctranspath, from_files.chief, from_files.virchow2)} == {"weights-dir"}
    assert from_files.digests == {k: weights.file_sha256(p) for k, p in paths.items()}
    assert from_files.signature("eagle") != generated.signature("eagle")
    assert from_files.signature("eagle").startswith("tiny:")
    tiles = np.random.default_rng(1).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    assert from_files.virchow2.class_tokens(tiles).shape == (3, specs_for("tiny")["virchow2"].dim)


def test_virchow2_safetensors_is_accepted(tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny", models=("virchow2",), virchow2_format="safetensors")
    models = load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"), only=("virchow2",))
    assert models.virchow2.path.name == "model.safetensors"


def test_generated_tiny_weights_are_deterministic():
    a = load_models(Settings(models="tiny", device="cpu"))
    b = load_models(Settings(models="tiny", device="cpu"))
    assert a.digests == b.digests
    assert a.ctranspath.origin == "generated" and a.ctranspath.path is None
    tiles = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_array_equal(a.virchow2.encode(tiles), b.virchow2.encode(tiles))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda sd: sd.update({"extra.weight": torch.zeros(1)}), "unexpected"),
        (lambda sd: sd.pop("norm.weight"), "missing"),
        (lambda sd: sd.update({"norm.weight": torch.zeros(7)}), "shape mismatch"),
    ],
)
def test_strict_loading_names_the_difference(tmp_path, mutate, message):
    write_official_layout_weights(tmp_path, preset="tiny", models=("ctranspath",))
    ckpt = torch.load(tmp_path / "ctranspath.pth", weights_only=True)
    mutate(ckpt["model"])
    torch.save(ckpt, tmp_path / "ctranspath.pth")
    with pytest.raises(ModelError, match=message):
        load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"), only=("ctranspath",))


def test_ctranspath_file_must_nest_the_state_dict(tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny", models=("ctranspath",))
    ckpt = torch.load(tmp_path / "ctranspath.pth", weights_only=True)
    torch.save(ckpt["model"], tmp_path / "ctranspath.pth")  # flat: not the official layout
    with pytest.raises(ModelError, match="'model'"):
        load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"), only=("ctranspath",))


def test_chief_organ_embedding_is_dropped_but_other_extras_are_not(tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny", models=("chief",))
    settings = Settings(models="tiny", weights_dir=tmp_path, device="cpu")
    load_models(settings, only=("chief",))  # organ_embedding present in the file: fine
    state = torch.load(tmp_path / "CHIEF_pretraining.pth", weights_only=True)
    state["bag_classifier.weight"] = torch.zeros(2, 2)
    torch.save(state, tmp_path / "CHIEF_pretraining.pth")
    with pytest.raises(ModelError, match="bag_classifier"):
        load_models(settings, only=("chief",))


def test_pickled_objects_are_refused(tmp_path):
    import argparse

    torch.save({"model": {}, "args": argparse.Namespace(lr=1)}, tmp_path / "ctranspath.pth")  # unpickling would run code
    with pytest.raises(ModelError, match="cannot read"):
        load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"), only=("ctranspath",))


def test_virchow2_config_describing_another_model_is_refused(tmp_path):
    write_official_layout_weights(tmp_path, preset="tiny", models=("virchow2",))
    (tmp_path / "virchow2" / "config.json").write_text('{"architecture": "vit_large_patch16_224", "model_args": {"reg_tokens": 0}}')
    with pytest.raises(ModelError, match="vit_large_patch16_224"):
        load_models(Settings(models="tiny", weights_dir=tmp_path, device="cpu"), only=("virchow2",))


def test_missing_weights_name_every_file_and_its_source(tmp_path):
    with pytest.raises(ModelError) as err:
        load_models(Settings(weights_dir=tmp_path, device="cpu"))
    msg = str(err.value)
    assert "3 missing" in msg
    for needle in ("ctranspath.pth", "CHIEF_pretraining.pth", "virchow2/pytorch_model.bin", "paige-ai/Virchow2", "HF_TOKEN", "drive.google.com"):
        assert needle in msg
    assert str(tmp_path) in msg


def test_weights_dir_wins_over_cache(tmp_path, isolated_cache):
    cache_paths = write_official_layout_weights(isolated_cache / "weights", preset="manifest" if MANIFEST_DIR.is_dir() else "tiny", models=("chief",), seed=1)
    loc = weights.locate(REGISTRY["chief"], Settings.load())  # EAGLE_INDEX_CACHE names the cache
    assert loc.origin == "cache" and loc.path == cache_paths["chief"]
    (tmp_path / "w").mkdir()
    mine = write_official_layout_weights(tmp_path / "w", preset="tiny", models=("chief",))
    loc = weights.locate(REGISTRY["chief"], Settings(weights_dir=tmp_path / "w"))
    assert loc.origin == "weights-dir" and loc.path == mine["chief"]
    # The tiny preset never reads the cache: only an explicit weights folder.
    assert weights.locate(specs_for("tiny")["chief"], Settings(models="tiny")).origin == "generated"


def test_digest_is_cached_by_path_size_and_mtime(tmp_path, monkeypatch, isolated_cache):
    f = tmp_path / "blob.bin"
    f.write_bytes(b"a" * 1000)
    calls = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p: calls.append(p) or real(p))
    cache = Settings.load().weights_cache_dir
    assert cache == isolated_cache / "weights"
    first = weights.file_sha256(f, cache_dir=cache)
    assert weights.file_sha256(f, cache_dir=cache) == first and len(calls) == 1
    assert (isolated_cache / "weights" / weights.DIGEST_CACHE_FILE).is_file()
    f.write_bytes(b"b" * 1000)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10_000_000))
    assert weights.file_sha256(f, cache_dir=cache) != first and len(calls) == 2


def test_hub_override_from_environment(monkeypatch):
    from eagle_index.errors import InputError

    monkeypatch.setenv("EAGLE_INDEX_HUB_CTRANSPATH", "someone/ctp:weights/ctranspath.pth")
    settings = Settings.load()
    assert weights.hub_source(REGISTRY["ctranspath"], settings) == weights.HubSource("someone/ctp", "weights/ctranspath.pth")
    assert weights.hub_source(REGISTRY["chief"], settings) is None
    assert weights.hub_source(REGISTRY["virchow2"], settings) == weights.HubSource("paige-ai/Virchow2")
    assert weights.hub_source(REGISTRY["ctranspath"], Settings()) is None  # the environment counts through Settings.load only
    monkeypatch.setenv("EAGLE_INDEX_HUB_CHIEF", "not-a-repo")
    with pytest.raises(InputError, match="EAGLE_INDEX_HUB_CHIEF='not-a-repo'.*owner/repo"):
        Settings.load()


def test_download_without_a_hub_source_says_where_to_get_the_file(tmp_path):
    with pytest.raises(ModelError, match="not on the Hugging Face hub.*drive.google.com"):
        weights.download(REGISTRY["ctranspath"], Settings(weights_dir=tmp_path))


def test_download_offline_is_a_clear_model_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="cannot download"):
        weights.download(REGISTRY["virchow2"], Settings(weights_dir=tmp_path))


def test_download_places_hub_files_in_the_official_layout(tmp_path, monkeypatch):
    """The hub client is faked; the files land where the loader looks, then load strictly."""
    source = tmp_path / "hub"
    write_official_layout_weights(source, preset="tiny", models=("virchow2", "chief"))
    served = {"paige-ai/Virchow2": source / "virchow2", "me/chief": source}
    seen = []

    def fake_download(repo_id, filename, token=None, local_dir=None, **_):
        seen.append((repo_id, filename, token))
        src = served[repo_id] / filename
        if not src.is_file():
            from huggingface_hub.errors import RemoteEntryNotFoundError

            raise RemoteEntryNotFoundError(f"{filename} not in {repo_id}", response=_FakeResponse())
        dest = Path(local_dir) / filename
        dest.write_bytes(src.read_bytes())
        return str(dest)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setenv("EAGLE_INDEX_HUB_CHIEF", "me/chief:CHIEF_pretraining.pth")
    tiny_v2 = specs_for("tiny")["virchow2"]
    spec = dataclasses.replace(tiny_v2, preset="default", hub_repo="paige-ai/Virchow2")
    dest = tmp_path / "dest"
    path = weights.download(spec, Settings.load(weights_dir=dest))  # HF_TOKEN and EAGLE_INDEX_HUB_CHIEF through Settings
    assert path == dest / "virchow2" / "pytorch_model.bin"
    assert (dest / "virchow2" / "config.json").is_file()
    assert ("paige-ai/Virchow2", "config.json", "hf_test") in seen
    chief_path = weights.download(REGISTRY["chief"], Settings.load(weights_dir=dest))
    assert chief_path == dest / "CHIEF_pretraining.pth"
    assert not list(dest.glob(".download-*")) and not list((dest / "virchow2").glob(".download-*"))
    models = load_models(Settings(models="tiny", weights_dir=dest, device="cpu"))
    assert models.virchow2.origin == "weights-dir" and models.chief.origin == "weights-dir"


class _FakeResponse:
    status_code = 404
    headers: dict = {}
    url = "https://huggingface.co"
    request = None

    def json(self):
        return {}


@needs_manifests
@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("EAGLE_INDEX_SLOW_TESTS") != "1", reason="writes and loads 2.5 GB; set EAGLE_INDEX_SLOW_TESTS=1")
def test_full_size_virchow2_file_loads_strictly_and_encodes(tmp_path):
    write_official_layout_weights(tmp_path, preset="manifest", models=("virchow2",))
    models = load_models(Settings(weights_dir=tmp_path, device="cpu"), only=("virchow2",), allow_digest_mismatch=True)
    tokens = models.virchow2.class_tokens(np.zeros((1, 224, 224, 3), dtype=np.uint8))
    assert tokens.shape == (1, 1280) and np.isfinite(tokens).all()
