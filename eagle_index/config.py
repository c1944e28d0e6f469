"""One typed settings object, validated once and passed whole.

Values come from (highest first): explicit arguments (CLI options), environment variables,
then defaults. This is the only module that reads the environment (`tests/test_settings_env.py`
walks the source): `Settings.load()` reads every variable once (table: docs/environment.md) and
names the variable and its value when one is invalid; everything downstream gets the values
from the settings object it is handed. `debug_tracebacks()` is the one read outside
`Settings`: the CLI's last-resort error handler must work when the settings themselves fail.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from eagle_index.model_names import MODEL_IDS, PRESETS

ENV_DATA_DIR = "EAGLE_INDEX_DATA"
ENV_WEIGHTS_DIR = "EAGLE_INDEX_WEIGHTS"
ENV_DEVICE = "EAGLE_INDEX_DEVICE"
ENV_TILE_QUALITY = "EAGLE_INDEX_TILE_QUALITY"
ENV_TILE_CACHE_MB = "EAGLE_INDEX_TILE_CACHE_MB"
ENV_ALLOWED_HOSTS = "EAGLE_INDEX_ALLOWED_HOSTS"
ENV_CACHE = "EAGLE_INDEX_CACHE"
ENV_XDG_CACHE = "XDG_CACHE_HOME"
ENV_ALLOW_MISMATCH = "EAGLE_INDEX_ALLOW_DIGEST_MISMATCH"
ENV_HUB_PREFIX = "EAGLE_INDEX_HUB_"  # + model id in upper case, e.g. EAGLE_INDEX_HUB_CTRANSPATH=owner/repo[:file]
ENV_HF_TOKEN = "HF_TOKEN"
ENV_TOKEN = "EAGLE_INDEX_TOKEN"
ENV_LOG = "EAGLE_INDEX_LOG"
ENV_MAX_UPLOAD_MB = "EAGLE_INDEX_MAX_UPLOAD_MB"
ENV_DEBUG = "EAGLE_INDEX_DEBUG"
ENV_STALE_FILE_SECONDS = "EAGLE_INDEX_STALE_FILE_SECONDS"  # issue 24 item 9: start-up cleanup's age threshold

DEFAULT_MAX_UPLOAD_MB = 4096  # whole-slide images are large; JSON bodies have their own, small limit
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
ENV_DCT_DECODE = "EAGLE_INDEX_DCT_DECODE"
ENV_SEARCH_BATCH_MS = "EAGLE_INDEX_SEARCH_BATCH_MS"
ENV_INDEX_TYPE = "EAGLE_INDEX_INDEX_TYPE"  # the FAISS index type of every patient and tile index
ENV_IVF_REFINE_K_FACTOR = "EAGLE_INDEX_IVF_REFINE_K_FACTOR"  # the ivf type's re-ranking depth: recall against speed
ENV_LEAN_ABOVE = "EAGLE_INDEX_LEAN_ABOVE"  # issue 20 item 2: 'auto' indexes go memory-lean above this many vectors
ENV_READ_LEASE = "EAGLE_INDEX_READ_LEASE_S"  # issue 24 item 3: how long a slide's reads may take
ENV_READ_LEASE_PER_GB = "EAGLE_INDEX_READ_LEASE_PER_GB_S"


class TilingSettings(BaseModel):
    """How a slide becomes tiles (EAGLE defaults: 224 px at 2.0 µm/px = 448 µm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_mpp: float = Field(2.0, gt=0, description="µm per pixel of the tiles the models see")
    tile_px: int = Field(224, gt=0, description="tile side in pixels at target_mpp")
    canny_low: int = Field(40, ge=0)
    canny_high: int = Field(100, ge=0)
    min_edge_ratio: float = Field(0.02, ge=0, le=1, description="keep a tile with at least this fraction of Canny edge pixels")
    default_mpp: float | None = Field(None, gt=0, description="µm/px used when a slide records none (last resort)")
    read_threads: int = Field(4, ge=1, description="reader threads when read_workers is 0 (the in-process reader)")
    read_workers: int | None = Field(
        None, ge=0, description="reader processes (slides/pool.py); None: one per core; 0: threads in this process")
    prefetch_slides: int = Field(2, ge=0, description="slides read ahead while one is embedded (reader processes only)")
    read_buffer_mb: int = Field(512, ge=16, description="shared memory for tiles read ahead (bounds the prefetch)")
    dct_scaled_decode: bool = Field(
        False, description="decode JPEG tiles at 1/2, 1/4 or 1/8 scale in the inverse DCT when the read level is exactly "
                           "that much finer than target_mpp (TIFF/SVS JPEG levels only; see docs/pipeline.md)")
    read_lease_s: float = Field(
        600.0, gt=0, description="a slide's read lease, seconds: the time the embedding may wait for its tiles before "
                                 "the read is abandoned (reader processes restarted, the job failed); env EAGLE_INDEX_READ_LEASE_S")
    read_lease_per_gb_s: float = Field(
        600.0, ge=0, description="seconds added to the read lease per GB of slide file; env EAGLE_INDEX_READ_LEASE_PER_GB_S")

    @property
    def tile_um(self) -> float:
        return self.target_mpp * self.tile_px

    def read_lease(self, size_bytes: int) -> float:
        """Seconds a slide of `size_bytes` may keep its embedding waiting for tiles (issue 24 item 3)."""
        return self.read_lease_s + self.read_lease_per_gb_s * max(0, size_bytes) / 1e9


class EagleSettings(BaseModel):
    """Parameters of the EAGLE aggregation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(25, ge=1, description="tiles per patient whose Virchow2 class tokens are averaged")


class InferenceSettings(BaseModel):
    """How the tile encoders run. Only `precision` changes vectors (and is signed)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="fp32: the reference; bf16: CTransPath under bf16 autocast (own signature; Virchow2 keeps fp16 on CUDA)")
    gpu_batch: int | None = Field(None, ge=1, description="CTransPath batch on CUDA; None: chosen from free GPU memory")


