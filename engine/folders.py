"""Where a run goes on disk, and what a resume may change of its options.

A new run refuses to replace a trial folder that holds a run with other settings (unless asked); a resumed
run continues as it was: its checkpoint's options are the base, and the command may change only what is safe.
Once every check has passed, the run's first writes: locks, folders, options, provenance (run.json: the code,
the libraries, the machine, the command).
"""
from __future__ import annotations

import json
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.checkpoint import (
    ResumeError,
    Trial,
    TrialPaths,
    recorded_sessions,
    saved_epoch,
    trained_evidence,
)
from options.schema import Field, OptionsError, options_text, parse_overrides
from options.settings import fields, flatten, result_settings, unflatten
from utils.files import FolderLock, LockError, archive_name, atomic_write_text
from utils.trialfiles import TrialFileRefused, read_trial_options


def _field(key: str, table: dict[str, Field]) -> Field:
    """A key of a section (`cocord` in `cocord=...`), or one nothing declares, is kept."""
    return table.get(key) or Field(None, "str")


def kept_overrides(overrides: list[str], table: dict[str, Field]) -> list[str]:
    """The `key=value` overrides that set a key a resume must keep (they choose which run to resume)."""
    return [item for item in overrides if _field(item.partition("=")[0], table).resume == "keep"]


def resume_options(run_opt: dict[str, Any], command_opt: dict[str, Any], overrides: list[str],
                   schema: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The options a resumed run continues with (`run_opt`: its checkpoint's; `command_opt`: the options file with
    the command's --set), and the lines that say what changed or was kept."""
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
    """A fresh trial's folder: nothing there yet, or an old run to archive."""
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
    epoch = saved_epoch(paths.checkpoint) if paths.checkpoint.is_file() else 0  # None: damaged
    what = "a run" if epoch is None else f"a run stopped at epoch {epoch}" if epoch else "a run with no finished epoch"
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


def run_changed_by_resume(experiments_dir: Path, trials: list[int], opt: dict[str, Any], changed: set[str],
                          table: dict[str, Field]) -> Path | None:
    """The experiment folder of a run started with a value of `changed` (keys a resume may change that name a
    folder) that neither the command nor the options file gives (--set learning_rate=100, then --resume --set
    learning_rate=10): the one where one of `trials` has a checkpoint and options that agree with `opt` on every
    other option that names a folder; None if there is none, several are refused."""
    def naming(o: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in result_settings(o).items()
                if k not in changed and (k not in table or table[k].in_name)}
    want, found = naming(opt), []
    try:
        folders = sorted(p for p in experiments_dir.iterdir() if p.is_dir())
    except OSError:
        return None
    for folder in folders:
        for t in trials:
            paths = TrialPaths(folder / f"trial_{t}")
            old = _read_options(paths.options) if paths.checkpoint.is_file() else None
            if old is not None and naming(old) == want:
                found.append(folder)
                break
    if len(found) > 1:
        raise ResumeError(f"runs {', '.join(str(f) for f in found[:3])} differ from this command only in "
                          f"{', '.join(sorted(changed))}: resume one of them by its trial folder, with --set "
                          "path.resume=<trial folder> and the change")
    return found[0] if found else None


def _read_options(path: Path) -> dict[str, Any] | None:
    """A trial's options.yml within the options file's limits (an alias bomb there must not hang the check);
    None if it is missing or refused."""
    try:
        return read_trial_options(path)
    except TrialFileRefused:
        return None


class FolderBusy(RuntimeError):
    """Another process is training this trial."""


def lock_trials(trials: list[Trial]) -> list[FolderLock]:
    """One lock per trial, beside its folder, held while the run trains: a second process on the same trial
    stops before it renames or writes anything."""
    locks: list[FolderLock] = []
    try:
        for trial in trials:
            locks.append(FolderLock(trial.paths.folder.parent, trial.paths.folder.name))
    except BaseException as err:
        for lock in locks:
            lock.release()
        if isinstance(err, LockError):
            raise FolderBusy(f"{trial.paths.folder} is being trained by {err} right now; wait for it to finish, or "
                             "give this run another -t or experiment_name") from None
        raise
    return locks


def folder_state(paths: TrialPaths) -> tuple[Any, Any]:
    """What a trial folder holds, as far as a run's plan depends on it: the folder itself (a rename or a new one
    changes its inode) and the version of its checkpoint."""
    def version(path: Any) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size
    return version(paths.folder), version(paths.checkpoint)


def check_unchanged(trials: list[Trial], planned: dict[int, tuple[Any, Any]]) -> None:
    """Under the lock: the trial folders still hold what the run was planned on. Another process of the same
    trials may have trained them between this run's checks and its lock (it finished in between)."""
    for trial in trials:
        if folder_state(trial.paths) != planned[trial.paths.number]:
            raise FolderBusy(f"{trial.paths.folder} was written by another process while this run was starting; "
                             "nothing was changed: run the command again to go on from what it holds now")


def prepare_folder(plan: FolderPlan, say: Any) -> None:
    if plan.archive:
        target = archive_name(plan.paths.folder, time.strftime("%y%m%d-%H%M%S"))
        plan.paths.folder.rename(target)
        plan.archived_to = target
        say(f"{plan.note}: {target}")
    plan.paths.folder.mkdir(parents=True)
    plan.made = True


def record_run(paths: TrialPaths, opt: dict[str, Any], argv: list[str], device: torch.device, speed: dict[str, Any],
               seed: int, summary: str, processes: int) -> None:
    """options.yml (the options as they run, speed settings as they apply here), run.json (one entry per start or
    resume: command, code, libraries, machine) and the network summary."""
    atomic_write_text(paths.options, options_text(opt))
    sessions = [*recorded_sessions(paths), session(argv, device, speed, seed, processes)]
    atomic_write_text(paths.provenance, json.dumps({"sessions": sessions}, indent=1))
    paths.summary.write_text(summary)


def network_summary(method: torch.nn.Module) -> str:
    lines = []
    for name, module in method.named_children():
        n = sum(p.numel() for p in module.parameters())
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        lines.append(f"{name}: {n:,} parameters ({trained:,} trained)")
    return "\n".join(lines) + "\n\n" + repr(method) + "\n"


# Provenance (run.json): where a run came from: the code, the libraries, the machine, the command.
def git_state() -> dict[str, Any]:
    """{'commit': sha or None, 'dirty': bool or None}: None where the code is not a git checkout."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment(device: torch.device) -> dict[str, Any]:
    import torchvision
    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "host_platform": platform.platform(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def session(argv: list[str], device: torch.device, speed: dict[str, Any], seed: int, processes: int
            ) -> dict[str, Any]:
    """One entry of a trial's run.json: a start or a resume of it (`processes`: under torchrun, how many)."""
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": shlex.join([Path(sys.executable).name, "main.py", *argv]), "seed": seed,
            "processes": processes, "git": git_state(), "environment": environment(device), "speed": speed}
