"""The comparison table of the runs below a folder, beside the CoCoRD paper's numbers.

    python tools/summarize.py [FOLDER] [--json]

FOLDER is any folder (default: experiments): every trial_<N>/ folder below it (tools/runs.py) is a trial. One row
per pair, method and setting: trials are averaged only when every option that decides the result is the same
(options.settings), and a trial in several folders (same options, same seed) counts once. The method is the
run's `distill:` name, with '+kd' where a KD term is added (loss_kd > 0).
No torch: it runs in a second wherever the results are.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import textwrap
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

from runs import DEFAULTS, OPTIONS_DIR, collect_runs, options_file

from options.yamlfile import YamlRefused, read_yaml_file

PAPER_FILE = Path(__file__).resolve().parent / "paper_results.yml"
# The methods the paper's tables have a column for (tools/paper_results.yml), in the tables' order.
PAPER_COLUMN = {"kd": "kd", "crd": "crd", "cocord": "cocord", "cocord+kd": "cocord_kd"}
PAPER_KD_WEIGHT = 1.0  # a '+kd' row's published KD weight where its method's file has none: CRD+KD's alpha
_MISSING = "(unset)"
PROTOCOL = ("best: a trial's highest test top-1 (%); last: its test top-1 after the last epoch; each a mean "
            "+- sample sd (n-1) over the row's finished trials. trials: finished/all. paper: the CoCoRD paper's "
            "number (tools/paper_results.yml), compared with last. setting: the options off the published ones "
            "(options/train_*.yml); '-': none.")


def show(value: Any) -> str:
    """A normalised value as written in a setting: 240, 0.0005, true, null, [150,180,210]."""
    if isinstance(value, tuple):
        return "[" + ",".join(show(v) for v in value) + "]"
    text = json.dumps(value) if value is None or isinstance(value, bool) else str(value)
    if not text.isprintable():  # a hand-edited value with a newline must not break a line of the table
        text = repr(text)[1:-1]
    return text[:-2] if isinstance(value, float) and text.endswith(".0") else text


@cache
def _method_files() -> dict[str, str]:
    """{distill name: the first options/train_*.yml that trains it}: each method's published configuration."""
    found: dict[str, str] = {}
    for path in sorted(OPTIONS_DIR.glob("train_*.yml")):
        try:
            distill = (read_yaml_file(path) or {}).get("distill", "cocord")
        except (YamlRefused, AttributeError):
            continue
        found.setdefault(str(distill), path.name)
    return found


def reference(distill: str, method: str) -> dict[str, Any]:
    """The published options of a row's method (defaults, then its options file); no 'options.yml' marker."""
    ref = {**options_file(DEFAULTS), **options_file(_method_files().get(distill, DEFAULTS))}
    if method.endswith("+kd") and not ref.get("loss_kd"):
        ref["loss_kd"] = PAPER_KD_WEIGHT
    return {**ref, "options.yml": _MISSING}


def load_paper(path: Path = PAPER_FILE) -> list[dict[str, Any]]:
    data = (read_yaml_file(path) or {}) if path.is_file() else {}
    return [entry for entries in data.values() for entry in entries]


def paper_data(dataset: str, n_cls: float | None) -> bool:
    """Whether runs are on the paper's data: CIFAR-100, all 100 classes."""
    return dataset == "cifar100" and n_cls == 100


def _paper_value(paper: list[dict[str, Any]], teacher: str | None, student: str, method: str,
                 on_paper_data: bool) -> tuple[float | None, str | None]:
    """The paper's number for a row and its column (vanilla: a network trained alone, so the paper's student
    column, else its teacher column); none for data other than the paper's."""
    if method == "vanilla":
        found = [(e[f"{r}_acc"], f"{r}_acc") for r in ("student", "teacher") for e in paper if e[r] == student]
    else:
        column = PAPER_COLUMN.get(method)
        found = [(e[column], column) for e in paper
                 if (e["teacher"], e["student"]) == (teacher, student) and column in e]
    return found[0] if found and on_paper_data else (None, None)


def data_label(dataset: str, n_cls: float | None, folders: list[str]) -> str:
    """'CIFAR-100' for the paper's data, else what the runs' options say: 'data_demo, 10 classes (...)'."""
    if paper_data(dataset, n_cls):
        return "CIFAR-100"
    parts = ([] if dataset == "cifar100" else [dataset]) + folders + [f"{show(n_cls)} classes"]
    return f"{', '.join(parts)} (not the paper's CIFAR-100)"


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _differs(options: dict[str, Any], ref: dict[str, Any], varying: set[str]) -> dict[str, Any]:
    """Options off the published values, and those without one that vary between the rows of a pair and method."""
    known = "options.yml" not in options  # without options.yml, what the run lacks is unknown, not unset
    keys = [k for k in sorted(set(options) | varying) if k in options or known]
    values = {k: options.get(k, _MISSING) for k in keys}
    return {k: v for k, v in values.items() if (v != ref[k] if k in ref else k in varying)}


