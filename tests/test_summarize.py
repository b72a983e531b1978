"""tools/summarize.py: runs whose options differ are never averaged; runs are found at any depth;
archived folders are counted and skipped. Real run folders, the tool run as a subprocess."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import yaml
from conftest import ROOT
from test_tools import result, run_tool, table_lines, write_run

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
    assert sorted((r[-1], r[2]) for r in rows) == sorted([("-", "3")] + [(s, "1") for s in differ]), proc.stdout


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
    assert "1 finished run(s)" in out and "epochs=4" in out


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
