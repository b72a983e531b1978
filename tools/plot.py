"""Figures of the runs below a folder (PNG, into figs/ by default).

    python tools/plot.py [FOLDER] [--out figs] [--bench bench/results] [--json]

- curves_<pair>.png: test top-1 per epoch of each method and setting of a pair: the mean over its trials, a band
  from the lowest to the highest trial, the teacher's measured accuracy and the paper's number;
- paper_comparison.png: the last top-1 of our finished CIFAR-100 runs (mean, sd error bar) beside the paper's
  student, KD, CRD, CoCoRD and CoCoRD+KD columns, for the pairs of the paper's tables only;
- speed.png: training images/s of each variant recorded in bench/results/*.jsonl by bench/speed.py (the
  committed measurements, on the device each panel names: not this machine's runs).

FOLDER is any folder: runs are found and grouped by tools/summarize.py, so a figure's series are the summary's
rows. Prints each file written and its title, and one line per figure or pair left out (--json: also the
values plotted). No finished run: exit status 2.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed, none opened
import matplotlib.pyplot as plt
import matplotlib.ticker
import summarize
from plot_speed import plot_speed, save
from runs import collect_runs

PAPER_BARS = (("student_acc", "student"), ("kd", "KD"), ("crd", "CRD"), ("cocord", "CoCoRD"),
              ("cocord_kd", "CoCoRD+KD"))  # the paper's columns beside ours, in its tables' order
# 40 distinguishable lines: the ten default colours, solid, then dashed, dash-dotted and dotted.
CURVE_STYLES = matplotlib.cycler(linestyle=["-", "--", "-.", ":"]) * matplotlib.cycler(
    color=plt.get_cmap("tab10").colors)
MAX_STEM = 80  # characters of a file name taken from model names (a file system allows 255 bytes)
LINE_IN = 0.2  # inches per line of a bar label (7 pt text)


def file_stem(text: str) -> str:
    """A file name from free text: safe characters only, cut (with a hash of the whole, to stay unique)."""
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_.") or "run"
    return slug if len(slug) <= MAX_STEM else f"{slug[:MAX_STEM]}_{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _label(group: dict[str, Any], width: int = 60, setting: str | None = None) -> str:
    """'cocord (n=2)' plus the setting that sets the row apart, wrapped for a legend or an axis."""
    setting = group["setting"] if setting is None else setting
    text = f"{group['method']} (n={group['n']})" + ("" if setting == "-" else " " + setting)
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def curve_series(group: dict[str, Any], curves: dict[str, list[list[float]]], label: str) -> dict[str, Any]:
    """Per epoch: mean, lowest and highest test top-1 over the group's trials (each trial's history)."""
    by_epoch: dict[float, list[float]] = {}
    for path in group["trials"]:
        for epoch, top1 in curves.get(path, []):
            by_epoch.setdefault(epoch, []).append(top1)
    epochs = sorted(by_epoch)
    return {"label": label, "epochs": epochs,
            "mean": [statistics.fmean(by_epoch[e]) for e in epochs], "min": [min(by_epoch[e]) for e in epochs],
            "max": [max(by_epoch[e]) for e in epochs], "trials": [len(by_epoch[e]) for e in epochs]}


def plot_curves(groups: list[dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One figure per pair and data: a line (mean) and a band (min-max over trials) per method and setting, a
    dotted line for the teacher's measured accuracy, a dashed one for the paper's number."""
    curves = {r["path"]: r.get("curve", []) for r in runs}
    pairs: dict[tuple, list[dict[str, Any]]] = {}
    for g in groups:
        pairs.setdefault((g["teacher"], g["student"], g["dataset"], g["n_cls"]), []).append(g)
    figures = []
    for (teacher, student, dataset, n_cls), members in pairs.items():
        name = summarize.pair_name(teacher, student)
        data = summarize.data_label(dataset, n_cls, sorted({f for g in members for f in g["data_folders"]}))
        shared, settings = summarize.split_settings(members)
        title = f"{name}: test top-1 per epoch ({data})"
        labels = [_label(g, setting=s) for g, s in zip(members, settings)]
        drawn = [s for s in (curve_series(g, curves, label.replace("\n", " ")) for g, label in zip(members, labels))
                 if s["epochs"]]
        if not drawn:  # histories missing (hand-made results.json): nothing to draw for this pair
            continue
        fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
        ax.set_prop_cycle(CURVE_STYLES)
        for s in drawn:
            line, = ax.plot(s["epochs"], s["mean"], label=textwrap.fill(s["label"], 60), linewidth=1.6,
                            marker="o" if len(s["epochs"]) <= 30 else None, markersize=3)
            if max(s["trials"]) > 1:
                ax.fill_between(s["epochs"], s["min"], s["max"], color=line.get_color(), alpha=0.2, linewidth=0)
        teachers = sorted({round(g["teacher_acc"], 2) for g in members if g["teacher_acc"] is not None})
        for value in teachers:
            ax.axhline(value, color="k", linestyle=":", linewidth=1, label=f"teacher (measured): {value:.2f}")
        for column, value in sorted({(g["paper_column"], g["paper"]) for g in members if g["paper"] is not None}):
            ax.axhline(value, color="0.5", linestyle="--", linewidth=0.8, label=f"paper {column}: {value:.2f}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(xlabel="epoch", ylabel="test top-1 (%)")
        heading = textwrap.wrap(title, 100) + textwrap.wrap(f"all lines: {shared}" if shared else "", 100)
        ax.set_title("\n".join(heading), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="line: mean of trials; band: min to max", title_fontsize=7)
        stem = name.replace(" -> ", "_to_") + ("" if summarize.paper_data(dataset, n_cls) else
                                                f"_{dataset}_{summarize.show(n_cls)}cls")
        path = out / f"curves_{file_stem(stem)}.png"
        save(fig, path)
        figures.append({"kind": "curves", "path": str(path), "title": title, "teacher": teachers,
                        "series": drawn})
    return figures


def paper_bars(groups: list[dict[str, Any]], paper: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(panels, pairs left out and why): per pair of the paper's tables with runs on its data (CIFAR-100, 100
    classes), the paper's columns and our rows (the student trained alone too)."""
    order = {(e["teacher"], e["student"]): i for i, e in enumerate(paper)}
    panels, left_out, pairs = [], [], set()
    for g in [g for g in groups if g["teacher"] and g["method"] != "vanilla"]:
        pair = summarize.pair_name(g["teacher"], g["student"])
        if (g["teacher"], g["student"]) not in order:
            left_out.append(f"{pair}: not in the paper's tables (tools/paper_results.yml)")
        elif not summarize.paper_data(g["dataset"], g["n_cls"]):
            left_out.append(f"{pair} on {summarize.data_label(g['dataset'], g['n_cls'], g['data_folders'])}")
        else:
            pairs.add((g["teacher"], g["student"]))
    for teacher, student in sorted(pairs, key=lambda p: order[p]):
        entry = paper[order[(teacher, student)]]
        bars = [{"label": f"paper: {name}", "value": entry[col], "sd": None, "source": "paper"}
                for col, name in PAPER_BARS if col in entry]
        ours = [g for g in groups if summarize.paper_data(g["dataset"], g["n_cls"]) and g["student"] == student
                and g["teacher"] in (teacher, None)]
        bars += [{"label": "ours: " + _label(g, 48), "value": g["last_mean"], "sd": g["last_std"], "source": "ours",
                  "data_folders": g["data_folders"]} for g in ours]
        panels.append({"pair": summarize.pair_name(teacher, student), "bars": bars})
    return panels, list(dict.fromkeys(left_out))


def draw_paper(panels: list[dict[str, Any]]) -> plt.Figure:
    """One horizontal bar chart per pair, stacked; each bar as tall as its label's lines, each panel as tall as
    its bars (labels never overlap, however many rows or however long the settings)."""
    lines = [[b["label"].count("\n") + 1 for b in p["bars"][::-1]] for p in panels]  # barh draws bottom-up
    heights = [LINE_IN * sum(n) + 0.6 for n in lines]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights) + 1.1), squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    for ax, panel, n in zip(axes[:, 0], panels, lines):
        values = [b["value"] for b in panel["bars"]]
        low = max(0.0, min(values) - 5)  # zoomed in per pair: a few points apart is what matters
        bars = panel["bars"][::-1]  # the paper's columns on top
        ys = [sum(n[:i]) + n[i] / 2 for i in range(len(n))]  # each bar in the middle of its label's lines
        ax.barh(ys, [b["value"] - low for b in bars], left=low, height=0.7, xerr=[b["sd"] or 0 for b in bars],
                color=["0.7" if b["source"] == "paper" else "C0" for b in bars])
        for y, b in zip(ys, bars):
            ax.text(b["value"] + (b["sd"] or 0) + 0.2, y, f"{b['value']:.2f}", va="center", fontsize=7)
        ax.set_yticks(ys, [b["label"] for b in bars], fontsize=7)
        ax.set_ylim(0, sum(n))
        ax.set_xlim(low, max(values) + 4)
        ax.set_title(panel["pair"], fontsize=9)
    folders = sorted({f for p in panels for b in p["bars"] for f in b.get("data_folders", [])})
    axes[-1, 0].set_xlabel("test top-1 (%) at the last epoch (axes zoomed, not from 0); error bar: sd over trials",
                           fontsize=8)
    fig.suptitle(textwrap.fill("ours (blue) beside the CoCoRD paper (grey), CIFAR-100 (100 classes)"
                               + (f" read from {', '.join(folders)}" if folders else ""), 100), fontsize=9)
    return fig