def _distinct(members: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the row's trials, repeats): one run of the same options with the same seed in several folders (a column
    run by hand, then in a sweep) is one trial, counted once: the finished copy, else the furthest trained."""
    kept: dict[Any, dict[str, Any]] = {}
    repeats = []
    for r in sorted(members, key=lambda r: (r["status"] != "finished", -(r["last_epoch"] or 0), r["path"])):
        key = r["path"] if r["seed"] is None else r["seed"]  # no seed recorded: cannot tell
        if key in kept:
            repeats.append({"name": r["name"], "same_as": kept[key]["name"], "seed": r["seed"]})
        else:
            kept[key] = r
    return sorted(kept.values(), key=lambda r: r["path"]), repeats


def group_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows: finished and unfinished runs of one (teacher, student, method, dataset, options), in the paper's
    order; 'n' counts the finished trials (the means are theirs), 'n_unfinished' the others, 'repeated' the
    copies of a trial counted once."""
    paper = load_paper()
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        if r["status"] in ("finished", "unfinished"):
            setting = tuple(sorted(r["options"].items(), key=lambda kv: kv[0]))
            groups.setdefault((r["teacher"], r["student"], r["method"], r["dataset"], setting), []).append(r)
    repeated = {}
    for key, members in groups.items():
        groups[key], repeated[key] = _distinct(members)
    siblings: dict[tuple, list[dict[str, Any]]] = {}  # the option sets of each (pair, method)
    for key in groups:
        siblings.setdefault(key[:4], []).append(dict(key[4]))
    diffs = {}
    for key, members in groups.items():
        sets = siblings[key[:4]]
        varying = {k for k in set().union(*sets) if len({show(o.get(k, _MISSING)) for o in sets}) > 1}
        diffs[key] = _differs(dict(key[4]), reference(members[0]["distill"], key[2]), varying)
    order = {(e["teacher"], e["student"]): i for i, e in enumerate(paper)}
    rank = {m: i for i, m in enumerate(PAPER_COLUMN)}

    def sort_key(k: tuple) -> tuple:
        return (k[2] == "vanilla", order.get(k[:2], len(order)), str(k[0]), k[1], k[3],
                show(dict(k[4]).get("n_cls")), rank.get(k[2], len(rank)), k[2], len(diffs[k]), str(diffs[k]))
    out = []
    for key in sorted(groups, key=sort_key):
        t, s, m, d, options = key
        done = [r for r in groups[key] if r["status"] == "finished"]
        best_mean, best_std = _mean_sd([r["best_acc"] for r in done])
        last_mean, last_std = _mean_sd([r["last_acc"] for r in done])
        n_cls = groups[key][0]["n_cls"]
        value, column = _paper_value(paper, t, s, m, paper_data(d, n_cls))
        t_acc, _ = _mean_sd([r["teacher_acc"] for r in done if r["teacher_acc"] is not None])
        differs = {k: show(v) if v is not _MISSING else v for k, v in diffs[key].items()}
        out.append({"teacher": t, "student": s, "method": m, "dataset": d, "n_cls": n_cls,
                    "data_folders": sorted({r["data_folder"] for r in groups[key] if r["data_folder"]}),
                    "setting": " ".join(f"{k}={v}" for k, v in differs.items()) or "-", "differs": differs,
                    "n": len(done), "n_unfinished": len(groups[key]) - len(done), "best_mean": best_mean,
                    "best_std": best_std, "last_mean": last_mean, "last_std": last_std, "teacher_acc": t_acc,
                    "paper": value, "paper_column": column,
                    "diff": None if value is None or last_mean is None else last_mean - value,
                    "options": dict(options), "trials": [r["path"] for r in done],
                    "unfinished_trials": [r["path"] for r in groups[key] if r["status"] != "finished"],
                    "repeated": repeated[key]})
    return out


def pair_name(teacher: str | None, student: Any) -> str:
    return str(student) if teacher is None else f"{teacher} -> {student}"


