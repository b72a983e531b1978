"""Trial folders holding hostile or damaged files: a YAML alias bomb, a self-referencing alias, deep nesting,
NaN, 1e400, 400- and 5000-digit integers, epochs of +-1e308, a 300-character model name. Every reader of a
trial folder (summarize.py, plot.py, main.py's folder check) reads within limits, names the file and the
reason in one line, leaves that trial out and goes on with the rest."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from helpers import run_main, tiny_options, write_yaml
from test_tools import result, run_tool, table_rows, write_run

from engine.folders import _read_options
from utils.trialfiles import TrialFileRefused, read_trial_json, read_trial_options

PLOT = ROOT / "tools" / "plot.py"
PAIR = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"
# 9 levels of 9 aliases: 9**9 (387 million) values once expanded, from a few hundred bytes.
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
HOSTILE_OPTIONS = {"alias bomb": BOMB, "self reference": "distill: cocord\nlr_decay_epochs: &a [*a]\n",
                   "deep nesting": "distill: cocord\ncocord: " + "[" * 3000 + "]" * 3000 + "\n"}
REASONS = {"alias bomb": "expands to more than", "self reference": "contains itself", "deep nesting": "nests deeper"}


def published() -> dict:
    return yaml.safe_load((ROOT / "options" / "train_student.yml").read_text())


def good_tree(root: Path) -> None:
    for t, last in ((1, 71.0), (2, 72.0)):
        write_run(root, PAIR, f"trial_{t}", published(), result("resnet20", "resnet56", "cocord", last + 0.5, last,
                                                                 72.34))


@pytest.mark.parametrize("kind", list(HOSTILE_OPTIONS))
def test_trial_options_read_within_limits(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "options.yml"
    path.write_text(HOSTILE_OPTIONS[kind])
    with pytest.raises(TrialFileRefused, match=REASONS[kind]) as err:
        read_trial_options(path)
    assert str(err.value).startswith("options.yml ") and "\n" not in str(err.value)
    assert _read_options(path) is None  # main.py's folder check: not a run this project wrote


RESULTS = {"NaN": ('{"best_acc": NaN}', "NaN"), "Infinity": ('{"last_acc": -Infinity}', "-Infinity"),
           "1e400": ('{"best_acc": 1e400}', "out of range"),
           "5000 digits": ('{"best_acc": ' + "7" * 5000 + "}", "integer too long"),
           "deep": ('{"history": ' + "[" * 100_000 + "]" * 100_000 + "}", "nests deeper"),
           "not an object": ("[1, 2]", "not a JSON object"), "not JSON": ('{"best_acc": 7', "not valid JSON")}


@pytest.mark.parametrize("kind", list(RESULTS))
def test_trial_results_read_within_limits(tmp_path: Path, kind: str) -> None:
    text, reason = RESULTS[kind]
    path = tmp_path / "results.json"
    path.write_text(text)
    with pytest.raises(TrialFileRefused, match=reason):
        read_trial_json(path)
    path.write_text('{"history": [' + ", ".join(['{"epoch": 1, "val_top1": 50.0}'] * 100) + "]}")
    with pytest.raises(TrialFileRefused, match="over the 1000-byte limit"):
        read_trial_json(path, max_bytes=1000)


DAMAGED = {  # results.json values a run never writes; each trial is reported with its field and left out
    "nan": ({"best_acc": "NaN"}, "results.json is damaged: it holds NaN"),
    "infinity": ({"last_acc": "Infinity"}, "results.json is damaged: it holds Infinity"),
    "1e400": ({"teacher_acc": "1e400"}, "results.json is damaged: the number 1e400 is out of range"),
    "400 digits": ({"last_acc": "9" * 400}, "results.json: last_acc is not a number in [0, 100]"),
    "epoch 1e308": ({"history": '[{"epoch": 1e308, "val_top1": 50}]'}, "results.json: an epoch of its history"),
    "epoch -1e308": ({"history": '[{"epoch": -1e308, "val_top1": 50}]'}, "results.json: an epoch of its history"),
    "accuracy 101": ({"best_acc": "101"}, "results.json: best_acc is not a number in [0, 100]"),
    "control characters": ({"student_model": '"resnet20\\nfake line"'}, "student_model is not a name"),
}


def damaged_text(changes: dict[str, str]) -> str:
    """results.json as text with some values written raw (NaN and 1e400 cannot come from json.dumps)."""
    res = result("resnet20", "resnet56", "cocord", 70.0, 69.0, 72.34)
    text = json.dumps({k: f"@{k}@" if k in changes else v for k, v in {**res, **changes}.items()})
    for key, raw in changes.items():
        text = text.replace(f'"@{key}@"', raw)
    return text


def hostile_tree(tmp_path: Path) -> Path:
    root = tmp_path / "experiments"
    good_tree(root)
    for i, (changes, _) in enumerate(DAMAGED.values(), 10):
        write_run(root, PAIR, f"trial_{i}", published(), damaged_text(changes))
    for i, text in enumerate(HOSTILE_OPTIONS.values(), 30):
        folder = write_run(root, PAIR, f"trial_{i}", {}, result("resnet20", "resnet56", "cocord", 1.0, 1.0, 72.34))
        (folder / "options.yml").write_text(text)
    return root


def test_summarize_leaves_damaged_trials_out(tmp_path: Path) -> None:
    root = hostile_tree(tmp_path)
    proc = run_tool(str(root))  # within 30 s: the alias bomb once hung it for minutes
    assert proc.returncode == 0, proc.stderr
    (row,) = table_rows(proc.stdout).values()
    assert row[:3] == ["2/2", "72.00 +- 0.71", "71.50 +- 0.71"], proc.stdout  # the two good trials alone
    damaged = proc.stdout.split("Damaged trials (11, left out):\n")[1].splitlines()
    expected = [f"  {PAIR}/trial_{i}: " for i in [*range(10, 10 + len(DAMAGED)), 30, 31, 32]]
    assert [line[:len(e)] for line, e in zip(damaged, expected)] == expected and len(damaged) == len(expected)
    for line, reason in zip(damaged, [r for _, r in DAMAGED.values()] + list(REASONS.values())):
        assert reason in line, (line, reason)
    data = json.loads(run_tool(str(root), "--json").stdout)  # strict JSON: no NaN leaks into it
    assert len(data["damaged"]) == 11 and data["groups"][0]["n"] == 2


@pytest.mark.slow
def test_plot_leaves_damaged_trials_out_and_cuts_long_names(tmp_path: Path) -> None:
    root = hostile_tree(tmp_path)
    long_name = "m" * 300  # a file name of 300 characters is over every file system's limit
    res = result(long_name, "resnet56", "cocord", 70.0, 69.0, 72.34)
    res["history"] = [{"epoch": 1, "val_top1": 60.0}, {"epoch": 2, "val_top1": 69.0}]
    write_run(root, "long", "trial_1", {**published(), "student_model": long_name}, res)
    out = tmp_path / "figs"
    proc = subprocess.run([sys.executable, str(PLOT), str(root), "--out", str(out), "--bench", str(tmp_path),
                           "--json"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 3 and all(len(n) < 120 for n in names), names  # two curves, one paper comparison
    assert "11 damaged trial(s): see tools/summarize.py" in " ".join(data["skipped"])


@pytest.mark.slow
def test_main_folder_check_reads_within_limits(tmp_path: Path, tiny_cifar: str) -> None:
    """main.py checks an existing trial folder's options.yml before it trains: an alias bomb there is refused in
    one line (it once hung the check), and --replace archives the folder."""
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, None, distill="none", epochs=1, experiment_name="x"))
    trial = tmp_path / "experiments" / "x" / "trial_1"
    trial.mkdir(parents=True)
    (trial / "options.yml").write_text(BOMB)
    proc = run_main(["-opt", "opt.yml", "-t", "1", "--quiet"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "--replace" in proc.stderr, proc.stderr
    proc = run_main(["-opt", "opt.yml", "-t", "1", "--quiet", "--replace"], cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (archived,) = trial.parent.glob("trial_1_archived_*")
    assert (archived / "options.yml").read_text() == BOMB and (trial / "results.json").is_file()
