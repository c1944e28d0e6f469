"""Readable `--help`: plain metavars (`--data-dir DIR`, `-k N`), no `<bool>` on flags.

Typer derives type labels such as `<bool>`, `<list[Path]>` or `<int range>` from annotations;
this pass over the built click command replaces them with the words a user types.
"""

from __future__ import annotations

# option name -> metavar; options not listed get one from their type
NAMES = {
    "data_dir": "DIR", "weights_dir": "DIR", "artifacts": "DIR", "ctranspath": "DIR", "virchow2": "DIR", "quarantine": "DIR",
    "watch": "DIR", "out": "FILE", "slide": "FILE", "vector": "FILE", "slide_table": "CSV", "table": "TABLE", "files": "FILE...",
    "slides": "SLIDE...", "paths": "PATH...", "patient": "ID", "exclude_patient": "ID", "cohort": "NAME", "member_of": "NAME",
    "kind": "KIND", "signature": "SIGNATURE", "models": "real|tiny", "device": "cpu|cuda|auto", "host": "ADDRESS",
    "port": "PORT", "patient_regex": "REGEX", "mpp": "MPP", "labels": "LABEL...", "exclude_same": "LABEL", "probe": "PROBE", "name": "NAME", "only": "MODEL", "seed": "N", "k": "N", "ks": "K,K,...",
}


def _label(param, ctx) -> str | None:
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    if param.name in NAMES:
        return NAMES[param.name]
    if param.name == "label":  # a filter NAME=VALUE, or the name of a label
        return "NAME=VALUE" if "NAME=VALUE" in (param.help or "") else "LABEL"
    try:
        shown = str(param.display_type(ctx) or "")
    except Exception:  # noqa: BLE001 - keep typer's own label
        return None
    if "|" in shown:  # choices: keep them, without the angle brackets
        return shown.strip("<>").removeprefix("list[").removesuffix("]")
    for word, metavar in (("int", "N"), ("float", "NUMBER"), ("path", "PATH"), ("str", "TEXT")):
        if word in shown.lower():
            return metavar + ("..." if "list" in shown.lower() else "")
    return None


def readable(command, ctx=None) -> None:
    """Set a plain metavar on every option and argument of `command` and its subcommands."""
    for param in getattr(command, "params", []):
        if param.param_type_name == "argument":  # name column: FILE (usage: {FILE}...); no type column
            if param.metavar is None:
                param.metavar = (_label(param, ctx) or param.name.upper()).removesuffix("...")
            param.display_type_rich = lambda ctx=None: None
        elif param.metavar is None:
            label = _label(param, ctx)
            if label is not None:
                param.metavar = label
    original = command.get_help_option

    def help_option(ctx, _original=original):
        option = _original(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        readable(sub, ctx)
