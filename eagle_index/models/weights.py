"""Where weight files come from, and whether they are the ones we expect.

Resolution order for each model: the weights folder (`--weights-dir` / `EAGLE_INDEX_WEIGHTS`),
then the local cache (`settings.weights_cache_dir`: `$EAGLE_INDEX_CACHE/weights`, default
`~/.cache/eagle-index/weights`), then — only when asked (`eagle-index models download`, or
`download=True`) — the Hugging Face hub. Nothing here touches the network at import time, and
nothing here reads the environment: cache folder, hub repos, token and the digest-mismatch
switch come from the `Settings` each function is given (`eagle_index/config.py`).

Digests are SHA-256 of the file, checked on every load; hashing a 2.5 GB file takes seconds,
so results are remembered in the cache folder keyed by path, size and mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Literal

from eagle_index.config import ENV_ALLOW_MISMATCH, ENV_CACHE, ENV_HF_TOKEN, ENV_HUB_PREFIX  # noqa: F401 - names for messages (and tests)
from eagle_index.errors import ModelError
from eagle_index.models.registry import ModelSpec

if TYPE_CHECKING:
    from eagle_index.config import Settings

DIGEST_CACHE_FILE = "digests.json"

Origin = Literal["weights-dir", "cache", "generated", "missing"]


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face repo holding a model's files (single-file models name the file)."""

    repo: str
    filename: str | None = None

    def __str__(self) -> str:
        return f"hf://{self.repo}" + (f"/{self.filename}" if self.filename else "")


def hub_source(spec: ModelSpec, settings: "Settings") -> HubSource | None:
    """The hub repo for a model: `settings.hub_repos` (env `EAGLE_INDEX_HUB_<ID>`, `owner/repo[:file]`) or the spec's own."""
    value = settings.hub_repos.get(spec.id, "").strip()
    if value:
        repo, _, filename = value.partition(":")
        if repo.count("/") != 1:
            raise ModelError(f"{ENV_HUB_PREFIX + spec.id.upper()}={value!r}: expected 'owner/repo' or 'owner/repo:file'")
        return HubSource(repo, filename or None)
    if spec.hub_repo:
        return HubSource(spec.hub_repo)
    return None


@dataclass(frozen=True)
class WeightsLocation:
    """The outcome of looking for one model's weights."""

    spec: ModelSpec
    path: Path | None
    origin: Origin
    searched: tuple[Path, ...]
    hub: HubSource | None

    @property
    def found(self) -> bool:
        return self.origin != "missing"

    def describe(self) -> str:
        """One line for `models info`: the path, 'generated', or what is missing and from where."""
        if self.origin == "generated":
            return f"generated (seed {self.spec.seed})"
        if self.path is not None:
            return str(self.path)
        return f"missing: {self.spec.weights_file} from {self.where_from()}"

    def where_from(self) -> str:
        if self.hub is not None:
            gated = " (gated: accept the terms on the hub, set HF_TOKEN)" if self.spec.gated else ""
            return f"{self.hub}{gated}, via `eagle-index models download`"
        return self.spec.source + (f" <{self.spec.source_url}>" if self.spec.source_url else "")

    def missing_message(self) -> str:
        looked = ", ".join(str(p) for p in self.searched) or "(no folder)"
        return f"{self.spec.name}: {self.spec.weights_file} — get it from {self.where_from()}; looked in {looked}"


def search_dirs(spec: ModelSpec, settings: "Settings") -> tuple[Path, ...]:
    """Folders to search, in order. The tiny preset only reads an explicit weights folder."""
    dirs: list[Path] = []
    if settings.weights_dir is not None:
        dirs.append(Path(settings.weights_dir).expanduser())
    if spec.preset == "default":
        dirs.append(settings.weights_cache_dir)
    return tuple(dirs)


def locate(spec: ModelSpec, settings: "Settings") -> WeightsLocation:
    """Find a model's weights file without loading or hashing it."""
    dirs = search_dirs(spec, settings)
    hub = hub_source(spec, settings) if spec.preset == "default" else None
    for i, folder in enumerate(dirs):
        for rel in spec.candidate_files:
            candidate = folder / rel
            if candidate.is_file():
                origin: Origin = "weights-dir" if settings.weights_dir is not None and i == 0 else "cache"
                return WeightsLocation(spec, candidate, origin, dirs, hub)
    if spec.generated:
        return WeightsLocation(spec, None, "generated", dirs, None)
    return WeightsLocation(spec, None, "missing", dirs, hub)


def require_all(locations: Iterable[WeightsLocation]) -> None:
    """Raise one error naming every missing file and where it comes from."""
    missing = [loc for loc in locations if not loc.found]
    if missing:
        lines = "\n".join(f"  - {loc.missing_message()}" for loc in missing)
        raise ModelError(
            f"model weights not found ({len(missing)} missing):\n{lines}\n"
            "Put the files in --weights-dir / EAGLE_INDEX_WEIGHTS (layout: ctranspath.pth, "
            "CHIEF_pretraining.pth, virchow2/{config.json,pytorch_model.bin}), or use --models tiny for a demo."
        )


# ---------------------------------------------------------------- digests


def _hash_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _read_digest_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_digest_cache(target: Path, data: dict) -> None:
    """Best effort (a read-only cache only costs a re-hash); atomic via temp + replace."""
    try:
        from eagle_index.atomic import atomic_write_text

        atomic_write_text(target, json.dumps(data, indent=1, sort_keys=True))
    except OSError:
        pass


