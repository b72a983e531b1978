"""The runs below a folder: every trial_<N>/ folder found (bounded depth, symlinks not followed), each read
within limits (utils/trialfiles.py) and checked value by value. A damaged trial is reported and left out.

No torch: summarize.py and plot.py run in a second wherever the results are.
"""
from __future__ import annotations

import math
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

from options.settings import flatten, normalize, result_settings
from options.yamlfile import YamlRefused, read_yaml_file
from utils.trialfiles import TrialFileRefused, read_trial_json, read_trial_options

TRIAL = re.compile(r"trial_(\d+)")
# An archived folder's name (utils/files.archive_name): <name>_archived_<yymmdd-HHMMSS>[_<n>]. Only that: an
# experiment_name such as ablation_archived_runs names live runs.
ARCHIVED = re.compile(r".+_archived_\d{6}-\d{6}(?:_\d+)?")
MAX_DEPTH = 12  # folders below the root searched: experiments/sweeps/<name>/<column>/<experiment>/trial_N is 5
MAX_FOLDERS = 100_000  # folders visited in all: a root such as / stops here instead of walking the disk
MAX_EPOCH = 10**6
PAIR_KEYS = {"student_model", "teacher_model", "distill", "dataset"}  # already a row's pair and method
OPTIONS_DIR = Path(__file__).resolve().parents[1] / "options"
# Every key at the value main.py fills in: a key an options.yml lacks (written before it existed) counts as this.
DEFAULTS = "train_student.yml"


class Damaged(ValueError):
    """A value a run never writes (NaN, 1e400, a 400-digit accuracy, a name with control characters)."""


