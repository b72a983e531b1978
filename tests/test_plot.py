"""tools/plot.py on real runs: two `main.py` trials on tiny data (below experiments/demo, as `make demo`
writes), a hand-made pair of the paper's tables, and the repository's own speed results."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import matplotlib.colors
import matplotlib.figure
import numpy as np
import pytest
import yaml
from conftest import ROOT
from helpers import run_main, tiny_options, write_yaml
from matplotlib import image
from test_tools import result, write_run

sys.path.insert(0, str(ROOT / "tools"))  # the tools' own modules, as when they run as scripts
import matplotlib.pyplot as plt  # noqa: E402  (after plot.py chose its backend)
import plot  # noqa: E402
import plot_speed  # noqa: E402
import summarize  # noqa: E402

PLOT = ROOT / "tools" / "plot.py"
SPEED = ROOT / "bench" / "results" / "h100_2026-11-26_final_speed.jsonl"
PAPER_PAIR = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PLOT), *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory, tiny_cifar: str, tiny_teacher: str) -> Path:
    work = tmp_path_factory.mktemp("plot")
    write_yaml(work / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, experiments_dir="experiments/demo"))
    # Two trials of one setting, trained by one main.py (one start-up, not two); trial t's seed is seed + t - 1, so
    # the curves differ.
    proc = run_main(["-opt", "opt.yml", "-t", "1-2", "--quiet"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # A pair of the paper's tables, written by hand (a 240-epoch run does not fit in a test), on CIFAR-100 in a
    # sweep's folder (several levels down), and once on 10 classes of other data (not comparable to the paper).
    published = yaml.safe_load((ROOT / "options" / "train_student.yml").read_text())
    for t, last in ((1, 71.2), (2, 71.6)):
        res = result("resnet20", "resnet56", "cocord", last + 0.2, last, 72.34)
        res["history"] = [{"epoch": e, "val_top1": last * e / 240} for e in (1, 120, 240)]
        write_run(work / "experiments" / "sweeps" / "paper" / "col_1", PAPER_PAIR, f"trial_{t}", published, res)
    write_run(work / "experiments" / "other", PAPER_PAIR, "trial_1", {**published, "n_cls": 10,
              "data_folder": "./data_demo"}, result("resnet20", "resnet56", "cocord", 80.0, 79.0, 85.0))
    return work / "experiments"


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and 300 <= pixels.shape[0] <= 4000 and 500 <= pixels.shape[1] <= 4000, pixels.shape
    assert float(np.std(pixels[..., :3])) > 0.01  # something is drawn


@pytest.mark.slow
def test_figures_of_these_runs(experiments: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(SPEED, bench)
    (bench / "other.jsonl").write_text('{"pair": "a:b", "ok": true}\nnot json\n')  # no rates: skipped
    out = tmp_path / "figs"
    proc = run_tool(str(experiments), "--out", str(out), "--bench", str(bench), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    figures = data["figures"]
    assert sorted(Path(f["path"]).name for f in figures) == [
        "curves_resnet56_to_resnet20.png", "curves_resnet56_to_resnet20_cifar100_10cls.png",
        "curves_resnet8_to_resnet8_cifar100_10cls.png", "paper_comparison.png", "speed.png"]
    for f in figures:
        assert Path(f["path"]).parent == out
        check_png(Path(f["path"]))
    by_name = {Path(f["path"]).name: f for f in figures}

    # The curves are the two trials' recorded test top-1 per epoch: mean line, min-max band, the teacher.
    curves = by_name["curves_resnet8_to_resnet8_cifar100_10cls.png"]
    assert curves["title"].startswith("resnet8 -> resnet8") and "10 classes (not the paper's CIFAR-100)" in \
        curves["title"] and "CIFAR-100)" not in curves["title"].replace("paper's CIFAR-100", "")
    (series,) = curves["series"]
    assert series["label"] == "cocord (n=2)"  # what both trials share is said once, in the title
    trials = sorted(experiments.glob("demo/*/trial_*"))
    histories = [json.loads((t / "results.json").read_text())["history"] for t in trials]
    assert len(trials) == 2 and series["epochs"] == [1, 2]
    per_epoch = [[h[i]["val_top1"] for h in histories] for i in range(2)]
    assert series["mean"] == pytest.approx([statistics.mean(v) for v in per_epoch])
    assert series["min"] == [min(v) for v in per_epoch] and series["max"] == [max(v) for v in per_epoch]
    assert series["min"] != series["max"]  # the seeds gave different trials: the band is not a line
    teacher = {json.loads((t / "results.json").read_text())["teacher_acc"] for t in trials}
    assert curves["teacher"] == [round(a, 2) for a in teacher] and len(teacher) == 1

    # The bars: the paper's five columns for its pair and our rows' mean last top-1; the rest said, not drawn.
    (panel,) = by_name["paper_comparison.png"]["panels"]
    assert panel["pair"] == "resnet56 -> resnet20"
    bars = {b["label"]: b["value"] for b in panel["bars"]}
    assert bars == {"paper: student": 69.06, "paper: KD": 70.66, "paper: CRD": 71.16, "paper: CoCoRD": 71.74,
                    "paper: CoCoRD+KD": 72.09, "ours: cocord (n=2)": pytest.approx(71.4)}
    assert sorted(data["skipped"][:2]) == [
        "paper comparison for resnet56 -> resnet20 on ./data_demo, 10 classes (not the paper's CIFAR-100)",
        "paper comparison for resnet8 -> resnet8: not in the paper's tables (tools/paper_results.yml)"]

    # The speed panel holds the results file's rates, and says they are recorded measurements; the file without
    # rates is left out.
    speed = by_name["speed.png"]
    assert list(speed["files"]) == [SPEED.stem] and "not the runs above" in speed["subtitle"]
    lines = [json.loads(line) for line in SPEED.read_text().splitlines()]
    assert speed["files"][SPEED.stem]["pairs"] == {row["pair"]: {k: v["images_per_s"] for k, v in row.items()
                                                                 if isinstance(v, dict)} for row in lines}


@pytest.mark.slow
def test_text_output_and_no_bench(experiments: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = run_tool(str(experiments / "sweeps" / "paper"), "--out", str(out), "--bench", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr  # a sweep's folder alone: its own figures
    lines = proc.stdout.strip().splitlines()
    written = [line.split("  ")[0] for line in lines if not line.startswith("skipped")]
    assert sorted(Path(p).name for p in written) == sorted(p.name for p in out.iterdir()) == [
        "curves_resnet56_to_resnet20.png", "paper_comparison.png"]
    assert any(line.startswith("skipped speed") for line in lines)
    assert any("resnet56 -> resnet20: test top-1 per epoch (CIFAR-100)" in line for line in lines)


def label_boxes(fig: plt.Figure) -> list:
    """The window extents of every label a reader must tell apart: tick labels, titles, axis labels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] + [t for ax in fig.axes for t in (*ax.get_yticklabels(), *ax.get_xticklabels(),
                                                               ax.title, ax.xaxis.label)]
    return [t.get_window_extent(renderer) for t in texts if t is not None and t.get_text() and t.get_visible()]


