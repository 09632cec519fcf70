"""Command-line checks that run before Hydra composes anything (so before any run folder exists).

Hydra reports an unknown group option with a traceback-like block and a folder may already have
been made; here the overrides are read from argv and checked against the files in conf/<group>/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf"


def train_defaults() -> dict[str, str | list | None]:
    """conf/train.yaml's defaults list as {group: default option}, for the groups a command line chooses: not
    `paper` (its option is `${model}_${dataset}`) nor Hydra's own."""
    import yaml

    entries = yaml.safe_load((CONF / "train.yaml").read_text())["defaults"]
    pairs = (next(iter(e.items())) for e in entries if isinstance(e, dict))
    return {group: option for group, option in pairs if group != "hydra" and "${" not in str(option)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _overrides(argv: list[str]) -> dict[str, str]:
    out = {}
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            key, value = arg.split("=", 1)
            out[key.lstrip("+~")] = value
    return out


def _writable(path: Path) -> bool:
    """Whether `path` can be created (or written) by walking up to its first existing parent."""
    path = path.expanduser().absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def problems(argv: list[str]) -> list[str]:
    """What is wrong with these command-line overrides (empty: nothing found)."""
    args = _overrides(argv)
    found = []
    defaults = train_defaults()
    for group in defaults:
        given = args.get(group, "null")
        # A list of options (`logger=[wandb,csv]`), or a multirun sweeping `group=a,b`.
        for value in (given[1:-1] if given.startswith("[") and given.endswith("]") else given).split(","):
            if value not in ("null", *options(group)):
                found.append(f"unknown {group} {value!r}: choose one of {', '.join(options(group))} (conf/{group}/)")
    model, dataset = args.get("model", defaults["model"]), args.get("dataset", defaults["dataset"])
    if not found and f"{model}_{dataset}" not in options("paper"):
        pairs = ", ".join(p.replace("_", " on ") for p in options("paper"))
        found.append(
            f"model {model!r} has no nets for dataset {dataset!r} (conf/paper/{model}_{dataset}.yaml); "
            f"available: {pairs}"
        )
    for key in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir"):
        if key in args and "${" not in args[key] and not _writable(Path(args[key])):
            found.append(f"output folder {args[key]} cannot be written ({key}): choose a writable folder")
    if not any(k in args for k in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir")):
        log_dir = CONF.parent / "outputs"
        if not _writable(log_dir):
            found.append(f"output folder {log_dir} cannot be written: set paths.log_dir=<writable folder>")
    return found


MULTIRUN_FLAGS = ("-m", "--multirun")


def flags_first(argv: list[str]) -> list[str]:
    """`-m`/`--multirun` moved before the overrides: Hydra's parser refuses `train.py a=1 -m b=1,2`
    (argparse's "unrecognized arguments"), a form researchers type and the issues use."""
    return [a for a in argv if a in MULTIRUN_FLAGS] + [a for a in argv if a not in MULTIRUN_FLAGS]


def preflight(argv: list[str] | None = None) -> None:
    """Exit with `error: ...` (status 2) when the command line names something that does not exist.

    Called with no argv (the scripts), it also puts a multirun flag given among the overrides first.
    """
    if argv is None:
        sys.argv[1:] = flags_first(sys.argv[1:])
    found = problems(sys.argv[1:] if argv is None else argv)
    if found:
        print(f"error: {found[0]}", file=sys.stderr)
        sys.exit(2)