def compared_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The flattened options that can change a run's result (its 'setting'), beyond pair and method."""
    try:
        found = {k: v for k, v in result_settings(opts).items() if k not in PAIR_KEYS}
        hash(tuple(found.items()))  # a list of mappings cannot be compared
    except (OverflowError, TypeError):
        raise Damaged("options.yml holds a value that is not a plain number, text or list") from None
    bad = [k for k, v in found.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise Damaged(f"options.yml: {bad[0]} is not a finite number")
    return found


@cache
def options_file(name: str) -> dict[str, Any]:
    """options/<name> as compared options ({} where the options folder is not beside tools/)."""
    try:
        return compared_options(read_yaml_file(OPTIONS_DIR / name) or {})
    except (YamlRefused, AttributeError, Damaged):
        return {}


def _found(root: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(trial folders, archived trial folders, notes on what was not searched) below root."""
    if TRIAL.fullmatch(root.name) and _is_run(root):  # the root is a trial folder itself
        return [root], [], []
    trials, archived, notes, unreadable = [], [], [], []
    links = too_deep = 0
    walk = os.walk(root, onerror=lambda err: unreadable.append(f"{err.filename} ({err.strerror})"))
    for visited, (folder, subfolders, _) in enumerate(walk, 1):
        if visited > MAX_FOLDERS:
            notes.append(f"stopped after {MAX_FOLDERS} folders: give a folder nearer the runs")
            break
        below = Path(folder).relative_to(root)
        depth, in_archive = len(below.parts), any(ARCHIVED.fullmatch(part) for part in below.parts)
        searched = []
        for name in sorted(subfolders):
            path = Path(folder, name)
            if path.is_symlink():  # never followed: a link could lead out of the folder, or loop
                links += 1
                continue
            archive = in_archive or bool(ARCHIVED.fullmatch(name))
            if TRIAL.fullmatch(name.rsplit("_archived_", 1)[0] if archive else name) and (archive or _is_run(path)):
                (archived if archive else trials).append(path)  # nothing inside a run is searched
            elif depth + 1 >= MAX_DEPTH:
                too_deep += 1
            else:
                searched.append(name)
        subfolders[:] = searched
    if links:
        notes.append(f"{links} symlinked folder(s) not followed")
    if too_deep:
        notes.append(f"{too_deep} folder(s) more than {MAX_DEPTH} levels down not searched")
    notes += [f"folder {u} cannot be read" for u in unreadable[:3]]
    trials.sort(key=lambda p: (str(p.parent), int(TRIAL.fullmatch(p.name).group(1))))  # trial_10 after trial_9
    return trials, sorted(archived), notes


def _is_run(folder: Path) -> bool:
    return (folder / "options.yml").is_file() or (folder / "results.json").is_file()


def _name(value: Any, what: str) -> str:
    if value is None:
        raise Damaged(f"no {what} in results.json or options.yml")
    if not isinstance(value, str) or not value or not value.isprintable():
        raise Damaged(f"{what} is not a name")
    return value


def _number(value: Any, what: str, low: float, high: float) -> float:
    """A finite number in [low, high]: a 400-digit integer or a value off the scale is damage."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, int) and value.bit_length() > 64) or not low <= value <= high:
        raise Damaged(f"{what} is not a number in [{low:g}, {high:g}]")
    return float(value) if isinstance(value, float) else value


def _optional(value: Any, what: str, low: float, high: float) -> float | None:
    return None if value is None else _number(value, what, low, high)


def _curve(history: Any) -> list[list[float]]:
    """[[epoch, test top-1], ...] from results.json's history (entries without both are skipped)."""
    if not isinstance(history, list):
        return []
    return [[_number(h["epoch"], "results.json: an epoch of its history", 0, MAX_EPOCH),
             _number(h["val_top1"], "results.json: a val_top1 of its history", 0, 100)]
            for h in history if isinstance(h, dict) and h.get("epoch") is not None and h.get("val_top1") is not None]


def read_trial(trial: Path) -> dict[str, Any]:
    """One run as a dict; status 'damaged' (with 'error': the file and the reason) where it cannot count."""
    try:
        return _read(trial)
    except (TrialFileRefused, Damaged) as err:
        return {"path": str(trial), "status": "damaged", "error": str(err)}


def _read(trial: Path) -> dict[str, Any]:
    opts = read_trial_options(trial / "options.yml") if (trial / "options.yml").exists() else None
    res = read_trial_json(trial / "results.json") if (trial / "results.json").exists() else {}
    src = {**(opts or {}), **res}  # results.json is what actually ran; options.yml adds the loss weights
    distill = _name(src.get("distill"), "distill")
    try:
        loss_kd = _number(normalize((opts or {}).get("loss_kd", 0.0)), "options.yml: loss_kd", 0, 1e6)
    except OverflowError:
        raise Damaged("options.yml: loss_kd is not a number in [0, 1e+06]") from None
    if opts is None and distill not in ("kd", "none"):  # with or without a KD term? refuse to guess
        raise Damaged("options.yml missing (needed for loss_kd, the KD weight)")
    # The row's method: '+kd' where a KD term is added (the KD method's weight is its own loss), 'vanilla' for a
    # network trained alone.
    method = "vanilla" if distill == "none" else f"{distill}+kd" if loss_kd > 0 and distill != "kd" else distill
    flat = flatten(opts) if opts is not None else {}
    # Without options.yml only the epochs are known: such a run is never averaged with a complete one.
    options = {**options_file(DEFAULTS), **compared_options(opts)} if opts is not None else {
        "epochs": _optional(res.get("epochs"), "results.json: epochs", 0, MAX_EPOCH), "options.yml": "missing"}
    run = {"path": str(trial), "status": "finished" if res.get("finished") is True else "unfinished",
           "method": method, "distill": distill, "loss_kd": loss_kd,
           "student": _name(src.get("student_model"), "student_model"),
           "teacher": None if method == "vanilla" else _name(src.get("teacher_model"), "teacher_model"),
           "dataset": _name(src.get("dataset", "cifar100"), "dataset"),
           "n_cls": _optional(flat.get("n_cls", 100), "options.yml: n_cls", 1, 10**7),
           "data_folder": str(flat["data_folder"]) if flat.get("data_folder") is not None else None,
           "options": options, "epochs": _optional(src.get("epochs"), "epochs", 0, MAX_EPOCH),
           "last_epoch": _optional(res.get("last_epoch"), "results.json: last_epoch", 0, MAX_EPOCH),
           "best_epoch": _optional(res.get("best_epoch"), "results.json: best_epoch", 0, MAX_EPOCH),
           "best_acc": _optional(res.get("best_acc"), "results.json: best_acc", 0, 100),
           "last_acc": _optional(res.get("last_acc"), "results.json: last_acc", 0, 100),
           "teacher_acc": _optional(res.get("teacher_acc"), "results.json: teacher_acc", 0, 100),
           "seed": _optional(res.get("seed"), "results.json: seed", 0, 2**32),  # the trial's own: seed + t - 1
           "curve": _curve(res.get("history")), "note": None if res else "no results.json yet"}
    lacking = [k for k in ("best_acc", "last_acc") if run[k] is None]
    if run["status"] == "finished" and lacking:
        raise Damaged(f"results.json says finished but lacks {', '.join(lacking)}")
    return run


def collect_runs(root: str | Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(one dict per trial_<N>/ folder below root, notes on what was not searched). 'status' is finished,
    unfinished, damaged (with 'error') or archived (a trial in a folder renamed *_archived_*; nothing read)."""
    root = Path(root)
    if not root.is_dir():
        return [], []
    trials, archived, notes = _found(root)
    runs = [read_trial(t) for t in trials] + [{"path": str(t), "status": "archived"} for t in archived]
    for r in runs:
        r["name"] = os.path.relpath(r["path"], root) if r["path"] != str(root) else root.name
    return runs, notes
