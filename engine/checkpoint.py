"""A trial and its checkpoint: the trial's folder and the files in it, where each lives, how an epoch's files are
written, how they are read, and what a resume may continue from.

    experiments/<experiment>/trial_<t>/
        options.yml  run.json  train.log  network_summary.txt  results.json  events.out.tfevents.*
        model/checkpoint.pth  model/best.pth  model/ckpt_epoch_<epochs>.pth

`model/checkpoint.pth` holds everything a resume needs and is written first at the end of an epoch: it is
the commit. best.pth, ckpt_epoch_<epochs>.pth and results.json follow and can always be rebuilt from it
(`repair`), so a stop between any two writes leaves a trial that resumes to files that agree.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.files import atomic_save, atomic_write_text
from utils.rng import TrialRNG
from utils.trialfiles import TrialFileRefused, read_trial_json


class ResumeError(ValueError):
    """A resume target that cannot be used: one line saying which and why."""


@dataclass
class RunState:
    """What survives an epoch boundary, in the checkpoint."""
    epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class TrialPaths:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.model_dir = self.folder / "model"
        self.checkpoint = self.model_dir / "checkpoint.pth"
        self.best = self.model_dir / "best.pth"
        self.options = self.folder / "options.yml"
        self.results = self.folder / "results.json"
        self.provenance = self.folder / "run.json"
        self.log = self.folder / "train.log"
        self.summary = self.folder / "network_summary.txt"

    def epoch_file(self, epoch: int) -> Path:
        """CRD's layout (`ckpt_epoch_240.pth`), so a run's `path.teacher` can point here directly."""
        return self.model_dir / f"ckpt_epoch_{epoch}.pth"

    @property
    def number(self) -> int:
        return int(self.folder.name.removeprefix("trial_"))


@dataclass
class Trial:
    """One trial of a run: its folder, random state and progress, and the state it last saved."""
    paths: TrialPaths
    seed: int
    rng: TrialRNG
    state: RunState = field(default_factory=RunState)
    saved: tuple[dict[str, torch.Tensor], dict[str, Any] | None] | None = None  # (method, optimizer) states
    writer: Any = None  # a TensorBoard SummaryWriter on the main process
    diverged: str | None = None

    @property
    def label(self) -> str:
        return f"trial {self.paths.number}"


def experiment_folder(opt: dict[str, Any], default_name: str) -> Path:
    return Path(opt["experiments_dir"]) / (opt["experiment_name"] or default_name)


def make_checkpoint(*, epoch: int, student: dict[str, torch.Tensor], method: dict[str, torch.Tensor],
                    optimizer: dict[str, Any], state: RunState, accuracy: float, opt: dict[str, Any],
                    rng: dict[str, Any], seed: int, teacher_fingerprint: float | None,
                    teacher_acc: float | None, processes: int) -> dict[str, Any]:
    """A superset of CRD's layout (it loads as a teacher) and of the published CoCoRD one (the same tensors, saved
    once); with the teacher's accuracy, so that results.json can be rebuilt from it alone."""
    return {"epoch": epoch, "model": student, "s_model_dict": student, "best_acc": state.best_acc,
            "best_acc1": state.best_acc, "best_epoch": state.best_epoch, "accuracy": accuracy,
            "arch": opt["student_model"], "optimizer": optimizer, "method": method, "history": state.history,
            "rng": rng, "seed": seed, "options": opt, "teacher_fingerprint": teacher_fingerprint,
            "teacher_acc": teacher_acc, "processes": processes}


def recorded_teacher_acc(paths: TrialPaths, ckpt: dict[str, Any]) -> float | None:
    """The teacher accuracy a trial's run recorded (its checkpoint's; an older checkpoint's results.json)."""
    if isinstance(ckpt.get("teacher_acc"), (int, float)):
        return ckpt["teacher_acc"]
    value = (_read_json(paths.results) or {}).get("teacher_acc")
    return value if isinstance(value, (int, float)) else None


def results_of(ckpt: dict[str, Any], extra: dict[str, Any], opt: dict[str, Any] | None = None) -> dict[str, Any]:
    """What results.json holds, computed from a checkpoint and the options the run goes on with (by default
    the checkpoint's own; a resume may have raised `epochs`)."""
    opt, history = opt or ckpt["options"], ckpt["history"]
    last = history[-1] if history else {}
    return {"finished": ckpt["epoch"] >= opt["epochs"], "best_acc": ckpt["best_acc"], "best_epoch": ckpt["best_epoch"],
            "last_acc": last.get("val_top1"), "last_epoch": last.get("epoch"), "last_top5": last.get("val_top5"),
            **extra, "student_model": opt["student_model"], "teacher_model": opt["teacher_model"],
            "distill": opt["distill"], "epochs": opt["epochs"], "history": history}