class IndexSettings(BaseModel):
    """FAISS vector index choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # the index *type*: "kind" names a vector kind (eagle, chief, ...) everywhere else; still accepted here
    type: Literal["auto", "flat", "ivf", "hnsw", "lean"] = Field(
        "auto", validation_alias=AliasChoices("type", "kind"), description="flat: exact; ivf: IVF + 4-bit PQ + exact re-ranking; hnsw; lean: IVF + 4-bit PQ codes in RAM, "
        "exact re-ranking from int16 fixed-point vectors memory-mapped from disk (store/lean_index.py); auto: flat, ivf above "
        "approximate_above, lean above lean_above")
    approximate_above: int = Field(50_000, ge=1, description="'auto' switches from exact to IVF above this many vectors")
    lean_above: int | None = Field(None, ge=1, description="'auto' switches to the lean index above this many vectors; "
                                   "None (default): never - the lean type is opt-in (issue 20 item 2)")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF k-means lists; None = about sqrt(N), at least 16")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists searched per query")
    ivf_refine_k_factor: int = Field(128, ge=1, description="IVF candidates re-ranked exactly per query: this times k")
    lean_refine_k_factor: int = Field(320, ge=1, description="lean index: PQ candidates re-ranked from the refine file per "
                                      "query, this times k (at 5M vectors 2,560 candidates keep recall@10 0.948, 3,200 0.954)")
    lean_warm_fraction: float = Field(0.25, ge=0, le=1, description="a lean index whose refine file is at most this share of "
                                      "the machine's memory is read into memory in the background when opened (re-ranking "
                                      "then takes no page faults); 0: never")
    ivf_pq_dims_per_code: int = Field(4, ge=1, description="vector dimensions per 4-bit PQ code (1280-d: 320 codes, 160 bytes)")
    ivf_train_per_list: int = Field(50, ge=39, description="IVF training sample: this many vectors per list (a sample of the set)")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(64, ge=8)
    search_batch_ms: float = Field(
        1.0, ge=0, le=100, description="single-query searches of one index arriving while another runs are gathered "
                                       "this long into one FAISS call (store/batching.py); 0: off; env "
                                       "EAGLE_INDEX_SEARCH_BATCH_MS")


class ViewerSettings(BaseModel):
    """The slide viewer's Deep Zoom tiles (env EAGLE_INDEX_TILE_QUALITY, EAGLE_INDEX_TILE_CACHE_MB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of viewer tiles")
    tile_size: int = Field(254, ge=64, le=2048, description="Deep Zoom tile side in px (254 + 2 x 1 overlap = 256)")
    overlap: int = Field(1, ge=0, le=16, description="Deep Zoom tile overlap in px")
    cache_mb: int = Field(1024, ge=0, description="size cap in MiB of the one image cache, DATA/cache/{dzi,thumbnails,tiles,uploads} "
                                                 "(least recently used images go first; 0: no disk cache)")
    open_slides: int = Field(16, ge=1, description="slides kept open for the viewer (least recently used are dropped)")


