"""`backfill`: ingest an archive through the job queue, on Ray workers with `--cluster`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.options import (DataDirOpt, DeviceOpt, ModelsOpt, PrecisionOpt, ReadWorkersOpt, WeightsDirOpt, settings_from,
                                     setup_logging)

ClusterOpt = Annotated[Optional[str], typer.Option(
    "--cluster", help="Embed on Ray workers: local (start Ray on this machine), auto (the running cluster) or ray://HOST:PORT. "
                      "Without it, slides are embedded in this process and Ray is not used.")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Ray workers (default: one per GPU of the cluster, else 1).")]
GpusOpt = Annotated[Optional[float], typer.Option(
    "--gpus-per-worker", min=0, help="GPUs per Ray worker (default: 1 when the cluster has GPUs, else 0).")]
ThreadsOpt = Annotated[Optional[int], typer.Option(
    "--threads-per-worker", min=1, help="Torch CPU threads per Ray worker (default: this machine's; the same count keeps CPU vectors bit-identical to `ingest`).")]
InFlightOpt = Annotated[Optional[int], typer.Option(
    "--slides-in-flight", min=1, help="Slides each Ray worker embeds at once (default: 2 on a GPU, 1 on CPU).")]


def cluster_options(cluster, workers, gpus_per_worker, threads_per_worker, slides_in_flight=None):
    """ClusterOptions when --cluster is given (eagle_index.cluster does not import ray until used), else None."""
    if cluster is None:
        if any(v is not None for v in (workers, gpus_per_worker, threads_per_worker, slides_in_flight)):
            from eagle_index.errors import InputError

            raise InputError("--workers, --gpus-per-worker, --threads-per-worker and --slides-in-flight need --cluster")
        return None
    from eagle_index.cluster import ClusterOptions

    return ClusterOptions(address=cluster, workers=workers, gpus_per_worker=gpus_per_worker,
                          threads_per_worker=threads_per_worker, slides_in_flight=slides_in_flight)


def register(app: typer.Typer) -> None:
    @app.command("backfill")
    def backfill(
        paths: Annotated[list[Path], typer.Argument(help="Slide files or folders (read by the workers from this same path).")],
        slide_table: Annotated[Optional[Path], typer.Option("--slide-table", help="PATIENT,FILENAME[,MPP] table.")] = None,
        cluster: ClusterOpt = None,
        workers: WorkersOpt = None,
        gpus_per_worker: GpusOpt = None,
        threads_per_worker: ThreadsOpt = None,
        slides_in_flight: InFlightOpt = None,
        models: ModelsOpt = "default",
        device: DeviceOpt = None,
        read_workers: ReadWorkersOpt = None,
        precision: PrecisionOpt = None,
        mpp: Annotated[Optional[float], typer.Option("--mpp", help="Override the slides' µm per pixel (level 0).")] = None,
        max_attempts: Annotated[int, typer.Option("--max-attempts", min=1, help="Attempts per slide before it is marked failed.")] = 3,
        retry_backoff: Annotated[float, typer.Option("--retry-backoff", help="Seconds before the first retry (doubles each time).")] = 5.0,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
    ) -> None:
        """Embed and store every slide of an archive through the job queue; resumable; Ray workers with --cluster.

        Shows a progress bar (slides done/total, slides per hour, ETA) on a terminal; `eagle-index status`
        shows the queue and the workers meanwhile. Ctrl-C requeues what is in flight; the same command resumes.
        """
        from eagle_index.backfill import Backfill, plan
        from eagle_index.server import OwnerOptions, run_owner

        settings = settings_from(data_dir, weights_dir, models=models, device=device, read_workers=read_workers,
                                 precision=precision)
        setup_logging(settings, "WARNING" if sys.stderr.isatty() else "INFO")
        options = cluster_options(cluster, workers, gpus_per_worker, threads_per_worker, slides_in_flight)
        session = Backfill(plan(paths, slide_table, mpp))
        raise typer.Exit(run_owner(settings, OwnerOptions(
            role="backfill", max_attempts=max_attempts, backoff_seconds=retry_backoff, poll_seconds=1.0,
            cluster=options, session=session, token=settings.token)))