def _write_best(paths: TrialPaths, ckpt: dict[str, Any]) -> None:
    atomic_save({"epoch": ckpt["epoch"], "model": ckpt["model"], "s_model_dict": ckpt["model"],
                 "best_acc": ckpt["best_acc"], "best_acc1": ckpt["best_acc"], "arch": ckpt["arch"]}, paths.best)


def _write_epoch_file(paths: TrialPaths, ckpt: dict[str, Any]) -> None:
    atomic_save({"epoch": ckpt["epoch"], "model": ckpt["model"], "best_acc": ckpt["best_acc"],
                 "optimizer": ckpt["optimizer"]}, paths.epoch_file(ckpt["epoch"]))


def _write_results(paths: TrialPaths, results: dict[str, Any]) -> None:
    atomic_write_text(paths.results, json.dumps(results, indent=1, allow_nan=False))


def save_epoch(paths: TrialPaths, ckpt: dict[str, Any], extra: dict[str, Any]) -> None:
    """The end of an epoch on disk: the checkpoint first (the commit), then what derives from it."""
    atomic_save(ckpt, paths.checkpoint)
    if ckpt["best_epoch"] == ckpt["epoch"]:
        _write_best(paths, ckpt)
    if ckpt["epoch"] == ckpt["options"]["epochs"]:
        _write_epoch_file(paths, ckpt)
    _write_results(paths, results_of(ckpt, extra))


def repair(paths: TrialPaths, ckpt: dict[str, Any], extra: dict[str, Any], opt: dict[str, Any]
           ) -> tuple[list[str], list[str]]:
    """Rewrite whatever a stop after the checkpoint left behind it, and bring results.json to the run as it goes
    on with `opt`; returns (the files repaired: they did not agree with the checkpoint, the files written because
    `opt` ends the run at the checkpoint's epoch)."""
    fixed, ended = [], []
    as_saved = json.loads(json.dumps(results_of(ckpt, extra)))  # what the checkpoint's epoch wrote
    if ckpt["epoch"] == opt["epochs"] != ckpt["options"]["epochs"]:  # the run ends where it stands
        ckpt = {**ckpt, "options": opt}
        atomic_save(ckpt, paths.checkpoint)
        ended.append(paths.checkpoint.name)
    if ckpt["best_epoch"] == ckpt["epoch"] and saved_epoch(paths.best) != ckpt["epoch"]:
        _write_best(paths, ckpt)
        fixed.append(paths.best.name)
    if ckpt["epoch"] == ckpt["options"]["epochs"] and not paths.epoch_file(ckpt["epoch"]).is_file():
        _write_epoch_file(paths, ckpt)
        (ended if ended else fixed).append(paths.epoch_file(ckpt["epoch"]).name)
    old = _read_json(paths.results)
    if old is None or any(old.get(k) != v for k, v in as_saved.items() if k not in extra):
        fixed.append(paths.results.name)
    results = results_of(ckpt, extra, opt)
    if old != json.loads(json.dumps(results)):
        _write_results(paths, results)
    return fixed, ended


def saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint file holds (its tensors are mapped, not read), or None."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - missing, damaged or foreign: rewrite it
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    """results.json within the limits every reader of trial files keeps; None if missing or refused (rewritten)."""
    try:
        return read_trial_json(path)
    except TrialFileRefused:
        return None


# What a resume reads from a checkpoint, and its type: a file without one of them is damaged.
_CHECKPOINT_KEYS = {"epoch": int, "best_acc": (int, float), "best_epoch": int, "history": list, "rng": dict,
                    "method": dict, "optimizer": dict, "options": dict, "model": dict, "arch": str}


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise ResumeError(f"cannot read checkpoint {path} ({type(err).__name__}); it is damaged or not ours") from None
    if not isinstance(ckpt, dict) or "method" not in ckpt or "epoch" not in ckpt or "options" not in ckpt:
        raise ResumeError(f"{path} is not a checkpoint written by this project's training (no method state); "
                          "it can be used as path.teacher, not for resume")
    if bad := [key for key, kind in _CHECKPOINT_KEYS.items() if not isinstance(ckpt.get(key), kind)]:
        raise ResumeError(f"checkpoint {path} lacks {', '.join(bad)} or holds something else there: it is damaged; "
                          "put back a good copy, or move the trial folder away and train the trial again")
    return ckpt


