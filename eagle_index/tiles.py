"""One tile value: a 224 px tile of a slide at 2 µm/px, as every service hands it out.

A tile is where it lies (the slide, its top-left corner in µm: the artifacts' units) and its raw
CHIEF attention, plus what the asker knows of it: its rank among the patient's selected tiles
(the ones its EAGLE vector averages; 1 = highest attention) or among its slide's candidates, its
position in the slide's level-0 pixels (when the slide records µm/px), its cosine to a query
(region search), whether the slide's file is on this server, and the stored row it came from.

The JSON shapes are contracts of the API, one per use; each is a projection below, so one value
type serves the media routes, the viewer, region search and the tile store alike.
A patient's whole selection with its class tokens (for matching tiles) is `search.TileSelection`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Tile:
    slide: str
    x_um: float
    y_um: float
    attention: float = 0.0
    slide_id: int | None = None  # the catalogued slide it lies in (None: embedded on the fly, or not catalogued)
    patient_rank: int | None = None  # among its patient's selected tiles, 1 = highest attention
    slide_rank: int | None = None  # among its slide's candidates, 1 = highest attention
    x_px: float | None = None  # level-0 pixels (None: the slide records no µm/px)
    y_px: float | None = None
    size_px: float | None = None
    score: float | None = None  # cosine with a region query
    has_file: bool = False  # the slide's file is on this server, so the tile has an image (web/urls.py makes its URL)
    id: int | None = None  # its stored row (store/tiles_repo.py)
    patient_id: int | None = None
    patient: str | None = None

    def in_pixels(self, mpp: float | None, tile_um: float) -> "Tile":
        """This tile with its level-0 pixel position and size for a slide of `mpp` µm/px (None: unknown)."""
        if not mpp:
            return replace(self, x_px=None, y_px=None, size_px=None)
        return replace(self, x_px=round(self.x_um / mpp, 3), y_px=round(self.y_um / mpp, 3), size_px=round(tile_um / mpp, 3))

    def same_place(self, other: "Tile", tolerance_um: float = 0.5) -> bool:
        return self.slide == other.slide and abs(self.x_um - other.x_um) < tolerance_um and abs(self.y_um - other.y_um) < tolerance_um

    # -- the API's shapes -----------------------------------------------------------------------------
    def selected_dict(self) -> dict:
        """A patient's selected tile (`GET /api/v1/patients/<id>`'s `tiles`)."""
        return {"rank": self.patient_rank, "slide": self.slide, "slide_id": self.slide_id, "x_um": self.x_um,
                "y_um": self.y_um, "attention": self.attention}

    def position_dict(self) -> dict:
        """A slide's tile or candidate (`GET /api/v1/slides/<id>`'s `tiles`, `candidates`): rank only for candidates."""
        out = {"rank": self.slide_rank} if self.slide_rank is not None else {}
        out.update(x_um=self.x_um, y_um=self.y_um, attention=self.attention)
        return out

    def hit_dict(self) -> dict:
        """A region-search hit tile."""
        return {"slide": self.slide, "x_um": self.x_um, "y_um": self.y_um, "score": self.score, "slide_id": self.slide_id,
                "patient_rank": self.patient_rank, "slide_rank": self.slide_rank, "attention": self.attention,
                "x_px": self.x_px, "y_px": self.y_px, "size_px": self.size_px}

    @classmethod
    def from_hit_dict(cls, data: dict) -> "Tile":
        return cls(**{k: data.get(k) for k in ("slide", "x_um", "y_um", "score", "slide_id", "patient_rank", "slide_rank",
                                                "attention", "x_px", "y_px", "size_px")})

    def box_dict(self) -> dict:
        """A tile box drawn by the viewer (web/urls.py turns `has_file` into its image URL)."""
        return {"slide_id": self.slide_id, "slide": self.slide, "x_um": self.x_um, "y_um": self.y_um, "x_px": self.x_px,
                "y_px": self.y_px, "size_px": self.size_px, "attention": self.attention, "rank": self.patient_rank,
                "has_file": self.has_file}