def _viewer_env() -> ViewerSettings | None:
    """Viewer settings from EAGLE_INDEX_TILE_QUALITY / EAGLE_INDEX_TILE_CACHE_MB (a bad value: InputError naming it)."""
    from pydantic import ValidationError

    from eagle_index.errors import InputError

    values = {}
    for key, env in (("jpeg_quality", ENV_TILE_QUALITY), ("cache_mb", ENV_TILE_CACHE_MB)):
        raw = os.environ.get(env, "").strip()
        if not raw:
            continue
        try:
            values[key] = int(raw)
            ViewerSettings(**{key: values[key]})
        except (ValueError, ValidationError):
            limits = "1 to 100" if key == "jpeg_quality" else "0 or more"
            raise InputError(f"{env}={raw!r}: expected an integer, {limits}") from None
    return ViewerSettings(**values) if values else None


def _env_error(name: str, raw: str, expected: str):
    from eagle_index.errors import InputError

    return InputError(f"{name}={raw!r}: expected {expected}")


def _hub_repo_ok(value: str) -> bool:
    """'owner/repo' or 'owner/repo:path/in/repo'."""
    repo, _, _ = value.partition(":")
    return repo.count("/") == 1 and all(part.strip() for part in repo.split("/"))


def _environment() -> dict[str, Any]:
    """Every Settings value the environment gives (only variables that are set), checked.

    A bad value raises `InputError` naming the variable and the value, so the CLI prints one
    line and exits non-zero.
    """
    env = os.environ
    values: dict[str, Any] = {}
    if env.get(ENV_DATA_DIR):
        values["data_dir"] = Path(env[ENV_DATA_DIR])
    if env.get(ENV_WEIGHTS_DIR):
        values["weights_dir"] = Path(env[ENV_WEIGHTS_DIR])
    if env.get(ENV_DEVICE):
        values["device"] = env[ENV_DEVICE]
    viewer = _viewer_env()
    if viewer is not None:
        values["viewer"] = viewer
    if env.get(ENV_ALLOWED_HOSTS):
        values["allowed_hosts"] = tuple(h.strip() for h in env[ENV_ALLOWED_HOSTS].split(",") if h.strip())
    if env.get(ENV_CACHE):
        values["cache_dir"] = Path(env[ENV_CACHE])
    elif env.get(ENV_XDG_CACHE):
        values["cache_dir"] = Path(env[ENV_XDG_CACHE]) / "eagle-index"
    raw = env.get(ENV_ALLOW_MISMATCH)
    if raw is not None:
        if raw.strip().lower() not in _TRUE + _FALSE:
            raise _env_error(ENV_ALLOW_MISMATCH, raw, "1/true/yes/on or 0/false/no/off")
        values["allow_digest_mismatch"] = raw.strip().lower() in _TRUE
    hub = {}
    for model_id in MODEL_IDS:
        name = ENV_HUB_PREFIX + model_id.upper()
        raw = env.get(name, "")
        if raw.strip():
            if not _hub_repo_ok(raw.strip()):
                raise _env_error(name, raw, "'owner/repo' or 'owner/repo:file'")
            hub[model_id] = raw.strip()
    if hub:
        values["hub_repos"] = hub
    if env.get(ENV_HF_TOKEN):
        values["hf_token"] = env[ENV_HF_TOKEN]
    if env.get(ENV_TOKEN):
        problem = token_characters_problem(env[ENV_TOKEN])  # issue 24 item 11: a newline must not reach a header
        if problem:
            raise _token_error(problem)
        values["token"] = env[ENV_TOKEN]  # its length is checked where it is used (serve refuses a short one)
    raw = env.get(ENV_STALE_FILE_SECONDS, "")
    if raw.strip():
        try:
            values["stale_file_seconds"] = float(raw)
        except ValueError:
            raise _env_error(ENV_STALE_FILE_SECONDS, raw, "a number of seconds, 1 or more") from None
        if not values["stale_file_seconds"] >= 1 or values["stale_file_seconds"] == float("inf"):
            raise _env_error(ENV_STALE_FILE_SECONDS, raw, "a number of seconds, 1 or more")
    raw = env.get(ENV_LOG, "")
    if raw.strip():
        if raw.strip().upper() not in LOG_LEVELS:
            raise _env_error(ENV_LOG, raw, f"a log level: {', '.join(LOG_LEVELS)}")
        values["log_level"] = raw.strip().upper()
    raw = env.get(ENV_MAX_UPLOAD_MB, "")
    if raw.strip():
        try:
            values["max_upload_mb"] = int(raw)
        except ValueError:
            raise _env_error(ENV_MAX_UPLOAD_MB, raw, "a whole number of MiB, 1 or more") from None
        if values["max_upload_mb"] < 1:
            raise _env_error(ENV_MAX_UPLOAD_MB, raw, "a whole number of MiB, 1 or more")
    from pydantic import ValidationError

    tiling: dict[str, Any] = {}
    dct = _flag_env(ENV_DCT_DECODE)
    if dct is not None:
        tiling["dct_scaled_decode"] = dct
    for key, name, least in (("read_lease_s", ENV_READ_LEASE, "more than 0"),
                             ("read_lease_per_gb_s", ENV_READ_LEASE_PER_GB, "0 or more")):
        raw = env.get(name, "").strip()
        if raw:
            try:
                tiling[key] = float(raw)
                TilingSettings(**{key: tiling[key]})
            except (ValueError, ValidationError):
                raise _env_error(name, raw, f"a number of seconds, {least}") from None
    if tiling:
        values["tiling"] = TilingSettings(**tiling)
    index: dict = {}
    for key, name, parse, expected in (
            ("search_batch_ms", ENV_SEARCH_BATCH_MS, float, "milliseconds from 0 (off) to 100"),
            ("type", ENV_INDEX_TYPE, str.lower, "one of auto, flat, ivf, hnsw, lean"),
            ("lean_above", ENV_LEAN_ABOVE, int, "a whole number of vectors, 1 or more"),
            ("ivf_refine_k_factor", ENV_IVF_REFINE_K_FACTOR, int, "a whole number, 1 or more (candidates re-ranked per hit asked)")):
        raw = env.get(name, "").strip()
        if raw:
            try:
                index[key] = getattr(IndexSettings(**{key: parse(raw)}), key)
            except (ValueError, ValidationError):
                raise _env_error(name, raw, expected) from None
    if index:
        values["index"] = IndexSettings(**index)
    return values


