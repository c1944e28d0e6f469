"""Process commands: `daemon`, `serve`, `status`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from eagle_index.cli.cluster_cmds import ClusterOpt, GpusOpt, ThreadsOpt, WorkersOpt
from eagle_index.cli.options import (DataDirOpt, DeviceOpt, JsonOpt, ModelsOpt, PrecisionOpt, ReadWorkersOpt, WeightsDirOpt,
                                     settings_from, setup_logging)

WatchOpt = Annotated[list[Path], typer.Option("--watch", help="Folder to watch for new slides (repeatable).")]
SlideTableOpt = Annotated[Optional[Path], typer.Option("--slide-table", help="PATIENT,FILENAME[,MPP] table (re-read when it changes).")]
RegexOpt = Annotated[Optional[str], typer.Option("--patient-regex", help="Regex on the slide name; group 1 is the patient id (default: TCGA-XX-XXXX).")]
SettleOpt = Annotated[float, typer.Option("--settle-seconds", help="A file is complete when unchanged this long.")]
AttemptsOpt = Annotated[int, typer.Option("--max-attempts", min=1, help="Attempts per slide before it is marked failed.")]
BackoffOpt = Annotated[float, typer.Option("--retry-backoff", help="Seconds before the first retry (doubles each time).")]
QuarantineOpt = Annotated[Optional[Path], typer.Option("--quarantine", help="Move slides that failed for good here.")]
PollOpt = Annotated[float, typer.Option("--poll-seconds", help="Folder scan interval (fallback for network mounts).")]


def _run(role: str, data_dir, weights_dir, models, device, read_workers=None, precision=None, **options) -> None:
    from eagle_index.cli.cluster_cmds import cluster_options
    from eagle_index.server import OwnerOptions, run_owner

    options["cluster"] = cluster_options(*(options.pop(k, None) for k in ("cluster", "workers", "gpus_per_worker", "threads_per_worker")))

    settings = settings_from(data_dir, weights_dir, models=models, device=device, read_workers=read_workers, precision=precision)
    setup_logging(settings, "INFO")
    options["token"] = settings.token
    raise typer.Exit(run_owner(settings, OwnerOptions(role=role, **options)))


def register(app: typer.Typer) -> None:
    @app.command("daemon")
    def daemon(
        watch: WatchOpt = [],  # noqa: B006 - typer needs a literal default
        slide_table: SlideTableOpt = None,
        patient_regex: RegexOpt = None,
        models: ModelsOpt = "default",
        device: DeviceOpt = None,
        read_workers: ReadWorkersOpt = None,
        precision: PrecisionOpt = None,
        settle_seconds: SettleOpt = 5.0,
        poll_seconds: PollOpt = 2.0,
        max_attempts: AttemptsOpt = 3,
        retry_backoff: BackoffOpt = 5.0,
        quarantine: QuarantineOpt = None,
        port: Annotated[int, typer.Option("--port", help="Loopback API port (0: any free port).")] = 0,
        cluster: ClusterOpt = None,
        workers: WorkersOpt = None,
        gpus_per_worker: GpusOpt = None,
        threads_per_worker: ThreadsOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
    ) -> None:
        """Watch folders and ingest every complete slide (worker + loopback API, no UI); Ray workers with --cluster."""
        _run("daemon", data_dir, weights_dir, models, device, read_workers=read_workers, precision=precision, watch=watch, slide_table=slide_table,
             cluster=cluster, workers=workers, gpus_per_worker=gpus_per_worker, threads_per_worker=threads_per_worker,
             patient_regex=patient_regex, settle_seconds=settle_seconds, poll_seconds=poll_seconds,
             max_attempts=max_attempts, backoff_seconds=retry_backoff, quarantine=quarantine, host="127.0.0.1", port=port)

    @app.command("serve")
    def serve(
        host: Annotated[str, typer.Option("--host", help="Address to bind; beyond loopback needs EAGLE_INDEX_TOKEN.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port")] = 8000,
        watch: WatchOpt = [],  # noqa: B006
        slide_table: SlideTableOpt = None,
        patient_regex: RegexOpt = None,
        models: ModelsOpt = "default",
        device: DeviceOpt = None,
        settle_seconds: SettleOpt = 5.0,
        poll_seconds: PollOpt = 2.0,
        max_attempts: AttemptsOpt = 3,
        retry_backoff: BackoffOpt = 5.0,
        quarantine: QuarantineOpt = None,
        data_dir: DataDirOpt = None,
        weights_dir: WeightsDirOpt = None,
    ) -> None:
        """Run the web app (waitress) and the ingestion worker together."""
        _run("serve", data_dir, weights_dir, models, device, watch=watch, slide_table=slide_table,
             patient_regex=patient_regex, settle_seconds=settle_seconds, poll_seconds=poll_seconds,
             max_attempts=max_attempts, backoff_seconds=retry_backoff, quarantine=quarantine, host=host, port=port)

    @app.command("status")
    def status(data_dir: DataDirOpt = None, as_json: JsonOpt = False) -> None:
        """Ingestion queue, running job, recent failures, throughput and index size."""
        from eagle_index.client import owner_client
        from eagle_index.service import EagleService

        settings = settings_from(data_dir)
        client = owner_client(settings)
        if client is not None:
            data = client.status()  # the server's JSON
            data["owner"] = {"pid": client.owner.pid, "role": client.owner.role, "url": client.owner.url}
        else:
            with EagleService(settings, create=False) as service:
                data = service.status().as_dict()
            data["owner"] = None
        if as_json:
            typer.echo(json.dumps(data, indent=1))
            return
        for line in status_lines(data):
            typer.echo(line)


def _progress_words(progress) -> str:
    """A running job's progress record in words: 'ctranspath, 120 tiles', 'embedding on w0 (node-1)'."""
    if not progress:
        return ""
    if not isinstance(progress, dict):
        return str(progress)
    rest = dict(progress)
    words = [str(rest.pop("stage"))] if rest.get("stage") else []
    if rest.get("tiles") is not None:
        words.append(f"{rest.pop('tiles')} tiles")
    worker, node = rest.pop("worker", None), rest.pop("node", None)
    if worker:
        words.append(f"on {worker}" + (f" ({node})" if node else ""))
    deaths = rest.pop("deaths", None)  # issue 24 item 5: owner deaths recorded on the job
    if deaths:
        words.append(f"an owner process died holding it {len(deaths)} time(s): embedded alone")
    words += [f"{k} {v}" for k, v in rest.items() if v is not None and v != ""]
    return ", ".join(words)


