"""One typed settings object, validated once and passed whole.

Values come from (highest first): explicit arguments (CLI options), environment variables
(`EAGLE_INDEX_DATA`, `EAGLE_INDEX_WEIGHTS`, `EAGLE_INDEX_DEVICE`, `EAGLE_INDEX_ALLOWED_HOSTS`,
`EAGLE_INDEX_DCT_DECODE`), then defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_DATA_DIR = "EAGLE_INDEX_DATA"
ENV_WEIGHTS_DIR = "EAGLE_INDEX_WEIGHTS"
ENV_DEVICE = "EAGLE_INDEX_DEVICE"
ENV_TILE_QUALITY = "EAGLE_INDEX_TILE_QUALITY"
ENV_TILE_CACHE_MB = "EAGLE_INDEX_TILE_CACHE_MB"
ENV_ALLOWED_HOSTS = "EAGLE_INDEX_ALLOWED_HOSTS"
ENV_DCT_DECODE = "EAGLE_INDEX_DCT_DECODE"


class TilingSettings(BaseModel):
    """How a slide becomes tiles (EAGLE defaults: 224 px at 2.0 µm/px = 448 µm)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_mpp: float = Field(2.0, gt=0, description="µm per pixel of the tiles the models see")
    tile_px: int = Field(224, gt=0, description="tile side in pixels at target_mpp")
    canny_low: int = Field(40, ge=0)
    canny_high: int = Field(100, ge=0)
    min_edge_ratio: float = Field(0.02, ge=0, le=1, description="keep a tile with at least this fraction of Canny edge pixels")
    default_mpp: float | None = Field(None, gt=0, description="µm/px used when a slide records none (last resort)")
    read_threads: int = Field(4, ge=1)
    dct_scaled_decode: bool = Field(
        False, description="decode JPEG tiles at 1/2, 1/4 or 1/8 scale in the inverse DCT when the read level is exactly "
                           "that much finer than target_mpp (TIFF/SVS JPEG levels only; see docs/pipeline.md)")

    @property
    def tile_um(self) -> float:
        return self.target_mpp * self.tile_px


class EagleSettings(BaseModel):
    """Parameters of the EAGLE aggregation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    top_k: int = Field(25, ge=1, description="tiles per patient whose Virchow2 class tokens are averaged")


class IndexSettings(BaseModel):
    """FAISS vector index choices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["auto", "flat", "ivf", "hnsw"] = Field(
        "auto", description="flat: exact; ivf: IVF + 4-bit PQ + exact re-ranking; hnsw; auto: flat, ivf above approximate_above")
    approximate_above: int = Field(50_000, ge=1, description="'auto' switches from exact to IVF above this many vectors")
    ivf_nlist: int | None = Field(None, ge=1, description="IVF k-means lists; None = about sqrt(N), at least 16")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists searched per query")
    ivf_refine_k_factor: int = Field(128, ge=1, description="IVF candidates re-ranked exactly per query: this times k")
    ivf_pq_dims_per_code: int = Field(4, ge=1, description="vector dimensions per 4-bit PQ code (1280-d: 320 codes, 160 bytes)")
    ivf_train_per_list: int = Field(50, ge=39, description="IVF training sample: this many vectors per list (a sample of the set)")
    hnsw_m: int = Field(32, ge=4)
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(64, ge=8)


class ViewerSettings(BaseModel):
    """The slide viewer's Deep Zoom tiles (env EAGLE_INDEX_TILE_QUALITY, EAGLE_INDEX_TILE_CACHE_MB)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    jpeg_quality: int = Field(80, ge=1, le=100, description="JPEG quality of viewer tiles")
    tile_size: int = Field(254, ge=64, le=2048, description="Deep Zoom tile side in px (254 + 2 x 1 overlap = 256)")
    overlap: int = Field(1, ge=0, le=16, description="Deep Zoom tile overlap in px")
    cache_mb: int = Field(1024, ge=0, description="size cap of DATA/cache/dzi in MiB (least recently used tiles go first; 0: no disk cache)")
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
    index: IndexSettings = IndexSettings()
    viewer: ViewerSettings = ViewerSettings()
    allowed_hosts: tuple[str, ...] = Field(
        (), description="host names a token-less server answers to besides 127.0.0.1, localhost, [::1] and its bound "
                        "address (DNS-rebinding defence); env EAGLE_INDEX_ALLOWED_HOSTS, comma-separated")

    @field_validator("data_dir", "weights_dir")
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
        from eagle_index.models.registry import PRESETS

        value = "default" if value == "real" else value
        if value not in PRESETS:
            raise ValueError(f"unknown model preset {value!r} (one of: real, {', '.join(PRESETS)})")
        return value

    @classmethod
    def load(cls, **overrides: Any) -> "Settings":
        """Build settings from environment variables, then explicit overrides (None = not given)."""
        values: dict[str, Any] = {}
        if os.environ.get(ENV_DATA_DIR):
            values["data_dir"] = Path(os.environ[ENV_DATA_DIR])
        if os.environ.get(ENV_WEIGHTS_DIR):
            values["weights_dir"] = Path(os.environ[ENV_WEIGHTS_DIR])
        if os.environ.get(ENV_DEVICE):
            values["device"] = os.environ[ENV_DEVICE]
        viewer = _viewer_env()
        if viewer is not None:
            values["viewer"] = viewer
        if os.environ.get(ENV_ALLOWED_HOSTS):
            values["allowed_hosts"] = tuple(h.strip() for h in os.environ[ENV_ALLOWED_HOSTS].split(",") if h.strip())
        dct = _flag_env(ENV_DCT_DECODE)
        if dct is not None:
            values["tiling"] = TilingSettings(dct_scaled_decode=dct)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

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
