"""`make demo`: a small archive of generated slides, embedded with the tiny models and searched.

Three tissue types (dense cellular, pale cellular, fatty) with per-patient stain jitter stand
in for an archive; the clinical table labels each patient with its type and a site, so a
search shows look-alikes of the same type on top.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eagle_index.config import Settings

TILE_UM = 448.0
TISSUE_TYPES = {
    "dense": ("cells", {"stroma": (222, 150, 196), "nucleus": (70, 40, 120)}),
    "pale": ("cells", {"stroma": (240, 200, 222), "nucleus": (130, 96, 170)}),
    "fatty": ("fat", {"membrane": (205, 125, 172)}),
}
SITES = ("site-A", "site-B")


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in colour)


def write_demo_slides(folder: Path, patients: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """Write the slides, a slide table and a clinical table; returns both tables' paths."""
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = ["PATIENT,TISSUE,SITE"]
    slide_rows = ["PATIENT,FILENAME"]
    kinds = list(TISSUE_TYPES)
    for i in range(patients):
        patient = f"DEMO-{i + 1:03d}"
        kind = kinds[i % len(kinds)]
        texture, palette = TISSUE_TYPES[kind]
        rows.append(f"{patient},{kind},{SITES[i % 2]}")
        for slide in range(1 + (i % 4 == 0)):  # every fourth patient has two slides
            path = folder / f"{patient}-S{slide + 1}.tiff"
            slide_rows.append(f"{patient},{path.name}")
            if path.exists():
                continue
            cols, rows_ = int(rng.integers(6, 9)), int(rng.integers(5, 7))
            box = (TILE_UM, TILE_UM, (cols - 2) * TILE_UM, (rows_ - 2) * TILE_UM)
            write_pyramidal_tiff(path, mpp=float(rng.choice([0.25, 0.5])), size_um=(cols * TILE_UM, rows_ * TILE_UM),
                                 tissue_boxes_um=[box], texture=texture, seed=int(rng.integers(1 << 16)),
                                 palette={k: _jitter(v, rng) for k, v in palette.items()})
    table = folder / "clinical.csv"
    table.write_text("\n".join(rows) + "\n")
    slide_table = folder / "slides.csv"
    slide_table.write_text("\n".join(slide_rows) + "\n")
    return slide_table, table


INBOX = "inbox"  # the demo server's watch folder, inside the data folder: drop a slide there to see it embedded


def run_demo(settings: Settings, patients: int = 12, echo=print) -> dict:
    """Generate, embed through the job queue (tiny models), label, search; returns what it printed as data.

    The slides go through the same job queue as the server's worker (one job per slide, recorded), so
    the Ingestion page of the demo server shows them; `DATA/inbox` is made for the server to watch."""
    from eagle_index.service import EagleService

    slides_dir = settings.data_dir / "demo-slides"
    echo(f"writing {patients} demo patients' slides to {slides_dir}")
    slide_table, table = write_demo_slides(slides_dir, patients)
    inbox = settings.data_dir / INBOX
    inbox.mkdir(exist_ok=True)
    with EagleService(settings) as service:
        echo("embedding with the tiny models (random weights: the pipeline is real, the numbers are not)")
        report = embed_through_queue(service, slides_dir, slide_table, echo)
        if report["skipped"]:
            echo(f"  {len(report['skipped'])} slide(s) already ingested")
        service.import_labels(table)
        stats = service.stats()
        echo(f"catalog: {stats['patients']} patients, {stats['slides']} slides, {stats['labels']} labels, vectors {stats['vectors']}")
        hits = service.search_patient("DEMO-001", k=5, kind="eagle")
        echo("look-alikes of DEMO-001 (tissue: dense):")
        for hit in hits:
            echo(f"  {hit.rank}. {hit.patient}  cosine {hit.score:.4f}  tissue={hit.labels.get('TISSUE')}")
    echo(f"watch folder: {inbox} (while the demo serves, a slide dropped there is embedded; the Ingestion page shows it)")
    return {"ingest": report, "stats": stats.as_dict(), "hits": [h.as_dict() for h in hits], "inbox": str(inbox)}


def embed_through_queue(service, slides_dir: Path, slide_table: Path, echo=print) -> dict:
    """Queue every demo slide as an ingestion job and run them with the worker the server uses.

    A slide queued before (an earlier demo run in this folder) is not queued again: skipped."""
    import threading
    import time

    from eagle_index.backfill import plan
    from eagle_index.ingest.enqueue import enqueue_file
    from eagle_index.ingest.worker import Worker

    skipped = []
    for job in plan([slides_dir], slide_table, None):
        state, _ = enqueue_file(service.jobs, job.path.resolve(), job.patient, job.mpp)
        if state != "queued":
            skipped.append(str(job.path))
    service.regions.follow()  # loaded tile indexes follow the commits in place
    worker = Worker(service.ingest_context(), service.jobs, threading.Event(), max_attempts=1, backoff_seconds=0.0)
    ingested, failed = [], []
    while (job := service.jobs.claim()) is not None:
        started = time.perf_counter()
        state = worker.process(job)
        seconds = round(time.perf_counter() - started, 3)
        echo(f"  {Path(job.path).name}: {state}, {seconds} s (job {job.id})")
        (ingested if state == "done" else failed).append({"file": job.path, "patient": job.patient, "job": job.id,
                                                          "state": state, "seconds": seconds})
    service.vectors.sync_all()
    return {"ingested": ingested, "skipped": skipped, "failed": failed}
