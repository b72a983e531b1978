"""tools/plot.py on real runs: two `main.py` trials on tiny data (below experiments/demo, as `make demo`
writes), a hand-made pair of the paper's tables, and the repository's own speed results."""
from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import ROOT
from helpers import run_main, tiny_options, write_yaml
from matplotlib import image
from test_tools import result, write_run

PLOT = ROOT / "tools" / "plot.py"
SPEED = ROOT / "bench" / "results" / "h100_2026-11-26_final_speed.jsonl"
PAPER_PAIR = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PLOT), *args], capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory, tiny_cifar: str, tiny_teacher: str) -> Path:
    work = tmp_path_factory.mktemp("plot")
    write_yaml(work / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, experiments_dir="experiments/demo"))
    for t in (1, 2):  # two trials of one setting; the seed differs, so the curves do too
        proc = run_main(["-opt", "opt.yml", "-t", str(t), "--set", f"seed={t}", "--quiet"], cwd=work)
        assert proc.returncode == 0, proc.stderr[-2000:]
    # A pair of the paper's tables, written by hand (a 240-epoch run does not fit in a test).
    published = yaml.safe_load((ROOT / "options" / "train_student.yml").read_text())
    for t, last in ((1, 71.2), (2, 71.6)):
        res = result("resnet20", "resnet56", "cocord", last + 0.2, last, 72.34)
        res["history"] = [{"epoch": e, "val_top1": last * e / 240} for e in (1, 120, 240)]
        write_run(work / "experiments", PAPER_PAIR, f"trial_{t}", published, res)
    return work / "experiments"


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and 300 <= pixels.shape[0] <= 4000 and 500 <= pixels.shape[1] <= 4000, pixels.shape
    assert float(np.std(pixels[..., :3])) > 0.01  # something is drawn


def test_figures_of_these_runs(experiments: Path, tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    bench.mkdir()
    shutil.copy(SPEED, bench)
    (bench / "other.jsonl").write_text('{"pair": "a:b", "ok": true}\nnot json\n')  # no rates: skipped
    out = tmp_path / "figs"
    proc = run_tool(str(experiments), "--out", str(out), "--bench", str(bench), "--json")
    assert proc.returncode == 0, proc.stderr
    figures = json.loads(proc.stdout)["figures"]
    assert sorted(Path(f["path"]).name for f in figures) == [
        "curves_resnet56_to_resnet20.png", "curves_resnet8_to_resnet8.png", "paper_comparison.png", "speed.png"]
    for f in figures:
        assert Path(f["path"]).parent == out
        check_png(Path(f["path"]))
    by_name = {Path(f["path"]).name: f for f in figures}

    # The curves are the two trials' recorded test top-1 per epoch: mean line, min-max band.
    curves = by_name["curves_resnet8_to_resnet8.png"]
    assert curves["title"].startswith("resnet8 -> resnet8")
    (series,) = curves["series"]
    assert series["label"].startswith("cocord (n=2)") and "epochs=2" in series["label"]
    trials = sorted(experiments.glob("demo/*/trial_*"))
    histories = [json.loads((t / "results.json").read_text())["history"] for t in trials]
    assert len(trials) == 2 and series["epochs"] == [1, 2]
    per_epoch = [[h[i]["val_top1"] for h in histories] for i in range(2)]
    assert series["mean"] == pytest.approx([statistics.mean(v) for v in per_epoch])
    assert series["min"] == [min(v) for v in per_epoch] and series["max"] == [max(v) for v in per_epoch]
    assert series["min"] != series["max"]  # the seeds gave different trials: the band is not a line

    # The bars: the paper's five columns for its pair, and our rows' mean last top-1.
    panels = {p["pair"]: p for p in by_name["paper_comparison.png"]["panels"]}
    assert list(panels) == ["resnet56 -> resnet20", "resnet8 -> resnet8"]  # the paper's pairs first
    bars = {b["label"]: b["value"] for b in panels["resnet56 -> resnet20"]["bars"]}
    assert bars == {"paper: student": 69.06, "paper: KD": 70.66, "paper: CRD": 71.16, "paper: CoCoRD": 71.74,
                    "paper: CoCoRD+KD": 72.09, "ours: cocord (n=2)": pytest.approx(71.4)}
    (ours,) = panels["resnet8 -> resnet8"]["bars"]
    lasts = [json.loads((t / "results.json").read_text())["last_acc"] for t in trials]
    assert not panels["resnet8 -> resnet8"]["in_paper"] and ours["value"] == pytest.approx(statistics.mean(lasts))

    # The speed panel holds the results file's rates; the file without rates is left out.
    speed = by_name["speed.png"]["files"]
    assert list(speed) == [SPEED.stem]
    lines = [json.loads(line) for line in SPEED.read_text().splitlines()]
    assert speed[SPEED.stem]["pairs"] == {row["pair"]: {k: v["images_per_s"] for k, v in row.items()
                                                        if isinstance(v, dict)} for row in lines}


def test_text_output_and_no_bench(experiments: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    proc = run_tool(str(experiments), "--out", str(out), "--bench", str(tmp_path / "none"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    written = [line.split("  ")[0] for line in lines if not line.startswith("skipped")]
    assert sorted(Path(p).name for p in written) == sorted(p.name for p in out.iterdir())
    assert len(written) == 3 and not (out / "speed.png").exists()
    assert any(line.startswith("skipped speed") for line in lines)
    assert any("resnet8 -> resnet8: test top-1 per epoch" in line for line in lines)


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
