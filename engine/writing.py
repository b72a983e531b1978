"""The first writes of a run, once every check has passed: locks, folders, options, provenance."""
from __future__ import annotations

import json
import time
from typing import Any

import torch

from engine.resume import FolderPlan
from engine.trainer import Trial
from engine.trial import TrialPaths, repair
from options.schema import options_text
from utils.files import FolderLock, LockError, archive_name, atomic_write_text
from utils.provenance import session


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


def complete_resumed(paths: TrialPaths, ckpt: dict[str, Any], extra: dict[str, Any], opt: dict[str, Any],
                     say: Any) -> None:
    fixed, ended = repair(paths, ckpt, extra, opt)
    if fixed:
        say(f"{paths.folder}: rewrote {', '.join(fixed)} from the last checkpoint (the last run stopped before "
            "writing them)")
    if ended:
        say(f"{paths.folder}: the run ends at epoch {ckpt['epoch']}, as epochs={opt['epochs']} asks: wrote "
            f"{', '.join(ended)}")


def record_run(paths: TrialPaths, opt: dict[str, Any], argv: list[str], device: torch.device, speed: dict[str, Any],
               seed: int, summary: str, processes: int = 1) -> None:
    """options.yml (the options as they run, speed settings as they apply here), run.json (one entry per start or
    resume: command, code, libraries, machine) and the network summary."""
    atomic_write_text(paths.options, options_text(opt))
    sessions = []
    if paths.provenance.is_file():
        try:
            sessions = json.loads(paths.provenance.read_text()).get("sessions", [])
        except (OSError, ValueError, AttributeError):
            sessions = []
    sessions.append(session(argv, device, speed, seed, processes))
    atomic_write_text(paths.provenance, json.dumps({"sessions": sessions}, indent=1))
    paths.summary.write_text(summary)


def network_summary(method: torch.nn.Module) -> str:
    lines = []
    for name, module in method.named_children():
        n = sum(p.numel() for p in module.parameters())
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        lines.append(f"{name}: {n:,} parameters ({trained:,} trained)")
    return "\n".join(lines) + "\n\n" + repr(method) + "\n"
