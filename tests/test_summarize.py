"""tools/summarize.py: runs whose options differ are never averaged; runs are found at any depth;
archived folders are counted and skipped. Real run folders, the tool run as a subprocess."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import yaml
from conftest import ROOT
from test_tools import result, run_tool, table_lines, table_rows, write_run

PAIR = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"


def published() -> dict:
    """The options a run of the published configuration writes (options.yml holds every key)."""
    return yaml.safe_load((ROOT / "options" / "train_student.yml").read_text())


def variant(**changes: object) -> dict:
    """published() with dotted keys changed, e.g. variant(**{"cocord.momentum": 0.99})."""
    opt = published()
    for key, value in changes.items():
        node = opt
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = value
    return opt


def cocord_result(best: float, last: float) -> dict:
    return result("resnet20", "resnet56", "cocord", best, last, 72.34)


def test_mixed_settings_give_separate_rows(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    # Three trials of the published setting, written differently: paths, device, seed, workers, progress,
    # the speed switches that keep the maths, and numbers as int/float/text (5e-4 is text in YAML 1.1).
    same = [variant(seed=1, gpu=0, data_folder="/a", num_workers=8, print_freq=300, weight_decay=0.0005,
                    epochs=240, **{"path.teacher": "/t1.pth", "speed.compile": True, "loss_ctr": 1}),
            variant(seed=2, gpu=None, data_folder="/b", num_workers=0, print_freq=10, weight_decay="5e-4",
                    epochs=240.0, experiments_dir="elsewhere",
                    **{"path.teacher": "/t2.pth", "speed.compile": False, "speed.cuda_graph": False,
                       "speed.loader": "torchvision", "loss_ctr": 1.0})]
    older = published()  # written before speed.* and cocord.b_momentum existed: they count as their defaults
    del older["speed"], older["cocord"]["b_momentum"]
    same.append(older)
    for t, (opt, best, last) in enumerate(zip(same, (71.5, 71.9, 71.7), (71.2, 71.8, 71.5)), 1):
        write_run(root, PAIR, f"trial_{t}", opt, cocord_result(best, last))
    # The three runs that were once averaged into one row: each changes the result.
    differ = {"cocord.momentum=0.99": variant(**{"cocord.momentum": 0.99}),
              "speed.amp=true": variant(**{"speed.amp": True}),
              "weight_decay=0.0001": variant(weight_decay=1e-4)}
    for i, opt in enumerate(differ.values(), 4):
        write_run(root, PAIR, f"trial_{i}", opt, cocord_result(60.0 + i, 59.0 + i))

    proc = run_tool(str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    groups = json.loads(proc.stdout)["groups"]
    by_setting = {g["setting"]: g for g in groups}
    assert len(groups) == 4 and set(by_setting) == {"-", *differ}, [g["setting"] for g in groups]
    base = by_setting["-"]
    assert base["n"] == 3 and [Path(p).name for p in base["trials"]] == ["trial_1", "trial_2", "trial_3"]
    assert math.isclose(base["best_mean"], 71.7)
    assert math.isclose(base["last_std"], statistics.stdev([71.2, 71.8, 71.5]))
    for i, setting in enumerate(differ, 4):
        g = by_setting[setting]
        assert g["n"] == 1 and g["best_std"] is None and math.isclose(g["last_mean"], 59.0 + i)
        assert g["paper"] == 71.74  # each row is still compared with the paper's CoCoRD column

    # The table shows four rows for the one pair, each saying why it stands alone.
    proc = run_tool(str(root))
    rows = [cells for cells in table_lines(proc.stdout) if cells[:2] == ["resnet56 -> resnet20", "cocord"]]
    assert sorted((r[-1], r[2]) for r in rows) == sorted([("-", "3/3")] + [(s, "1/1") for s in differ]), proc.stdout


def test_options_outside_the_published_ones_are_named(tmp_path: Path) -> None:
    """A key the published files lack (here a new method option) still separates and labels rows; one that
    all rows share (e.g. a schema key the files do not list) is not named."""
    root = tmp_path / "experiments"
    write_run(root, PAIR, "trial_1", variant(extra_knob=1, shared=5), cocord_result(70.0, 70.0))
    write_run(root, PAIR, "trial_2", variant(extra_knob=2.0, shared=5), cocord_result(71.0, 71.0))
    write_run(root, PAIR, "trial_3", variant(extra_knob=1.0, shared=5.0), cocord_result(72.0, 72.0))
    groups = json.loads(run_tool(str(root), "--json").stdout)["groups"]
    assert sorted((g["setting"], g["n"]) for g in groups) == [("extra_knob=1", 2), ("extra_knob=2", 1)]


def test_runs_found_at_any_depth(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    demo = root / "demo"  # where `make demo` writes: experiments/demo/<experiment>/trial_1
    write_run(demo, PAIR, "trial_1", variant(epochs=4), cocord_result(40.0, 39.0))
    write_run(root / "sweep" / "lr", PAIR, "trial_1", variant(epochs=4), cocord_result(42.0, 41.0))
    write_run(root, PAIR, "trial_1", published(), cocord_result(71.0, 70.5))
    (root / PAIR / "trial_9").mkdir()  # no options.yml and no results.json: not a run
    (root / PAIR / "trial_1" / "model" / "trial_2").mkdir(parents=True)  # inside a run: not searched

    proc = run_tool(str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    groups = {g["setting"]: g for g in json.loads(proc.stdout)["groups"]}
    assert set(groups) == {"-", "epochs=4"}
    assert groups["epochs=4"]["n"] == 2 and math.isclose(groups["epochs=4"]["best_mean"], 41.0)
    assert {str(Path(p).relative_to(root)) for p in groups["epochs=4"]["trials"]} == {
        f"demo/{PAIR}/trial_1", f"sweep/lr/{PAIR}/trial_1"}
    assert groups["-"]["n"] == 1
    out = run_tool(str(root / "demo")).stdout  # the demo folder alone works too
    assert "1 finished trial(s)" in out and "epochs=4" in out


def test_archived_folders_skipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "experiments"
    write_run(root, PAIR, "trial_1", published(), cocord_result(71.0, 70.0))
    write_run(root, PAIR, "trial_1_archived_261126-101010", published(), cocord_result(10.0, 10.0))
    for t in (1, 2):  # a whole experiment folder renamed
        write_run(root / "demo", PAIR + "_archived_261126-111111", f"trial_{t}", published(),
                  cocord_result(20.0, 20.0))
    proc = run_tool(str(root), "--json")
    data = json.loads(proc.stdout)
    assert data["archived_skipped"] == 3
    assert [(g["n"], g["best_mean"]) for g in data["groups"]] == [(1, 71.0)]
    assert "3 archived trial folder(s) skipped" in run_tool(str(root)).stdout

    # Only archived runs: nothing to summarise, exit 2 with one line that still counts them.
    only = tmp_path / "only"
    write_run(only, PAIR + "_archived_261126-121212", "trial_1", published(), cocord_result(20.0, 20.0))
    proc = run_tool(str(only))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "(1 archived trial folder(s) skipped)" in proc.stderr


def test_run_without_options_yml_stands_alone(tmp_path: Path) -> None:
    """results.json alone says too little of the setting: such a run is its own row, and says why."""
    root = tmp_path / "experiments"
    vanilla = yaml.safe_load((ROOT / "options" / "train_teacher.yml").read_text())
    write_run(root, "resnet56_cifar100_vanilla", "trial_1", vanilla, result("resnet56", "resnet56", "none",
                                                                             72.0, 71.9, None))
    write_run(root, "resnet56_cifar100_vanilla", "trial_2", vanilla, result("resnet56", "resnet56", "none",
                                                                             72.4, 72.1, None))
    (root / "resnet56_cifar100_vanilla" / "trial_2" / "options.yml").unlink()
    groups = json.loads(run_tool(str(root), "--json").stdout)["groups"]
    assert sorted((g["setting"], g["n"]) for g in groups) == [("-", 1), ("options.yml=missing", 1)]


def run_of(distill: str, loss_kd: float = 0.0, **changes: object) -> dict:
    return variant(distill=distill, loss_kd=loss_kd, **changes)


def test_every_method_and_its_kd_variant(tmp_path: Path) -> None:
    """The method is the run's distill name, '+kd' with a KD weight: CRD and CRD+KD, CoCoRD and CoCoRD+KD are
    told apart by loss_kd; the paper's number where its tables have the column, '-' elsewhere; trials counted
    finished and not."""
    root = tmp_path / "sweeps" / "all"
    runs = {("crd", 0.0): [(71.3, 71.0, True)], ("crd", 1.0): [(71.9, 71.8, True), (71.5, 71.2, True)],
            ("cocord", 1.0): [(72.3, 72.1, True)], ("kd", 0.9): [(71.0, 70.9, True)],
            ("hint", 0.0): [(70.2, 70.0, True), (50.0, 49.0, False)], ("dkd", 0.0): [(40.0, 39.0, False)]}
    for (distill, kd), trials in runs.items():
        for t, (best, last, finished) in enumerate(trials, 1):
            res = result("resnet20", "resnet56", distill, best, last, 72.34, finished=finished,
                         last_epoch=240 if finished else 100)
            published_kd = {"loss_cls": 0.1} if distill == "kd" else {}  # options/train_kd.yml's CE weight
            write_run(root, f"{distill}_kd{kd}", f"trial_{t}", run_of(distill, kd, **published_kd), res)
    proc = run_tool(str(root))
    assert proc.returncode == 0, proc.stderr
    rows = {method: cells for (_, method), cells in table_rows(proc.stdout).items()}
    assert list(rows) == ["kd", "crd", "cocord+kd", "crd+kd", "dkd", "hint"], proc.stdout  # paper's columns first
    assert {m: (c[0], c[3]) for m, c in rows.items()} == {
        "kd": ("1/1", "70.66"), "crd": ("1/1", "71.16"), "cocord+kd": ("1/1", "72.09"), "crd+kd": ("2/2", "-"),
        "dkd": ("0/1", "-"), "hint": ("1/2", "-")}
    assert rows["crd+kd"][1:3] == ["71.70 +- 0.28", "71.50 +- 0.42"] and rows["dkd"][1:5] == ["-"] * 4
    assert {c[-1] for c in rows.values()} == {"-"}  # each at its method's published options (KD weight 1 for +kd)
    assert "best: a trial's highest test top-1" in proc.stdout and "last: its test top-1 after the last epoch" in \
        proc.stdout  # the protocol, stated above the table


def test_table_fits_the_terminal_and_says_what_differs(tmp_path: Path) -> None:
    """A demo-like sweep: options shared by every row are said once, each row shows only what sets it apart, and
    no line is wider than the terminal (COLUMNS); the data is the run's own, so no paper number."""
    root = tmp_path / "experiments" / "demo"
    shared = {"epochs": 4, "n_cls": 10, "data_folder": "./data_demo", "cocord.key_size": 1024,
              "cocord.hidden_dim": 256, "cocord.embedding_dim": 128, "cocord.pred_dim": 64, "lr_decay_epochs": [3]}
    for t, temperature in enumerate((0.1, 0.1, 0.05, 0.2), 1):
        write_run(root, f"T{temperature}", f"trial_{t}", variant(**shared, **{"cocord.T": temperature}),
                  cocord_result(40.0 + t, 39.0 + t))
    proc = run_tool(str(root), columns=80)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, proc.stdout
    text = " ".join(line.strip() for line in lines)
    assert text.count("cocord.key_size=1024") == 1 and "all rows: " in text  # said once, not in every row
    assert [r[-1] for r in table_lines(proc.stdout)] == ["-", "cocord.T=0.05", "cocord.T=0.2"], proc.stdout
    assert "data: ./data_demo, 10 classes (not the paper's CIFAR-100)" in text and "71.74" not in text
    narrow = run_tool(str(root), columns=70).stdout.splitlines()  # no room beside the numbers: under its row
    assert max(len(line) for line in narrow) <= 70, "\n".join(narrow)
    settings = [line.strip() for line in narrow if line.strip().startswith("setting: ")]
    assert settings == ["setting: cocord.T=0.05", "setting: cocord.T=0.2"], "\n".join(narrow)