def check_resumable_files(paths: TrialPaths, epochs: int) -> None:
    """The files a resumed trial writes are files or absent (a folder in the place of one would stop the run
    after it had rewritten the others), and its run.json can be read."""
    names = (paths.options, paths.results, paths.provenance, paths.log, paths.summary, paths.best,
             paths.checkpoint, paths.epoch_file(epochs))
    for path in (*names, *(p.with_name(p.name + ".tmp") for p in names)):
        if path.is_dir() or path.exists() and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a regular file"
            raise ResumeError(f"cannot resume {paths.folder}: {path.relative_to(paths.folder)} is {kind}, where the "
                              "run writes a file; move it away and resume again")
    recorded_sessions(paths)


def recorded_sessions(paths: TrialPaths) -> list[Any]:
    """The starts and resumes of the trial that its run.json records, read within the limits of every trial file
    (a deep nest or a huge file is refused in one line, not a RecursionError or MemoryError)."""
    if not paths.provenance.is_file():
        return []
    try:
        sessions = read_trial_json(paths.provenance).get("sessions", [])
        if not isinstance(sessions, list):
            raise TrialFileRefused(f"{paths.provenance.name} holds no list of sessions")
    except TrialFileRefused as err:
        raise ResumeError(f"cannot resume {paths.folder}: {err}; move it away and resume again") from None
    return sessions


def trained_evidence(paths: TrialPaths) -> list[str]:
    """The files that show a trial has trained an epoch (results.json and model/ are written only after an epoch's
    checkpoint): a trial that holds them but no checkpoint has lost it, and must not start again over them."""
    found = [paths.results.name] if paths.results.exists() else []
    if paths.model_dir.is_dir():
        found += [f"model/{p.name}" for p in sorted(paths.model_dir.iterdir()) if not p.name.endswith(".tmp")]
    return found


def missing_run_message(paths: TrialPaths) -> str:
    if not paths.folder.exists():
        return (f"nothing to resume: there is no run at {paths.folder} (no such folder); to start it, run the command "
                "without --resume")
    if not paths.folder.is_dir():
        return f"nothing to resume: {paths.folder} is a file, not a trial folder; move it away"
    if paths.checkpoint.exists():
        return (f"nothing to resume at {paths.folder}: its model/checkpoint.pth is not a regular file; put the "
                "checkpoint back, or move the folder away to train the trial again from the start")
    if evidence := trained_evidence(paths):
        shows = "shows" if len(evidence) == 1 else "show"
        return (f"nothing to resume at {paths.folder}: its model/checkpoint.pth is missing, though "
                f"{', '.join(evidence[:3])} {shows} it trained; put the checkpoint back, or move the folder away to "
                "train the trial again from the start")
    return (f"nothing to resume at {paths.folder}: its first epoch never finished (no model/checkpoint.pth); run the "
            "command without --resume to start it again")


_TRIAL_NAME = re.compile(r"trial_[1-9][0-9]*")


def resume_target(target: str) -> TrialPaths:
    """The trial a `path.resume` names: a trial folder, or the model/checkpoint.pth inside one. A checkpoint
    anywhere else is refused: continuing it would write into some other run's folder."""
    path = Path(target)
    folder = path if path.is_dir() else path.parent.parent
    if not _TRIAL_NAME.fullmatch(folder.name):  # ".", "..": the name of the folder they are
        folder = folder.resolve()
    paths = TrialPaths(folder)
    if path.is_dir() or path.name == paths.checkpoint.name and path.parent.name == "model":
        if not _TRIAL_NAME.fullmatch(folder.name):  # the trial's number (its seed) comes from the name
            raise ResumeError(f"cannot resume from {target}: the run's folder {folder.name!r} is not named trial_N "
                              "as a trial folder is (an archived trial: rename it trial_N first)")
        if not paths.checkpoint.is_file():
            raise ResumeError(missing_run_message(paths))
        return paths
    if not path.exists():
        raise ResumeError(f"nothing to resume at {target}: no such file or folder")
    raise ResumeError(f"cannot resume from {target}: name a trial folder or the model/checkpoint.pth inside one "
                      "(a checkpoint elsewhere has no run folder to continue; copy the whole trial folder instead)")