def test_paper_comparison_labels_do_not_overlap() -> None:
    """Each panel as tall as its labels need: many rows, long wrapped labels, several pairs, nothing overlaps."""
    paper = summarize.load_paper()
    groups = []
    for e in paper[:3]:
        for i, setting in enumerate(["-", "cocord.T=0.05 learning_rate=0.1 weight_decay=0.0001 epochs=300 "
                                    "cocord.key_size=4096 cocord.momentum=0.99", "cocord.T=0.2"]):
            groups.append({"teacher": e["teacher"], "student": e["student"], "method": "cocord", "dataset": "cifar100",
                           "n_cls": 100, "setting": setting, "n": 3, "last_mean": 70.0 + i, "last_std": 0.3,
                           "data_folders": ["./data_cifar100"]})
    panels, left_out = plot.paper_bars(groups, paper)
    assert len(panels) == 3 and not left_out
    fig = plot.draw_paper(panels)
    boxes = label_boxes(fig)
    assert len(boxes) > 3 * 8
    overlapping = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    assert not overlapping, overlapping[:3]
    height_px = fig.get_size_inches()[1] * fig.dpi
    assert height_px >= sum(len(p["bars"]) for p in panels) * 7 * fig.dpi / 72  # at least one 7 pt line per bar
    plt.close(fig)


def test_curves_of_more_rows_than_colours_stay_apart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Twelve rows of one pair, more than the ten default colours: no two lines look alike."""
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *args, **kwargs: saved.append(fig))
    groups = [{"teacher": "resnet56", "student": "resnet20", "dataset": "cifar100", "n_cls": 100, "data_folders": [],
               "method": f"method{i}", "n": 1, "setting": "-", "differs": {}, "trials": [f"trial{i}"],
               "teacher_acc": None, "paper": None, "paper_column": None} for i in range(12)]
    runs = [{"path": f"trial{i}", "curve": [[1, 10.0 + i], [2, 20.0 + i]]} for i in range(12)]
    (figure,) = plot.plot_curves(groups, runs, tmp_path)
    assert len(figure["series"]) == 12
    (fig,) = saved
    lines = fig.axes[0].get_lines()
    assert len(lines) == 12
    looks = {(matplotlib.colors.to_hex(line.get_color()), line.get_linestyle()) for line in lines}
    assert len(looks) == 12, sorted(looks)


def test_speed_figure_says_it_shows_committed_measurements(tmp_path: Path) -> None:
    (figure,) = plot_speed.plot_speed(ROOT / "bench" / "results", tmp_path)
    assert "committed" in figure["subtitle"] and "not this machine" in figure["subtitle"]
    assert "recorded in" in figure["title"] and SPEED.stem in figure["files"]


@pytest.mark.parametrize("make", [False, True])
def test_no_runs_exit_2(tmp_path: Path, make: bool) -> None:
    root = tmp_path / "experiments"
    if make:  # only an unfinished run: nothing to plot either
        write_run(root, PAPER_PAIR, "trial_1", {"distill": "cocord", "loss_kd": 0.0},
                  result("resnet20", "resnet56", "cocord", 1.0, 1.0, None, finished=False))
    proc = run_tool(str(root), "--out", str(tmp_path / "figs"))
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "nothing to plot" in proc.stderr
    assert not (tmp_path / "figs").exists()
