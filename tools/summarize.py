"""Summarise the runs under an experiments folder against the CoCoRD paper's numbers.

    python tools/summarize.py [EXPERIMENTS_DIR] [--json]

A run is any trial_<N>/ folder, at any depth, holding options.yml and/or results.json; finished runs are
averaged only with runs of the same pair, method and options (options.settings says which options count).
No torch: it runs in a second wherever the results are.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from options.settings import normalize, result_settings

PAPER_FILE = Path(__file__).resolve().parent / "paper_results.yml"
OPTIONS_DIR = Path(__file__).resolve().parents[1] / "options"
METHODS = ("cocord", "cocord+kd", "kd", "vanilla")
PAPER_COLUMN = {"cocord": "cocord", "cocord+kd": "cocord_kd", "kd": "kd"}  # others: their own name
PAIR_KEYS = {"student_model", "teacher_model", "distill", "dataset"}  # already the row's pair and method
# Each method's published configuration (options/ beside tools/); a row's 'setting' names the options where it
# differs. DEFAULTS holds every key at the value main.py fills in, so a key an options.yml lacks (written before
# the key existed) counts as that value. CoCoRD+KD: loss_kd 1.0, CRD's CRD+KD weight (the paper states none).
DEFAULTS = "train_student.yml"
REFERENCE = {"cocord": (DEFAULTS, {}), "cocord+kd": (DEFAULTS, {"loss_kd": 1.0}), "kd": ("train_kd.yml", {}),
             "vanilla": ("train_teacher.yml", {})}
TRIAL = re.compile(r"trial_(\d+)")
_MISSING = "(unset)"


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compared_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The flattened options that can change a run's result (its 'setting'), beyond pair and method."""
    return {k: v for k, v in result_settings(opts).items() if k not in PAIR_KEYS}


