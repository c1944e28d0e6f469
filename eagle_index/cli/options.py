"""Options shared by every command, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydantic (through config) is imported when a command runs, not for --help
    from eagle_index.config import Settings

DataDirOpt = Annotated[
    Optional[Path],
    typer.Option("--data-dir", help="Data folder (catalog, index, artifacts). Env EAGLE_INDEX_DATA; default ./eagle-data."),
]
WeightsDirOpt = Annotated[
    Optional[Path],
    typer.Option("--weights-dir", help="Folder with model weights. Env EAGLE_INDEX_WEIGHTS."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ModelsOpt = Annotated[
    str, typer.Option("--models", show_default="real", help="Model preset: real (official weights; alias default) or tiny (small random models, tests/demo).")
]
QueryModelsOpt = Annotated[
    Optional[str],
    typer.Option("--models", show_default="the archive's", help="Model preset that encodes the query: real or tiny "
                 "(default: the preset the archive's vectors were made with)."),
]
KindOpt = Annotated[
    Optional[str],
    typer.Option("--kind", help="Vector kind: eagle, chief, mean-ctranspath… (default: eagle if stored, else the only kind; "
                 "a cohort's own kind for its reports)."),
]
ReadWorkersOpt = Annotated[
    Optional[int],
    typer.Option("--read-workers", min=0, help="Reader processes (default: one per core; 0: threads in this process)."),
]
PrecisionOpt = Annotated[
    Optional[str],
    typer.Option("--precision", help="fp32 (default, the reference) or bf16 (CTransPath under bf16 autocast; own signature)."),
]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="cpu, cuda, or auto (default; env EAGLE_INDEX_DEVICE).")]


def settings_from(data_dir: Path | None = None, weights_dir: Path | None = None, **more) -> "Settings":
    """Settings for one CLI call: env vars, then the options given on the command line.

    An invalid value becomes one line naming the option and the problem (never a pydantic dump).
    """
    from pydantic import ValidationError

    from eagle_index.config import Settings
    from eagle_index.errors import InputError

    read_workers, precision = more.pop("read_workers", None), more.pop("precision", None)
    try:
        settings = Settings.load(data_dir=data_dir, weights_dir=weights_dir, **more)
        if read_workers is not None or precision is not None:
            settings = settings.with_throughput(read_workers=read_workers, precision=precision)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "settings"
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InputError(f"{where}: {message}") from None
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise InputError(f"{settings.data_dir}: the data folder (--data-dir / EAGLE_INDEX_DATA) is a file, not a folder")
    return settings


def setup_logging(settings: "Settings", default: str) -> None:
    """Log to stderr at `settings.log_level` (env EAGLE_INDEX_LOG), else at the command's `default`."""
    import logging

    logging.basicConfig(level=settings.log_level or default, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migration chatter is not news


def output_file(path: Path, what: str = "output file") -> Path:
    """Check an output path before any long work: its folder must exist (it is not created)."""
    from eagle_index.errors import InputError

    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name for the {what}")
    parent = path.parent
    if not parent.is_dir():
        raise InputError(f"{path}: folder {parent} does not exist (create it first)")
    return path
