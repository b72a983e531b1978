"""Where a run goes on disk, and what a resume may change.

A new run refuses to replace a trial folder that holds a run with other settings (unless asked); a resumed
run continues as it was: its checkpoint's options are the base, and the command may change only what is safe.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.trial import ResumeError, TrialPaths, saved_epoch, trained_evidence
from options.schema import Field, OptionsError, parse_overrides
from options.settings import fields, flatten, result_settings, unflatten
from utils.trialfiles import TrialFileRefused, read_trial_options


def _field(key: str, table: dict[str, Field]) -> Field:
    """The Field of a dotted key; a key of a section (`cocord` in `cocord=...`), or one nothing declares, is kept."""
    return table.get(key) or Field(None, "str")


def kept_overrides(overrides: list[str], table: dict[str, Field]) -> list[str]:
    """The `key=value` overrides that set a key a resume must keep (they choose which run to resume)."""
    return [item for item in overrides if _field(item.partition("=")[0], table).resume == "keep"]


def resume_options(run_opt: dict[str, Any], command_opt: dict[str, Any], overrides: list[str],
                   schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The options a resumed run continues with, and the lines that say what changed or was kept.

    `run_opt` is what the run was started with (its checkpoint), `command_opt` the options file with the
    command's --set; each key's Field in `schema` says what a resume does with it."""
    old, new, table = flatten(run_opt), flatten(command_opt), fields(schema)
    explicit = set(flatten(parse_overrides(overrides)))
    merged, changed, kept = dict(old), [], []
    for key, value in new.items():
        if old.get(key) == value:
            continue
        field = _field(key, table)
        if field.resume == "keep":
            if key in explicit:
                raise ResumeError(f"cannot resume with {key}={value!r}: the run was trained with {old.get(key)!r}, "
                                  "and a resume must keep it; start a new run (another -t or experiment_name)")
            kept.append(f"{key}={old.get(key)!r}")
        elif field.resume == "machine" or key in explicit:
            merged[key] = value
            if field.report is True or (field.report == "explicit" and key in explicit):
                changed.append(f"{key}={value!r} (was {old.get(key)!r})")
        else:
            kept.append(f"{key}={old.get(key)!r}")
    notes = []
    if changed:
        notes.append(f"resuming with changed options: {', '.join(changed)}")
    if kept:
        notes.append(f"note: the options file differs from the run; kept the run's {', '.join(kept)} "
                     "(change one with --set on the command line)")
    return unflatten(merged), notes


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
    """A trial's options.yml within the options file's limits (an alias bomb there must not hang the check);
    None if it is missing or refused."""
    try:
        return read_trial_options(path)
    except TrialFileRefused:
        return None


def _describe_existing(paths: TrialPaths) -> str:
    epoch = saved_epoch(paths.checkpoint) if paths.checkpoint.is_file() else 0  # None: damaged
    return "a run" if epoch is None else f"a run stopped at epoch {epoch}" if epoch else "a run with no finished epoch"