def token_characters_problem(token: str) -> str | None:
    """Why a token cannot be used (it travels in an HTTP header), or None. Never quotes the token."""
    for position, char in enumerate(token, 1):
        if char in "\r\n":
            return f"holds a line break (character {position})"
        if not " " <= char <= "~":
            kind = "a control character" if ord(char) < 32 or 127 <= ord(char) < 160 else "a non-ASCII character"
            return f"holds {kind} (character {position})"
    return None


def _token_error(problem: str):
    from eagle_index.errors import InputError

    return InputError(f"{ENV_TOKEN} {problem}: a token is printable ASCII on one line, e.g. from "
                      f"python -c 'import secrets; print(secrets.token_urlsafe(24))'")


def default_cache_dir() -> Path:
    """The cache when neither EAGLE_INDEX_CACHE nor XDG_CACHE_HOME is set: ~/.cache/eagle-index of
    the user running the process (resolved where it is used, e.g. on a Ray worker's node)."""
    return Path.home() / ".cache" / "eagle-index"


def debug_tracebacks() -> bool:
    """EAGLE_INDEX_DEBUG set (to anything): the CLI re-raises unexpected errors with their traceback.

    Read here, not through `Settings`, because it must work when building the settings failed.
    """
    return bool(os.environ.get(ENV_DEBUG))


def _flag_env(env: str) -> bool | None:
    """A 0/1 switch from the environment (unset or empty: None; anything else: InputError naming it)."""
    from eagle_index.errors import InputError

    raw = os.environ.get(env, "").strip().lower()
    if not raw:
        return None
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise InputError(f"{env}={raw!r}: expected 1 or 0")