def file_sha256(path: Path, *, cache_dir: Path | None = None) -> str:
    """SHA-256 of a file, remembered in `cache_dir/digests.json` (None: not remembered) by
    (resolved path, size, mtime_ns). Loading passes `settings.weights_cache_dir`."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    stamp = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = Path(cache_dir) / DIGEST_CACHE_FILE if cache_dir is not None else None
    if cache is not None:
        entry = _read_digest_cache(cache).get(key)
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in stamp.items()) and entry.get("sha256"):
            return str(entry["sha256"])
    digest = _hash_file(path)
    if cache is not None:
        data = _read_digest_cache(cache)
        data[key] = {**stamp, "sha256": digest}
        _write_digest_cache(cache, data)
    return digest


@dataclass(frozen=True)
class DigestCheck:
    actual: str
    expected: str | None

    @property
    def pinned(self) -> bool:
        return self.expected is not None

    @property
    def ok(self) -> bool:
        return self.expected is None or self.actual == self.expected


def check_digest(spec: ModelSpec, path: Path, *, allow_mismatch: bool = False, cache_dir: Path | None = None) -> DigestCheck:
    """Hash the file (remembered under `cache_dir`) and compare with the pinned digest; a mismatch is an error unless allowed."""
    check = DigestCheck(file_sha256(path, cache_dir=cache_dir), spec.digest)
    if not check.ok and not allow_mismatch:
        raise ModelError(
            f"{spec.name}: {path} has SHA-256 {check.actual}, expected {check.expected}. "
            f"It is not the official {spec.weights_file}; set {ENV_ALLOW_MISMATCH}=1 to use it anyway "
            "(its vectors then get their own signature)."
        )
    return check


# ---------------------------------------------------------------- hub download


def download(spec: ModelSpec, settings: "Settings", *, token: str | None = None, force: bool = False) -> Path:
    """Fetch a model's files from the hub into the weights folder (or the cache); return the weights path.

    Needs network access, and for gated repos (Virchow2) a token that has been granted access
    (`token`, else `settings.hf_token`: env `HF_TOKEN`). Errors are translated into one clear `ModelError`.
    """
    hub = hub_source(spec, settings)
    dest_root = Path(settings.weights_dir).expanduser() if settings.weights_dir is not None else settings.weights_cache_dir
    if hub is None:
        raise ModelError(
            f"{spec.name} is not on the Hugging Face hub: download {spec.weights_file} from "
            f"{spec.source}{f' <{spec.source_url}>' if spec.source_url else ''} and put it in {dest_root}, "
            f"or point {ENV_HUB_PREFIX + spec.id.upper()}=owner/repo[:file] at a copy on the hub."
        )
    target = dest_root / spec.weights_file
    present = [dest_root / rel for rel in spec.candidate_files if (dest_root / rel).is_file()]
    if present and not force:
        return present[0]
    token = token or settings.hf_token or None
    if hub.filename:  # a single file, saved under our file name
        _fetch(hub.repo, hub.filename, target, token, spec)
        return target
    # A model folder (Virchow2): config first (small, fails fast on access problems), then weights.
    if spec.config_file:
        _fetch(hub.repo, Path(spec.config_file).name, dest_root / spec.config_file, token, spec)
    for rel in spec.candidate_files:
        try:
            _fetch(hub.repo, Path(rel).name, dest_root / rel, token, spec, missing_ok=True)
            return dest_root / rel
        except FileNotFoundError:
            continue
    raise ModelError(f"{spec.name}: {hub.repo} has none of {', '.join(Path(r).name for r in spec.candidate_files)}")


def _fetch(repo: str, filename: str, target: Path, token: str | None, spec: ModelSpec, missing_ok: bool = False) -> None:
    """Download one file via a temporary folder next to the target, then move it into place."""
    try:
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError("huggingface_hub is not installed; cannot download weights") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        try:
            got = huggingface_hub.hf_hub_download(repo_id=repo, filename=filename, token=token, local_dir=tmp_dir)
        except hf_errors.GatedRepoError as exc:
            raise ModelError(
                f"{spec.name}: {repo} is gated. Accept its terms at https://huggingface.co/{repo} with your account, "
                f"then set {ENV_HF_TOKEN} to a token of that account ({type(exc).__name__})."
            ) from exc
        except hf_errors.RepositoryNotFoundError as exc:
            raise ModelError(f"{spec.name}: hub repo {repo} not found or not accessible with the given token") from exc
        except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled, ConnectionError) as exc:
            raise _unreachable(spec, repo, filename, target, exc) from exc
        except _remote_missing_error(hf_errors) as exc:
            if missing_ok:
                raise FileNotFoundError(f"{repo}/{filename}") from exc
            raise ModelError(f"{spec.name}: {repo} has no file {filename}") from exc
        except OSError as exc:  # HTTP errors and other I/O failures of the hub client
            raise _unreachable(spec, repo, filename, target, exc) from exc
        os.replace(got, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _remote_missing_error(hf_errors) -> type[Exception]:
    """The hub's 'no such file in the repo' error (its name changed across huggingface_hub versions)."""
    return getattr(hf_errors, "RemoteEntryNotFoundError", hf_errors.EntryNotFoundError)


def _unreachable(spec: ModelSpec, repo: str, filename: str, target: Path, exc: Exception) -> ModelError:
    return ModelError(
        f"{spec.name}: cannot download {filename} from https://huggingface.co/{repo} "
        f"(no network, or the hub refused the request: {type(exc).__name__}: {exc}). "
        f"Copy the file to {target} by other means."
    )
