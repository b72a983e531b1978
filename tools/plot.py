"""Figures of the runs under an experiments folder (PNG, into figs/ by default).

    python tools/plot.py [EXPERIMENTS_DIR] [--out figs] [--bench bench/results] [--json]

- curves_<pair>.png: test top-1 per epoch of each method and setting of a pair: the mean over its trials,
  and a band from the lowest to the highest trial;
- paper_comparison.png: the last top-1 of our finished runs (mean, sd error bar) beside the paper's student,
  KD, CRD, CoCoRD and CoCoRD+KD columns for the same pairs;
- speed.png: training images/s of each variant in bench/results/*.jsonl (lines without rates are skipped).

Runs are found and grouped by tools/summarize.py, so a figure's series are exactly the summary's rows.
Prints each file written and its title (--json: also the values plotted). No finished run: exit status 2.
"""
from __future__ import annotations

import argparse
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

PAPER_BARS = (("student_acc", "student"), ("kd", "KD"), ("crd", "CRD"), ("cocord", "CoCoRD"),
              ("cocord_kd", "CoCoRD+KD"))  # the paper's columns beside ours, in its tables' order
DPI = 120


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_")


def _label(group: dict[str, Any], width: int = 60) -> str:
    """'cocord (n=2)' plus the setting that sets the row apart, wrapped for a legend or an axis."""
    text = f"{group['method']} (n={group['n']})"
    if group["setting"] != "-":
        text += " " + group["setting"]
    return "\n".join(textwrap.wrap(text, width))


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def curve_series(group: dict[str, Any], curves: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Per epoch: mean, lowest and highest test top-1 over the group's trials (each trial's history)."""
    by_epoch: dict[float, list[float]] = {}
    for path in group["trials"]:
        for epoch, top1 in curves.get(path, []):
            by_epoch.setdefault(epoch, []).append(top1)
    epochs = sorted(by_epoch)
    return {"label": _label(group).replace("\n", " "), "epochs": epochs,
            "mean": [statistics.mean(by_epoch[e]) for e in epochs], "min": [min(by_epoch[e]) for e in epochs],
            "max": [max(by_epoch[e]) for e in epochs], "trials": [len(by_epoch[e]) for e in epochs]}


def plot_curves(groups: list[dict[str, Any]], runs: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One figure per pair: a line (mean) and a band (min-max over trials) per method and setting."""
    curves = {r["path"]: r.get("curve", []) for r in runs}
    pairs: dict[tuple, list[dict[str, Any]]] = {}
    for g in groups:
        pairs.setdefault((g["teacher"], g["student"], g["dataset"]), []).append(g)
    figures = []
    for (teacher, student, dataset), members in pairs.items():
        name = summarize.pair_name(teacher, student, dataset)
        title = f"{name}: test top-1 per epoch"
        drawn = [(g, s) for g, s in ((g, curve_series(g, curves)) for g in members) if s["epochs"]]
        if not drawn:  # histories missing (hand-made results.json): nothing to draw for this pair
            continue
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for g, s in drawn:
            line, = ax.plot(s["epochs"], s["mean"], label=_label(g), linewidth=1.6,
                            marker="o" if len(s["epochs"]) <= 30 else None, markersize=3)
            if max(s["trials"]) > 1:
                ax.fill_between(s["epochs"], s["min"], s["max"], color=line.get_color(), alpha=0.2, linewidth=0)
        for column, value in sorted({(g["paper_column"], g["paper"]) for g in members if g["paper"] is not None}):
            ax.axhline(value, color="0.5", linestyle="--", linewidth=0.8, label=f"paper {column}: {value:.2f}")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set(title=title, xlabel="epoch", ylabel="test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="line: mean of trials; band: min to max", title_fontsize=7)
        path = out / f"curves_{_slug(name.replace(' -> ', '_to_'))}.png"
        _save(fig, path)
        figures.append({"kind": "curves", "path": str(path), "title": title, "series": [s for _, s in drawn]})
    return figures


def paper_bars(groups: list[dict[str, Any]], paper: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per distillation pair (CIFAR-100): the paper's columns and our rows (the student trained alone too)."""
    order = {(e["teacher"], e["student"]): i for i, e in enumerate(paper)}
    pairs = sorted({(g["teacher"], g["student"]) for g in groups if g["teacher"] and g["dataset"] == "cifar100"},
                   key=lambda p: (order.get(p, len(order)), p))
    out = []
    for teacher, student in pairs:
        entry = next((e for e in paper if (e["teacher"], e["student"]) == (teacher, student)), {})
        bars = [{"label": f"paper: {name}", "value": entry[col], "sd": None, "source": "paper"}
                for col, name in PAPER_BARS if col in entry]
        ours = [g for g in groups if g["dataset"] == "cifar100" and g["student"] == student
                and g["teacher"] in (teacher, None)]
        bars += [{"label": "ours: " + _label(g, 48), "value": g["last_mean"], "sd": g["last_std"], "source": "ours"}
                 for g in ours]
        out.append({"pair": summarize.pair_name(teacher, student, "cifar100"), "in_paper": bool(entry),
                    "bars": bars})
    return out


def plot_paper(groups: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One horizontal bar chart per pair, stacked: our last top-1 beside the paper's columns."""
    panels = paper_bars(groups, summarize.load_paper())
    if not panels:
        return []
    heights = [0.45 * len(p["bars"]) + 0.9 for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, panel in zip(axes[:, 0], panels):
        values = [b["value"] for b in panel["bars"]]
        low = max(0.0, min(values) - 5)  # zoomed in per pair: a few points apart is what matters
        bars = panel["bars"][::-1]  # barh draws bottom-up; the paper's columns on top
        ax.barh(range(len(bars)), [b["value"] - low for b in bars], left=low,
                xerr=[b["sd"] or 0 for b in bars], color=["0.7" if b["source"] == "paper" else "C0" for b in bars])
        for y, b in enumerate(bars):
            ax.text(b["value"] + (b["sd"] or 0) + 0.2, y, f"{b['value']:.2f}", va="center", fontsize=7)
        ax.set_yticks(range(len(bars)), [b["label"] for b in bars], fontsize=7)
        ax.set_xlim(low, max(values) + 4)
        ax.set_title(panel["pair"] + ("" if panel["in_paper"] else " (not in the paper's tables)"), fontsize=9)
    axes[-1, 0].set_xlabel("CIFAR-100 test top-1 (%) at the last epoch (axes zoomed, not from 0); error bar: sd")
    title = "ours (blue) beside the CoCoRD paper (grey): " + ", ".join(p["pair"] for p in panels)
    fig.suptitle(textwrap.fill(title, 90), fontsize=9)
    path = out / "paper_comparison.png"
    _save(fig, path)
    return [{"kind": "paper", "path": str(path), "title": title, "panels": panels}]


def read_speed(bench: Path) -> dict[str, dict[str, Any]]:
    """{file stem: {"pairs": {pair: {variant: images/s}}, "device", "batch"}} from bench/*.jsonl; lines
    without rates (e.g. equivalence checks) are skipped, and so are files with none."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(bench.glob("*.jsonl")) if bench.is_dir() else []:
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict) or not isinstance(row.get("pair"), str):
                continue
            rates = {k: v["images_per_s"] for k, v in row.items() if isinstance(v, dict)
                     and isinstance(v.get("images_per_s"), (int, float)) and not isinstance(v["images_per_s"], bool)}
            if rates:  # a later line for a pair adds or re-measures variants
                entry = found.setdefault(path.stem, {"pairs": {}, "device": row.get("device"),
                                                     "batch": row.get("batch")})
                entry["pairs"].setdefault(row["pair"], {}).update(rates)
    return found


def plot_speed(bench: Path, out: Path) -> list[dict[str, Any]]:
    """Grouped bars per pair, one bar per variant, one panel per results file."""
    files = read_speed(bench)
    if not files:
        return []
    fig, axes = plt.subplots(1, len(files), figsize=(6.5 * len(files), 4.5), squeeze=False)
    for ax, (stem, entry) in zip(axes[0], files.items()):
        pairs = entry["pairs"]
        variants = list(dict.fromkeys(v for rates in pairs.values() for v in rates))
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            xs = [j + (i - (len(variants) - 1) / 2) * width for j, r in enumerate(pairs.values()) if variant in r]
            ys = [r[variant] for r in pairs.values() if variant in r]
            ax.bar(xs, ys, width, label=variant)
            for x, y in zip(xs, ys):
                ax.text(x, y, f"{y:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
        ax.set_xticks(range(len(pairs)), [p.replace(":", " ->\n") for p in pairs], fontsize=8)
        ax.set_title(f"{stem}\n{entry['device'] or 'device not recorded'}, batch {entry['batch'] or '?'}", fontsize=9)
        ax.set_ylabel("training images/s")
        ax.set_ylim(0, 1.35 * max(max(r.values()) for r in pairs.values()))  # room for the legend above the bars
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    title = f"training speed per variant ({bench})"
    fig.suptitle(title, fontsize=9)
    path = out / "speed.png"
    _save(fig, path)
    return [{"kind": "speed", "path": str(path), "title": title, "files": files}]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Figures of the runs: curves, paper comparison, speed.")
    parser.add_argument("root", nargs="?", default="experiments", help="experiments folder (default: experiments)")
    parser.add_argument("--out", default="figs", help="folder for the PNG files (default: figs)")
    parser.add_argument("--bench", default="bench/results", help="speed results, *.jsonl (default: bench/results)")
    parser.add_argument("--json", action="store_true", help="print the figures and the values plotted as JSON")
    args = parser.parse_args(argv)
    runs = summarize.collect_runs(args.root)
    groups = summarize.group_runs(runs)
    if not groups:
        only_archived = all(r["status"] == "archived" for r in runs)  # also: no folder, or no run in it
        reason = summarize.summarize(args.root, runs) if only_archived else \
            f"no finished runs in {args.root} (unfinished or unreadable only: see tools/summarize.py)"
        print(f"nothing to plot: {reason}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = plot_curves(groups, runs, out) + plot_paper(groups, out) + plot_speed(Path(args.bench), out)
    skipped = [] if any(f["kind"] == "speed" for f in figures) else [f"speed: no rates in {args.bench}/*.jsonl"]
    if args.json:
        print(json.dumps({"root": args.root, "figures": figures, "skipped": skipped}, indent=1))
    else:
        print("\n".join([f"{f['path']}  {f['title']}" for f in figures] + [f"skipped {s}" for s in skipped]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