class Settings(BaseModel):
    """Everything a run of eagle-index needs to know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: Path = Path("./eagle-data")
    weights_dir: Path | None = None
    device: str = "auto"
    models: str = Field("default", description="model preset: 'default' (official weights) or 'tiny' (random, tests/demo)")
    tiling: TilingSettings = TilingSettings()
    eagle: EagleSettings = EagleSettings()
    inference: InferenceSettings = InferenceSettings()
    index: IndexSettings = IndexSettings()
    viewer: ViewerSettings = ViewerSettings()
    allowed_hosts: tuple[str, ...] = Field(
        (), description="host names a token-less server answers to besides 127.0.0.1, localhost, [::1] and its bound "
                        "address (DNS-rebinding defence); env EAGLE_INDEX_ALLOWED_HOSTS, comma-separated")
    cache_dir: Path | None = Field(
        None, description="eagle-index's cache (downloaded weights, digests: <cache>/weights); env EAGLE_INDEX_CACHE, "
                          "else $XDG_CACHE_HOME/eagle-index; None: ~/.cache/eagle-index of whoever uses it")
    allow_digest_mismatch: bool = Field(
        False, description="load weights whose SHA-256 is not the pinned one (their vectors get their own signature); "
                           "env EAGLE_INDEX_ALLOW_DIGEST_MISMATCH=1")
    hub_repos: dict[str, str] = Field(
        default_factory=dict, description="model id -> 'owner/repo[:file]' on the Hugging Face hub, instead of the "
                                          "registry's; env EAGLE_INDEX_HUB_<ID>")
    hf_token: str | None = Field(None, repr=False, description="Hugging Face token for gated repos (Virchow2); env HF_TOKEN")
    token: str | None = Field(None, repr=False, description="the server's access token (serve/daemon) and the one "
                                                              "commands send to a running server; env EAGLE_INDEX_TOKEN")
    log_level: str | None = Field(None, description="log level of serve/daemon/backfill/demo; env EAGLE_INDEX_LOG; "
                                                    "None: the command's default")
    max_upload_mb: int = Field(DEFAULT_MAX_UPLOAD_MB, ge=1, description="web upload limit in MiB; env EAGLE_INDEX_MAX_UPLOAD_MB")
    stale_file_seconds: float = Field(
        60.0, ge=1, allow_inf_nan=False, description="start-up cleanup (housekeeping.py) deletes leftovers of killed runs "
                                                     "older than this; env EAGLE_INDEX_STALE_FILE_SECONDS")

    @field_validator("hub_repos")
    @classmethod
    def _hub_repos(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [f"{k}={v!r}" for k, v in value.items() if not _hub_repo_ok(v)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: expected 'owner/repo' or 'owner/repo:file'")
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in LOG_LEVELS:
            raise ValueError(f"log level {value!r}: expected one of {', '.join(LOG_LEVELS)}")
        return value.upper() if value is not None else None

    @field_validator("data_dir", "weights_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        """Resolve a path once, against the working directory of the command that built the settings.

        Nothing downstream may resolve it again against another folder (Flask resolves relative
        paths against the `web/` package: `make demo`'s `--data-dir ./demo-data` broke every image).
        """
        if value is None:
            return None
        return Path(os.path.abspath(os.path.expanduser(str(value))))

    @field_validator("models")
    @classmethod
    def _preset_alias(cls, value: str) -> str:
        """'real' is accepted as another name for the official-weights preset; others must be registered."""
        value = "default" if value == "real" else value
        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r} (one of: real, {', '.join(PRESETS)})")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Build settings from environment variables, then explicit overrides (None = not given)."""
        values = _environment()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def weights_cache_dir(self) -> Path:
        """Where downloaded weights and the digest cache live: `<cache_dir>/weights`."""
        return (self.cache_dir or default_cache_dir()) / "weights"

    def with_throughput(self, read_workers: int | None = None, precision: str | None = None) -> "Settings":
        """A copy with the reader processes and/or precision a command line asked for (validated)."""
        tiling, inference = self.tiling, self.inference
        if read_workers is not None:
            tiling = TilingSettings(**{**tiling.model_dump(), "read_workers": read_workers})
        if precision is not None:
            inference = InferenceSettings(**{**inference.model_dump(), "precision": precision})
        return self.model_copy(update={"tiling": tiling, "inference": inference})

    def without_secrets(self) -> "Settings":
        """A copy for processes that must not hold the tokens (Ray workers)."""
        return self.model_copy(update={"token": None, "hf_token": None})

    @property
    def catalog_path(self) -> Path:
        return self.data_dir / "catalog.duckdb"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"

    @property
    def catalog_url(self) -> str:
        return f"duckdb:///{self.catalog_path.resolve()}"

    def resolved_device(self) -> str:
        """'auto' means CUDA when present, else CPU (imports torch only when asked)."""
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
