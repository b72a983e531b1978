"""Where a run goes on disk, and what a resume may change.

A new run refuses to replace a trial folder that holds a run with other settings (unless asked); a resumed
run continues as it was: its checkpoint's options are the base, and the command may change only what is safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from engine.trial import ResumeError, TrialPaths, saved_epoch, trained_evidence
from options.schema import OptionsError, parse_overrides
from options.settings import flatten, result_settings

# Keys that decide what is trained: a resume keeps them whatever the command says.
FIXED = ("student_model", "teacher_model", "distill", "dataset", "n_cls", "batch_size", "seed", "experiment_name")
# Keys about the machine and the files, taken from the command that resumes (a run may move to another GPU).
MACHINE = ("gpu", "num_workers", "pin_memory", "print_freq", "data_folder", "download", "experiments_dir",
           "path.teacher", "path.resume", "speed.loader", "speed.cuda_graph", "speed.compile", "speed.channels_last",
           "speed.streams")
# Machine keys a run records as this machine applied them (the CPU turns speed off, cores cap num_workers) and
# that check() decides again from the command's request: a difference from the file is no change to report.
DECIDED_HERE = ("num_workers", "speed")


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return tree


def _covered(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or key.startswith(n + ".") for n in names)


def fixed_overrides(overrides: list[str], fixed: tuple[str, ...]) -> list[str]:
    """The `key=value` overrides that set a key a resume must keep (FIXED, or the method's `fixed`)."""
    return [item for item in overrides if _covered(item.partition("=")[0], FIXED + fixed)]


def resume_options(run_opt: dict[str, Any], command_opt: dict[str, Any], overrides: list[str],
                   fixed: tuple[str, ...]) -> tuple[dict[str, Any], list[str]]:
    """The options a resumed run continues with, and the lines that say what changed or was kept.

    `run_opt` is what the run was started with (its checkpoint), `command_opt` the options file with the
    command's --set, `fixed` the method's own keys a resume must keep."""
    old, new = flatten(run_opt), flatten(command_opt)
    explicit = set(flatten(parse_overrides(overrides)))
    merged, changed, kept = dict(old), [], []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if _covered(key, FIXED + fixed):
            if key in explicit:
                raise ResumeError(f"cannot resume with {key}={value!r}: the run was trained with {old.get(key)!r}, "
                                  "and a resume must keep it; start a new run (another -t or experiment_name)")
            kept.append(f"{key}={old.get(key)!r}")
        elif _covered(key, MACHINE) or key in explicit:
            merged[key] = value
            # Speed: what applies here is said by check(); num_workers: capped there, said there.
            if key != "path.resume" and not key.startswith("speed.") and \
                    (key in explicit or not _covered(key, DECIDED_HERE)):
                changed.append(f"{key}={value!r} (was {old.get(key)!r})")
        else:
            kept.append(f"{key}={old.get(key)!r}")
    notes = []
    if changed:
        notes.append(f"resuming with changed options: {', '.join(changed)}")
    if kept:
        notes.append(f"note: the options file differs from the run; kept the run's {', '.join(kept)} "
                     "(change one with --set on the command line)")
    return _unflatten(merged), notes


@dataclass
class FolderPlan:
    """What happens to a fresh trial's folder: nothing there yet, or an old run to archive."""
    paths: TrialPaths
    archive: bool = False
    note: str = ""
    made: bool = False  # this run has made the folder
    archived_to: Path | None = None  # where this run moved the old run


def plan_folder(paths: TrialPaths, opt: dict[str, Any], replace: bool) -> FolderPlan:
    """A trial folder that exists already is archived (renamed) only if it holds a run with the same settings, a
    run of ours that never finished an epoch (nothing to lose, and nothing to resume), or the user passed
    --replace; otherwise the new run is refused before anything is written."""
    if not paths.folder.exists():
        return FolderPlan(paths)
    if not paths.folder.is_dir():
        raise OptionsError(f"{paths.folder} is a file, not a trial folder; move it away or choose another -t")
    old = _read_options(paths.options)
    what = _describe_existing(paths)
    unfinished = old is not None and not paths.checkpoint.exists() and not trained_evidence(paths)
    if replace or unfinished or (old is not None and result_settings(old) == result_settings(opt)):
        return FolderPlan(paths, archive=True, note=f"{paths.folder} holds {what}: archived (renamed) before this "
                                                     "run starts")
    if old is None:
        differs = "files this project did not write"
    else:
        a, b = result_settings(old), result_settings(opt)
        given, new = flatten(old), flatten(opt)  # shown as written (normalised, 4 would read 4.0)
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        differs = "other settings: " + ", ".join(f"{k} {given.get(k)!r} -> {new.get(k)!r}" for k in keys[:4]) + \
            (", ..." if len(keys) > 4 else "")
    go_on = "; to continue it, use --resume" if paths.checkpoint.is_file() else ""
    raise OptionsError(f"{paths.folder} holds {what} with {differs}; give this run its own folder with "
                       "--set experiment_name=NAME (or another -t), or pass --replace to archive that run (renamed, "
                       f"not deleted){go_on}")


def _read_options(path: Path) -> dict[str, Any] | None:
    try:
        opt = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return opt if isinstance(opt, dict) else None


def _describe_existing(paths: TrialPaths) -> str:
    epoch = saved_epoch(paths.checkpoint) if paths.checkpoint.is_file() else 0  # None: damaged
    return "a run" if epoch is None else f"a run stopped at epoch {epoch}" if epoch else "a run with no finished epoch"
