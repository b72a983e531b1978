"""Summarise experiments/*/trial_*/ runs against the CoCoRD paper's numbers.

    python tools/summarize.py [EXPERIMENTS_DIR] [--json]

Finished runs are grouped by (teacher, student, method, setting) and averaged; unfinished runs are
listed with their last epoch; unreadable ones are reported by path. Standalone on purpose (standard
library + PyYAML, no torch, no project imports) so it runs in a second anywhere the results are.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

PAPER_FILE = Path(__file__).resolve().parent / "paper_results.yml"
METHODS = ("cocord", "cocord+kd", "kd", "vanilla")
PAPER_COLUMN = {"cocord": "cocord", "cocord+kd": "cocord_kd", "kd": "kd"}  # others: their own name
# Published defaults (SPEC section 6; loss_kd 1.0 for the +KD/KD runs). A run that differs in one of
# these is labelled with it and never averaged with runs at the defaults.
COMMON = {"dataset": "cifar100", "epochs": 240, "batch_size": 64, "learning_rate": 0.05}
BY_METHOD = {
    "cocord": {"loss_ctr": 1.0, "loss_cls": 1.0, "loss_pred": 4.0, "cocord.T": 0.1, "cocord.key_size": 2048},
    "kd": {"loss_cls": 1.0, "loss_kd": 1.0, "kd_T": 4.0},
}
BY_METHOD["cocord+kd"] = {**BY_METHOD["cocord"], "loss_kd": 1.0, "kd_T": 4.0}


def _num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trial_key(path: Path) -> tuple[str, int, str]:
    m = re.match(r"trial_(\d+)", path.name)  # trial_10 after trial_9
    return (path.parent.name, int(m.group(1)) if m else -1, path.name)


def _method(distill: str, opts: dict[str, Any]) -> str:
    if distill == "none":
        return "vanilla"
    if distill == "cocord" and float(opts.get("loss_kd") or 0) > 0:
        return "cocord+kd"
    return distill


def _setting(method: str, opts: dict[str, Any]) -> str:
    """The options of this run that differ from the published defaults, e.g. 'epochs=10'."""
    diffs = []
    for key, default in {**COMMON, **BY_METHOD.get(method, {})}.items():
        node: Any = opts
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and node != default:
            diffs.append(f"{key}={node}")
    return " ".join(diffs) or "-"


def _load_options(trial: Path) -> tuple[dict[str, Any] | None, str | None]:
    path = trial / "options.yml"
    if not path.is_file():
        return None, None
    try:
        opts = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        return None, f"options.yml unreadable: {str(err).splitlines()[0]}"
    return (opts, None) if isinstance(opts, dict) else (None, "options.yml is not a mapping")


def _read_trial(trial: Path) -> dict[str, Any]:
    run: dict[str, Any] = {"path": str(trial)}
    opts, opt_err = _load_options(trial)
    res_path = trial / "results.json"
    res: dict[str, Any] = {}
    if res_path.is_file():
        try:
            res = json.loads(res_path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            return {**run, "status": "unreadable", "error": f"results.json: {err}"}
        if not isinstance(res, dict):
            return {**run, "status": "unreadable", "error": "results.json is not a JSON object"}
    elif opts is None:
        return {**run, "status": "unreadable", "error": opt_err or "no results.json and no options.yml"}
    src = {**(opts or {}), **res}  # results.json is what actually ran; options.yml adds the loss weights
    distill = src.get("distill")
    if not isinstance(distill, str):
        return {**run, "status": "unreadable", "error": "no 'distill' in results.json or options.yml"}
    if distill == "cocord" and opts is None:
        # Without options.yml, CoCoRD and CoCoRD+KD cannot be told apart: refuse to guess.
        return {**run, "status": "unreadable", "error": opt_err or "options.yml missing (needed for loss_kd)"}
    method = _method(distill, opts or {})
    run.update(status="finished" if res.get("finished") is True else "unfinished", method=method,
               student=src.get("student_model"), teacher=None if method == "vanilla" else src.get("teacher_model"),
               dataset=src.get("dataset", "cifar100"), setting=_setting(method, {**(opts or {}), **res}),
               epochs=src.get("epochs"), last_epoch=res.get("last_epoch"), best_acc=res.get("best_acc"),
               best_epoch=res.get("best_epoch"), last_acc=res.get("last_acc"), teacher_acc=res.get("teacher_acc"))
    if not res:
        run["note"] = "no results.json yet"
    if run["status"] == "finished":
        bad = [k for k in ("best_acc", "last_acc") if not _num(run[k])]
        if bad or not isinstance(run["student"], str):
            return {"path": run["path"], "status": "unreadable",
                    "error": f"results.json lacks {', '.join(bad) or 'student_model'}"}
    return run


def collect_runs(root: str | Path) -> list[dict[str, Any]]:
    """One dict per trial folder under root/<experiment>/; 'status' is finished, unfinished,
    unreadable (with 'error') or archived (a folder renamed *_archived_*; nothing else read)."""
    root = Path(root)
    if not root.is_dir():
        return []
    trials = [t for exp in root.iterdir() if exp.is_dir()
              for t in exp.iterdir() if t.is_dir() and t.name.startswith("trial_")]
    runs = []
    for trial in sorted(trials, key=_trial_key):
        if "_archived_" in trial.name or "_archived_" in trial.parent.name:
            runs.append({"path": str(trial), "status": "archived"})
        else:
            runs.append(_read_trial(trial))
    return runs


def load_paper(path: Path = PAPER_FILE) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    data = yaml.safe_load(path.read_text()) or {}
    return [entry for entries in data.values() for entry in entries]


def _paper_value(paper: list[dict[str, Any]], teacher: str | None, student: str, method: str,
                 dataset: str) -> tuple[float | None, str | None]:
    """The paper's number for this row and the column it came from."""
    if dataset != "cifar100":
        return None, None
    if method == "vanilla":  # a network trained alone: the paper's student, else its teacher column
        for role in ("student", "teacher"):
            for e in paper:
                if e[role] == student:
                    return e[f"{role}_acc"], f"{role}_acc"
        return None, None
    column = PAPER_COLUMN.get(method, method)
    for e in paper:
        if e["teacher"] == teacher and e["student"] == student and column in e:
            return e[column], column
    return None, None


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def group_runs(runs: list[dict[str, Any]], paper: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Finished runs averaged per (teacher, student, method, dataset, setting), in the paper's order."""
    paper = load_paper() if paper is None else paper
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["status"] == "finished":
            groups.setdefault((r["teacher"], r["student"], r["method"], r["dataset"], r["setting"]), []).append(r)
    order = {(e["teacher"], e["student"]): i for i, e in enumerate(paper)}

    def sort_key(key: tuple) -> tuple:
        t, s, m, d, setting = key
        rank = METHODS.index(m) if m in METHODS else len(METHODS)
        return (m == "vanilla", order.get((t, s), len(order)), str(t), s, rank, m, d, setting != "-", setting)

    out = []
    for key in sorted(groups, key=sort_key):
        t, s, m, d, setting = key
        members = groups[key]
        best_mean, best_std = _mean_std([r["best_acc"] for r in members])
        last_mean, last_std = _mean_std([r["last_acc"] for r in members])
        t_accs = [r["teacher_acc"] for r in members if _num(r.get("teacher_acc"))]
        value, column = _paper_value(paper, t, s, m, d)
        out.append({"teacher": t, "student": s, "method": m, "dataset": d, "setting": setting, "n": len(members),
                    "best_mean": best_mean, "best_std": best_std, "last_mean": last_mean, "last_std": last_std,
                    "teacher_acc": statistics.mean(t_accs) if t_accs else None, "paper": value,
                    "paper_column": column, "diff": None if value is None else last_mean - value,
                    "trials": [r["path"] for r in members]})
    return out


def _pair(teacher: str | None, student: Any, dataset: str) -> str:
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
    live = [r for r in runs if r["status"] != "archived"]
    archived = len(runs) - len(live)
    if not Path(root).is_dir():
        return f"experiments folder {root} not found (pass the folder that holds <experiment>/trial_<N>/)"
    if not live:
        extra = f" ({archived} archived trial folder(s) skipped)" if archived else ""
        return f"no runs found in {root}: expected {root}/<experiment>/trial_<N>/results.json{extra}"
    groups = group_runs(runs)
    lines = [f"{sum(g['n'] for g in groups)} finished run(s) in {root}, {len(groups)} group(s); "
             f"{archived} archived trial folder(s) skipped", ""]
    if groups:
        head = ["pair", "method", "setting", "n", "best", "sd", "last", "sd", "teacher", "paper", "last-paper"]
        rows = [head] + [[_pair(g["teacher"], g["student"], g["dataset"]), g["method"], g["setting"], str(g["n"]),
                          _f(g["best_mean"]), _f(g["best_std"]), _f(g["last_mean"]), _f(g["last_std"]),
                          _f(g["teacher_acc"]), _f(g["paper"]), _f(g["diff"], "+.2f")] for g in groups]
        lines += _table(rows, right=set(range(3, len(head))))
        lines += ["", "best/last: top-1 % mean, sd: sample std (n-1); teacher: its measured accuracy (mean);",
                  "paper: CoCoRD paper, tools/paper_results.yml (vanilla: student_acc, else teacher_acc);",
                  "setting: options that differ from the published defaults (never averaged together)."]
    else:
        lines.append("no finished runs yet")
    unfinished = [r for r in runs if r["status"] == "unfinished"]
    if unfinished:
        lines += ["", f"Unfinished runs ({len(unfinished)}, not averaged):"]
        lines += [f"  {r['path']}  {r['method']} {_pair(r['teacher'], r['student'], r['dataset'])}  epoch "
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
    if args.json:
        print(json.dumps({"root": args.root, "groups": group_runs(runs),
                          "unfinished": [r for r in runs if r["status"] == "unfinished"],
                          "unreadable": [r for r in runs if r["status"] == "unreadable"],
                          "archived_skipped": sum(r["status"] == "archived" for r in runs)}, indent=1))
    else:
        print(summarize(args.root, runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