def test_any_folder_bounded_and_without_symlinks(tmp_path: Path) -> None:
    """A sweep's folder (trials several levels down) gives that sweep's table; symlinked folders are not
    followed (one could lead out of the folder), folders too deep are not searched, and both are said."""
    sweep = tmp_path / "experiments" / "sweeps" / "lr"
    for col, lr in (("col_a", 0.05), ("col_b", 0.1)):
        for t in (1, 2):
            write_run(sweep / col / "runs", PAIR, f"trial_{t}", variant(learning_rate=lr),
                      cocord_result(70 + t, 69 + t))
    outside = write_run(tmp_path / "elsewhere", PAIR, "trial_1", variant(learning_rate=0.05), cocord_result(1, 1))
    (sweep / "col_a" / "runs" / PAIR / "trial_3").symlink_to(outside)
    (sweep / "linked").symlink_to(tmp_path / "elsewhere")
    deep = sweep.joinpath(*["d"] * 12)
    write_run(deep, PAIR, "trial_1", variant(learning_rate=0.05), cocord_result(2, 2))
    proc = run_tool(str(sweep), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert sorted((g["setting"], g["n"]) for g in data["groups"]) == [("learning_rate=0.1", 2), ("-", 2)][::-1]
    assert data["notes"] == ["2 symlinked folder(s) not followed", "1 folder(s) more than 12 levels down not searched"]
    assert "note: 2 symlinked folder(s) not followed" in run_tool(str(sweep)).stdout
    one = run_tool(str(sweep / "col_b" / "runs" / PAIR / "trial_2"), "--json")  # a trial folder itself
    assert [(g["n"], g["best_mean"]) for g in json.loads(one.stdout)["groups"]] == [(1, 72.0)]


def test_a_trial_found_in_two_folders_counts_once(tmp_path: Path) -> None:
    """A column run by hand and again in a sweep: the same options and seed are one trial, not two. Trials with
    other seeds, or with none recorded (older runs), still count apart."""
    root = tmp_path / "experiments"
    runs = [(PAIR, "trial_1", 1, 71.0), (f"sweeps/table/runs/001-col/{PAIR}", "trial_1", 1, 71.0),
            (f"sweeps/table/runs/001-col/{PAIR}", "trial_2", 2, 73.0), ("by_hand", "trial_2", 7, 75.0)]
    for folder, trial, seed, acc in runs:
        write_run(root, folder, trial, published(), {**cocord_result(acc, acc), "seed": seed})
    unfinished = {**cocord_result(70.0, 70.0), "seed": 1, "finished": False, "last_epoch": 3}
    write_run(root, "elsewhere", "trial_1", published(), unfinished)  # a stopped copy of trial 1
    for t in (3, 4):  # no seed recorded: the same numbers, yet nothing says they are one trial
        write_run(root, "old", f"trial_{t}", published(), cocord_result(77.0, 77.0))

    proc = run_tool(str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(proc.stdout)["groups"]
    assert row["n"] == 5 and row["n_unfinished"] == 0, row
    assert math.isclose(row["last_mean"], statistics.fmean([71.0, 73.0, 75.0, 77.0, 77.0]))
    assert sorted((r["name"], r["same_as"]) for r in row["repeated"]) == [
        ("elsewhere/trial_1", f"{PAIR}/trial_1"), (f"sweeps/table/runs/001-col/{PAIR}/trial_1", f"{PAIR}/trial_1")]
    text = run_tool(str(root)).stdout
    assert "5/5" in text and "Repeated trials (2," in text and f"  elsewhere/trial_1: as {PAIR}/trial_1 (seed 1)" \
        in text, text
