"""speed.png for tools/plot.py: the training speed recorded by bench/speed.py in bench/results/*.jsonl.

Those files are measurements committed with the code, each made on the device it names (e.g. one H100); the
figure says so, since they are not the runs the other figures draw nor a measurement of this machine.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

DPI = 120
COMMITTED = Path(__file__).resolve().parents[1] / "bench" / "results"  # the project's own measurements
MAX_FILE_BYTES = 1 << 24  # a results file is a few kilobytes


def save(fig: plt.Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def read_speed(bench: Path) -> dict[str, dict[str, Any]]:
    """{file stem: {"pairs": {pair: {variant: images/s}}, "device", "batch"}} from bench/*.jsonl; lines
    without rates (e.g. equivalence checks) are skipped, and so are files with none."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(bench.glob("*.jsonl")) if bench.is_dir() else []:
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if not isinstance(row, dict) or not isinstance(row.get("pair"), str):
                continue
            rates = {k: float(v["images_per_s"]) for k, v in row.items() if isinstance(v, dict)
                     and isinstance(v.get("images_per_s"), (int, float)) and not isinstance(v["images_per_s"], bool)
                     and 0 < v["images_per_s"] < 1e12}
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
    fig, axes = plt.subplots(1, len(files), figsize=(6.5 * len(files), 5), squeeze=False, layout="constrained")
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
        ax.set_title(f"{stem}\nmeasured on {entry['device'] or 'a device not recorded'}, batch {entry['batch'] or '?'}",
                     fontsize=9)
        ax.set_ylabel("training images/s")
        ax.set_ylim(0, 1.35 * max(max(r.values()) for r in pairs.values()))  # room for the legend above the bars
        ax.legend(fontsize=7, ncol=3, loc="upper left")
    title = f"training speed per variant, as recorded in {bench}/*.jsonl by bench/speed.py"
    committed = bench.resolve() == COMMITTED.resolve()
    subtitle = ("the measurements committed with the code, " if committed else "measurements ") + \
        "made on the device each panel names: not the runs above" + (", not this machine" if committed else "")
    fig.suptitle(f"{title}\n{subtitle}", fontsize=9)
    path = out / "speed.png"
    save(fig, path)
    return [{"kind": "speed", "path": str(path), "title": title, "subtitle": subtitle, "files": files}]