def _f(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _pm(mean: float | None, sd: float | None) -> str:
    return _f(mean) + ("" if sd is None else f" +- {sd:.2f}")


def split_settings(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """(the options off the published ones that every row shares, each row's other options or '-'): what
    sets the rows of one pair apart, with what they have in common said once."""
    shared = {k: v for k, v in rows[0]["differs"].items() if all(g["differs"].get(k) == v for g in rows)}
    return (" ".join(f"{k}={v}" for k, v in shared.items()),
            [" ".join(f"{k}={v}" for k, v in g["differs"].items() if k not in shared) or "-" for g in rows])


def _block(rows: list[dict[str, Any]], width: int) -> list[str]:
    """One pair's rows: a header line (pair, teacher, data), the options every row shares, then the table;
    a setting that does not fit beside the numbers goes on its own wrapped line under its row."""
    g0 = rows[0]
    teachers = [g["teacher_acc"] for g in rows if g["teacher_acc"] is not None]
    head = pair_name(g0["teacher"], g0["student"]) + (f"  (teacher {_f(statistics.fmean(teachers))}"
                                                       f" measured)" if teachers else "")
    folders = sorted({f for g in rows for f in g["data_folders"]})
    lines = textwrap.wrap(f"{head}  data: {data_label(g0['dataset'], g0['n_cls'], folders)}", width,
                          subsequent_indent="    ", break_on_hyphens=False)
    shared, settings = split_settings(rows)
    if shared:
        lines += textwrap.wrap("all rows: " + shared, width, initial_indent="  ", subsequent_indent="    ",
                               break_on_hyphens=False)
    table = [["method", "trials", "best", "last", "paper", "last-paper"]]
    for g in rows:
        table.append([g["method"], f"{g['n']}/{g['n'] + g['n_unfinished']}", _pm(g["best_mean"], g["best_std"]),
                      _pm(g["last_mean"], g["last_std"]), _f(g["paper"]), _f(g["diff"], "+.2f")])
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    cells = ["  " + "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in table]
    beside = all(len(c) + 2 + len(s) <= width for c, s in zip(cells[1:], settings))
    if beside and any(s != "-" for s in settings):
        cells = [c + "  " + s for c, s in zip(cells, ["setting", *settings])]
    for i, line in enumerate(cells):
        lines.append(line.rstrip())
        if i and not beside and settings[i - 1] != "-":
            lines += textwrap.wrap("setting: " + settings[i - 1], width, initial_indent="      ",
                                   subsequent_indent="        ", break_on_hyphens=False)
    return lines


def summarize(root: str | Path, runs: list[dict[str, Any]], notes: list[str], width: int | None = None) -> str:
    """The text report, fitted to `width` columns (default: the terminal's): the header with the protocol,
    one block per pair, then the unfinished, damaged and archived trials."""
    width = width or shutil.get_terminal_size().columns
    counts = Counter(r["status"] for r in runs)
    if not Path(root).is_dir():
        return f"error: folder {root} not found; give the folder that holds the runs (trial_<N>/ folders below it)"
    if len(runs) == counts["archived"]:
        extra = f" ({counts['archived']} archived trial folder(s) skipped)" if runs else ""
        return f"error: no runs found in {root}: no trial_<N>/ folder holding results.json below it{extra}"
    groups = group_runs(runs)
    lines = textwrap.wrap(f"{root}: {counts['finished']} finished trial(s), {counts['unfinished']} unfinished, "
                          f"{counts['damaged']} damaged, in {len(groups)} row(s); {counts['archived']} archived "
                          "trial folder(s) skipped", width)
    lines += textwrap.wrap(PROTOCOL, width) + [f"note: {n}" for n in notes]
    blocks: dict[tuple, list[dict[str, Any]]] = {}
    for g in groups:
        blocks.setdefault((g["teacher"], g["student"], g["dataset"], g["n_cls"]), []).append(g)
    for rows in blocks.values():
        lines += [""] + _block(rows, width)
    unfinished = [r for r in runs if r["status"] == "unfinished"]
    if unfinished:
        lines += ["", f"Unfinished trials ({len(unfinished)}, counted in trials, not averaged):"]
        lines += [f"  {r['name']}: epoch {_f(r['last_epoch'], 'g')}/{_f(r['epochs'], 'g')}"
                  + (f" ({r['note']})" if r.get("note") else "") for r in unfinished]
    repeats = [r for g in groups for r in g["repeated"]]
    if repeats:
        lines += ["", f"Repeated trials ({len(repeats)}, the same options and seed as a trial counted; left out):"]
        lines += [f"  {r['name']}: as {r['same_as']} (seed {_f(r['seed'], 'g')})" for r in repeats]
    bad = [r for r in runs if r["status"] == "damaged"]
    if bad:
        lines += ["", f"Damaged trials ({len(bad)}, left out):"] + [f"  {r['name']}: {r['error']}" for r in bad]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The comparison table of the runs below a folder, beside the "
                                                 "CoCoRD paper (best and last top-1, mean +- sd over trials).")
    parser.add_argument("root", nargs="?", default="experiments",
                        help="any folder holding trial_<N>/ folders below it (default: experiments)")
    parser.add_argument("--json", action="store_true", help="print rows, unfinished and damaged trials as JSON")
    args = parser.parse_args(argv)
    runs, notes = collect_runs(args.root)
    if not any(r["status"] != "archived" for r in runs):
        print(summarize(args.root, runs, notes), file=sys.stderr)
        return 2
    brief = [{k: v for k, v in r.items() if k != "curve"} for r in runs]  # histories stay out of the JSON
    print(json.dumps({"root": args.root, "groups": group_runs(runs),
                      "unfinished": [r for r in brief if r["status"] == "unfinished"],
                      "damaged": [r for r in brief if r["status"] == "damaged"],
                      "archived_skipped": sum(r["status"] == "archived" for r in runs), "notes": notes}, indent=1)
          if args.json else summarize(args.root, runs, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