def plot_paper(groups: list[dict[str, Any]], out: Path) -> tuple[list[dict[str, Any]], list[str]]:
    panels, left_out = paper_bars(groups, summarize.load_paper())
    skipped = [f"paper comparison for {why}" for why in left_out]
    if not panels:
        return [], skipped
    path = out / "paper_comparison.png"
    save(draw_paper(panels), path)
    title = "ours beside the CoCoRD paper: " + ", ".join(p["pair"] for p in panels)
    return [{"kind": "paper", "path": str(path), "title": title, "panels": panels}], skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Figures of the runs: curves, paper comparison, speed.")
    parser.add_argument("root", nargs="?", default="experiments",
                        help="any folder holding trial_<N>/ folders below it (default: experiments)")
    parser.add_argument("--out", default="figs", help="folder for the PNG files (default: figs)")
    parser.add_argument("--bench", default="bench/results", help="speed results, *.jsonl (default: bench/results)")
    parser.add_argument("--json", action="store_true", help="print the figures and the values plotted as JSON")
    args = parser.parse_args(argv)
    runs, notes = collect_runs(args.root)
    groups = [g for g in summarize.group_runs(runs) if g["n"]]  # finished trials only
    if not groups:
        only_archived = all(r["status"] == "archived" for r in runs)  # also: no folder, or no run in it
        reason = summarize.summarize(args.root, runs, notes).removeprefix("error: ") if only_archived else \
            f"no finished runs in {args.root} (unfinished or damaged only: see tools/summarize.py)"
        print(f"error: nothing to plot: {reason}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        papers, skipped = plot_paper(groups, out)
        figures = plot_curves(groups, runs, out) + papers + plot_speed(Path(args.bench), out)
    except OSError as err:  # --out a file, a figure's name taken by a folder, a read-only folder
        where = f": {err.filename}" if err.filename else ""
        print(f"error: cannot write the figures into {args.out} ({err.strerror or err}{where}); give --out a folder "
              "this user can write", file=sys.stderr)
        return 2
    damaged = sum(r["status"] == "damaged" for r in runs)
    skipped += [f"{damaged} damaged trial(s): see tools/summarize.py {args.root}"] if damaged else []
    skipped += [] if any(f["kind"] == "speed" for f in figures) else [f"speed: no rates in {args.bench}/*.jsonl"]
    if args.json:
        print(json.dumps({"root": args.root, "figures": figures, "skipped": skipped, "notes": notes}, indent=1))
    else:
        print("\n".join([f"{f['path']}  {f['title']}" for f in figures] + [f"skipped {s}" for s in skipped]
                        + [f"note: {n}" for n in notes]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