def status_lines(data: dict) -> list[str]:
    """`eagle-index status` as text: values that are not known yet are left out, never printed as None."""
    lines = []
    owner = data.get("owner")
    lines.append(f"owner: {owner['role']} pid {owner['pid']} {owner['url']}" if owner else "owner: none (no daemon or server running)")
    lines.append("queue: " + "  ".join(f"{k} {v}" for k, v in data["queue"].items()))
    for job in data.get("running", []):
        facts = [f"patient {job['patient']}" if job.get("patient") else "", f"attempt {job['attempt']}" if job.get("attempt") else "",
                 _progress_words(job.get("progress"))]
        facts = [f for f in facts if f]
        lines.append(f"running: {job['file']}" + (f" ({', '.join(facts)})" if facts else ""))
    t = data.get("throughput") or {}
    mean = t.get("mean_seconds_per_slide")
    lines.append(f"throughput: {t.get('slides_last_hour', 0)} slides in the last hour"
                 + (f"; mean {mean} s/slide" if mean is not None else ""))
    for entry in data.get("index", []):
        lines.append(f"index: {entry['kind']} {entry['vectors']} vectors (dim {entry['dim']})")
    for worker in data.get("workers", []):
        where = (f" on {worker['node']}" if worker.get("node") else "") + (f" ({worker['device']})" if worker.get("device") else "")
        pace = f", {worker['seconds_per_slide']} s/slide" if worker.get("seconds_per_slide") is not None else ""
        lines.append(f"worker: {worker['id']}{where}: {worker.get('slides_done') or 0} slides{pace}")
    for failure in data.get("failures", []):
        lines.append(f"failed: {failure['file']}: {failure['error']}")
    return lines