def show(value: Any) -> str:
    """A normalised value as written in the setting column: 240, 0.0005, true, null, [150,180,210]."""
    if isinstance(value, tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


@cache
def options_file(name: str) -> dict[str, Any]:
    """options/<name> as compared options ({} where the options folder is not beside tools/)."""
    try:
        return compared_options(yaml.safe_load((OPTIONS_DIR / name).read_text()) or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return {}


def reference(method: str) -> dict[str, Any]:
    """The published options of `method` (defaults, its file, fixed values); no 'options.yml: missing' marker."""
    name, fixed = REFERENCE.get(method, (DEFAULTS, {}))
    return {**options_file(DEFAULTS), **options_file(name), **compared_options(fixed), "options.yml": _MISSING}


def _method(distill: str, opts: dict[str, Any]) -> str:
    with_kd = distill == "cocord" and float(opts.get("loss_kd") or 0) > 0
    return "vanilla" if distill == "none" else "cocord+kd" if with_kd else distill


def _load_options(trial: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = trial / "options.yml"
    if not path.is_file():
        return None, None
    try:
        opts = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return None, f"options.yml unreadable: {str(err).splitlines()[0]}"
    return (opts, None) if isinstance(opts, dict) else (None, "options.yml is not a mapping")


def _curve(history: Any) -> list[list[float]]:
    """[[epoch, test top-1], ...] from results.json's history (entries without both are skipped)."""
    return [[h["epoch"], h["val_top1"]] for h in history if isinstance(h, dict) and _num(h.get("epoch"))
            and _num(h.get("val_top1"))] if isinstance(history, list) else []


def _read_trial(trial: Path) -> dict[str, Any]:
    run: dict[str, Any] = {"path": str(trial), "status": "unreadable"}
    opts, opt_err = _load_options(trial)
    res: Any = {}
    if (trial / "results.json").is_file():
        try:
            res = json.loads((trial / "results.json").read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            return {**run, "error": f"results.json: {err}"}
        if not isinstance(res, dict):
            return {**run, "error": "results.json is not a JSON object"}
    elif opts is None:
        return {**run, "error": opt_err or "no results.json and no options.yml"}
    src = {**(opts or {}), **res}  # results.json is what actually ran; options.yml adds the loss weights
    distill = src.get("distill")
    if not isinstance(distill, str):
        return {**run, "error": "no 'distill' in results.json or options.yml"}
    if distill == "cocord" and opts is None:  # CoCoRD and CoCoRD+KD cannot be told apart: refuse to guess
        return {**run, "error": opt_err or "options.yml missing (needed for loss_kd)"}
    method = _method(distill, opts or {})
    # Without options.yml only the epochs are known: such a run is never averaged with a complete one.
    options = {**options_file(DEFAULTS), **compared_options(opts)} if opts is not None else {
        "epochs": normalize(res.get("epochs")), "options.yml": "missing"}
    run.update(status="finished" if res.get("finished") is True else "unfinished", method=method,
               student=src.get("student_model"), teacher=None if method == "vanilla" else src.get("teacher_model"),
               dataset=src.get("dataset", "cifar100"), options=options, epochs=src.get("epochs"),
               last_epoch=res.get("last_epoch"), best_acc=res.get("best_acc"), best_epoch=res.get("best_epoch"),
               last_acc=res.get("last_acc"), teacher_acc=res.get("teacher_acc"), curve=_curve(res.get("history")),
               note=None if res else "no results.json yet")
    bad = [k for k in ("best_acc", "last_acc") if not _num(run[k])]
    if run["status"] == "finished" and (bad or not isinstance(run["student"], str)):
        return {"path": run["path"], "status": "unreadable", "error": f"results.json lacks "
                f"{', '.join(bad) or 'student_model'}"}
    return run


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """One dict per trial_<N>/ folder below root, at any depth; 'status' is finished, unfinished, unreadable
    (with 'error') or archived (a trial in a folder renamed *_archived_*; nothing else read)."""
    found, archived = [], []
    for dirpath, dirnames, _ in os.walk(root):  # a missing root yields nothing
        keep = []
        for name in sorted(dirnames):
            sub = Path(dirpath) / name
            if "_archived_" in name:  # a renamed trial, or a renamed experiment: count its trials
                archived += [sub] if TRIAL.match(name) else [Path(d) for d, _, _ in os.walk(sub)
                                                             if TRIAL.match(Path(d).name)]
            elif TRIAL.fullmatch(name):  # a run; nothing inside it is searched
                if (sub / "options.yml").is_file() or (sub / "results.json").is_file():
                    found.append(sub)
            else:
                keep.append(name)
        dirnames[:] = keep
    found.sort(key=lambda p: (str(p.parent), int(TRIAL.fullmatch(p.name).group(1))))  # trial_10 after trial_9
    return [_read_trial(t) for t in found] + [{"path": str(t), "status": "archived"} for t in sorted(archived)]


def load_paper(path: Path = PAPER_FILE) -> list[dict[str, Any]]:
    data = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return [entry for entries in data.values() for entry in entries]


def _paper_value(paper: list[dict[str, Any]], teacher: str | None, student: str, method: str,
                 dataset: str) -> tuple[float | None, str | None]:
    """The paper's number for this row and its column (vanilla: a network trained alone, so the paper's
    student column, else its teacher column)."""
    column = PAPER_COLUMN.get(method, method)
    if method == "vanilla":
        found = [(e[f"{r}_acc"], f"{r}_acc") for r in ("student", "teacher") for e in paper if e[r] == student]
    else:
        found = [(e[column], column) for e in paper
                 if (e["teacher"], e["student"]) == (teacher, student) and column in e]
    return found[0] if found and dataset == "cifar100" else (None, None)


def _setting(options: dict[str, Any], method: str, siblings: list[dict[str, Any]]) -> str:
    """'k=v ...': options off the method's published values, and others that differ between its pair's rows."""
    ref = reference(method)
    varying = {k for k in set().union(*siblings) if len({o.get(k, _MISSING) for o in siblings}) > 1}
    known = "options.yml" not in options  # without options.yml, what the run lacks is unknown, not unset
    items = [(k, options.get(k, _MISSING)) for k in sorted(set(options) | varying) if k in options or known]
    return " ".join(f"{k}={v if v is _MISSING else show(v)}" for k, v in items
                    if (v != ref[k] if k in ref else k in varying)) or "-"


def group_runs(runs: list[dict[str, Any]], paper: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Finished runs averaged per (teacher, student, method, dataset, options), in the paper's order."""
    paper = load_paper() if paper is None else paper
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["status"] == "finished":
            setting = tuple(sorted(r["options"].items(), key=lambda kv: kv[0]))
            groups.setdefault((r["teacher"], r["student"], r["method"], r["dataset"], setting), []).append(r)
    siblings: dict[tuple, list[dict[str, Any]]] = {}  # the option sets of each (pair, method)
    for key in groups:
        siblings.setdefault(key[:4], []).append(dict(key[4]))
    settings = {key: _setting(dict(key[4]), key[2], siblings[key[:4]]) for key in groups}
    order = {(e["teacher"], e["student"]): i for i, e in enumerate(paper)}
    rank = {m: i for i, m in enumerate(METHODS)}
    out = []
    for key in sorted(groups, key=lambda k: (k[2] == "vanilla", order.get(k[:2], len(order)), str(k[0]), k[1],
                                             rank.get(k[2], len(rank)), k[2], k[3], settings[k] != "-", settings[k])):
        t, s, m, d, options = key
        members = groups[key]
        (best_mean, best_std), (last_mean, last_std) = (  # mean and sample std (none for one trial)
            (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None)
            for v in ([r[k] for r in members] for k in ("best_acc", "last_acc")))
        t_accs = [r["teacher_acc"] for r in members if _num(r.get("teacher_acc"))]
        value, column = _paper_value(paper, t, s, m, d)
        out.append({"teacher": t, "student": s, "method": m, "dataset": d, "setting": settings[key],
                    "n": len(members), "best_mean": best_mean, "best_std": best_std, "last_mean": last_mean,
                    "last_std": last_std, "teacher_acc": statistics.mean(t_accs) if t_accs else None,
                    "paper": value, "paper_column": column, "diff": None if value is None else last_mean - value,
                    "options": dict(options), "trials": [r["path"] for r in members]})
    return out


def pair_name(teacher: str | None, student: Any, dataset: str) -> str:
    name = str(student) if teacher is None else f"{teacher} -> {student}"
    return name if dataset == "cifar100" else f"{name} [{dataset}]"


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in rows]


def summarize(root: str | Path, runs: list[dict[str, Any]] | None = None) -> str:
    """The text report: the table of finished runs, then unfinished, unreadable and archived counts."""
    runs = collect_runs(root) if runs is None else runs
    archived = sum(r["status"] == "archived" for r in runs)
    if not Path(root).is_dir():
        return f"experiments folder {root} not found (pass the folder that holds <experiment>/trial_<N>/)"
    if len(runs) == archived:
        extra = f" ({archived} archived trial folder(s) skipped)" if archived else ""
        return f"no runs found in {root}: expected trial_<N>/ folders holding results.json below it{extra}"
    groups = group_runs(runs)
    lines = [f"{sum(g['n'] for g in groups)} finished run(s) in {root}, {len(groups)} group(s); "
             f"{archived} archived trial folder(s) skipped", ""]
    if groups:
        head = ["pair", "method", "n", "best", "sd", "last", "sd", "teacher", "paper", "last-paper", "setting"]
        rows = [head] + [[pair_name(g["teacher"], g["student"], g["dataset"]), g["method"], str(g["n"]),
                          _f(g["best_mean"]), _f(g["best_std"]), _f(g["last_mean"]), _f(g["last_std"]),
                          _f(g["teacher_acc"]), _f(g["paper"]), _f(g["diff"], "+.2f"), g["setting"]] for g in groups]
        lines += _table(rows, right=set(range(2, len(head) - 1)))
        lines += ["", "best/last: top-1 % mean; sd: sample std (n-1); teacher: its measured accuracy; paper: CoCoRD",
                  "paper (tools/paper_results.yml; vanilla: student_acc, else teacher_acc); setting: the options that",
                  "differ from options/train_*.yml or between rows of a pair and method (never averaged together)."]
    else:
        lines.append("no finished runs yet")
    unfinished = [r for r in runs if r["status"] == "unfinished"]
    if unfinished:
        lines += ["", f"Unfinished runs ({len(unfinished)}, not averaged):"]
        lines += [f"  {r['path']}  {r['method']} {pair_name(r['teacher'], r['student'], r['dataset'])}  epoch "
                  f"{r['last_epoch'] if r['last_epoch'] is not None else '-'}/{r['epochs']}"
                  + (f"  ({r['note']})" if r.get("note") else "") for r in unfinished]
    bad = [r for r in runs if r["status"] == "unreadable"]
    if bad:
        lines += ["", f"Unreadable runs ({len(bad)}, skipped):"] + [f"  {r['path']}: {r['error']}" for r in bad]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarise experiment runs against the CoCoRD paper.")
    parser.add_argument("root", nargs="?", default="experiments", help="experiments folder (default: experiments)")
    parser.add_argument("--json", action="store_true", help="print groups, unfinished and unreadable runs as JSON")
    args = parser.parse_args(argv)
    runs = collect_runs(args.root)
    if not any(r["status"] != "archived" for r in runs):
        print(summarize(args.root, runs), file=sys.stderr)
        return 2
    brief = [{k: v for k, v in r.items() if k != "curve"} for r in runs]  # histories stay out of the JSON
    print(json.dumps({"root": args.root, "groups": group_runs(runs),
                      "unfinished": [r for r in brief if r["status"] == "unfinished"],
                      "unreadable": [r for r in brief if r["status"] == "unreadable"],
                      "archived_skipped": sum(r["status"] == "archived" for r in runs)}, indent=1)
          if args.json else summarize(args.root, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
