"""The file-name suffixes eagle-index recognises, defined once (plain tuples, nothing imported).

Ingest, the folder watcher, the upload API, slide tables and region queries all read these.
"""

from __future__ import annotations

# Whole-slide formats OpenSlide reads, and plain images: what `ingest` and the watcher pick up.
SLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".tif", ".tiff", ".scn", ".dcm", ".bif", ".vms", ".vmu", ".svslide",
                  ".png", ".jpg", ".jpeg")

# Slides that are more than one file (an index file beside its data files): not accepted as one upload.
MULTI_FILE_SUFFIXES = (".mrxs", ".dcm", ".vms", ".vmu")

# What the web's slide upload (POST /api/v1/search/slide and the search page) accepts.
UPLOAD_SUFFIXES = tuple(s for s in SLIDE_SUFFIXES if s not in MULTI_FILE_SUFFIXES)

# Suffixes a slide table's FILENAME loses to give the STAMP feature file's stem: the slide suffixes
# (.vmu is not stripped, as before) and the feature file's own .h5.
STEM_SUFFIXES = tuple(s for s in SLIDE_SUFFIXES if s != ".vmu") + (".h5",)

# Images a region query may be (CLI `--image`, the region API's upload).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
