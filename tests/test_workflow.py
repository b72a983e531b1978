"""A researcher's day with main.py: what a run records, ablations beside a run, resumes, the teacher's name.
Real subprocesses on tiny real-format data."""
import json
import subprocess

import pytest
import torch
import torchvision
import yaml
from conftest import ROOT
from helpers import TINY_COCORD_NAME, lines, run_main, save_random_teacher, tiny_options, write_yaml
from test_train_e2e import COCORD_FOLDER, tiny_cocord_run

CPU_SPEED = {"loader": "torchvision", "cuda_graph": False, "compile": False, "channels_last": False,
             "streams": False, "amp": False}


def snapshot(trial) -> dict[str, bytes]:
    return {str(p.relative_to(trial)): p.read_bytes() for p in sorted(trial.rglob("*")) if p.is_file()}



@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data16, tiny_teacher):
    work = tmp_path_factory.mktemp("workflow")
    return work, *tiny_cocord_run(work, data16, tiny_teacher)


@pytest.mark.slow
def test_a_run_records_where_it_came_from(first_run):
    work, opt, done, trial = first_run
    sessions = json.loads((trial / "run.json").read_text())["sessions"]
    assert len(sessions) == 1
    run = sessions[0]
    assert run["command"].endswith(f"main.py -opt {opt} -t 1")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode == 0:  # the code is a git checkout: its commit, and whether tracked files were changed
        assert run["git"]["commit"] == head.stdout.strip() and isinstance(run["git"]["dirty"], bool), run["git"]
    else:
        assert run["git"] == {"commit": None, "dirty": None}
    env = run["environment"]
    assert (env["torch"], env["torchvision"], env["device"]) == (torch.__version__, torchvision.__version__, "cpu")
    assert run["speed"] == CPU_SPEED and run["seed"] == 0
    # options.yml: the settings as they applied here (on the CPU every speed setting is off).
    recorded = yaml.safe_load((trial / "options.yml").read_text())
    assert recorded["speed"] == CPU_SPEED and recorded["epochs"] == 2 and recorded["cocord"]["key_size"] == 64
    # train.log: what the console printed, line for line.
    shown = lines(done.stdout)
    assert lines((trial / "train.log").read_text()) == shown
    assert [line[:10] for line in shown if line.startswith("epoch ")] == ["epoch 1/2 ", "epoch 2/2 "]
    assert "for 2 epochs;" in done.stdout


@pytest.mark.slow
def test_an_ablation_does_not_replace_the_trial(first_run):
    work, opt, _, trial = first_run
    before = snapshot(trial)
    # Another setting is another run: it gets a folder of its own, named by what differs from the defaults.
    done = run_main(["-opt", opt, "-t", "1", "--set", "cocord.T=0.07"], work)
    assert done.returncode == 0, done.stderr
    ablation = trial.parent.parent / (trial.parent.name.replace("_n_cls10", "_n_cls10_T0.07")) / "trial_1"
    assert yaml.safe_load((ablation / "options.yml").read_text())["cocord"]["T"] == 0.07
    assert snapshot(trial) == before and not [p for p in trial.parent.iterdir() if "archived" in p.name]

    # A folder named by hand holds whatever it was given first; another setting there is refused, one line.
    own = work / "experiments" / "t007" / "trial_1"
    done = run_main(["-opt", opt, "-t", "1", "--set", "cocord.T=0.07", "experiment_name=t007"], work)
    assert done.returncode == 0, done.stderr
    mine = snapshot(own)
    done = run_main(["-opt", opt, "-t", "1", "--set", "cocord.T=0.05", "experiment_name=t007"], work)
    assert done.returncode == 2
    [error] = lines(done.stderr)
    assert str(own.relative_to(work)) in error and "cocord.T 0.07 -> 0.05" in error, error
    assert "experiment_name" in error and "--replace" in error, error
    assert snapshot(own) == mine

    done = run_main(["-opt", opt, "-t", "1", "--set", "cocord.T=0.07", "experiment_name=t007"], work)
    assert done.returncode == 0, done.stderr
    [archive] = [p for p in own.parent.iterdir() if p.name.startswith("trial_1_archived_")]
    said = [line for line in lines(done.stdout + done.stderr) if "archived" in line]
    assert len(said) == 1 and str(own.relative_to(work)) in said[0] and str(archive.relative_to(work)) in said[0]
    assert json.loads((archive / "results.json").read_text())["finished"]
    assert snapshot(trial) == before  # the first run, untouched through all of it


@pytest.mark.slow
def test_resume_keeps_the_run_as_it_was(tmp_path, data16, tiny_teacher):
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(data16, tiny_teacher, epochs=4, lr_decay_epochs=[3]))
    trial = tmp_path / "experiments" / COCORD_FOLDER / "trial_1"
    done = run_main(["-opt", opt, "--set", "epochs=2", "lr_decay_epochs=[1]"], tmp_path)
    assert done.returncode == 0, done.stderr
    checkpoint = (trial / "model" / "checkpoint.pth").read_bytes()

    done = run_main(["-opt", opt, "--resume"], tmp_path)  # the file says 4 epochs; the run is a 2-epoch run
    assert done.returncode == 0, done.stderr
    assert "already trained all 2 epochs" in done.stdout and "epoch 3/" not in done.stdout, done.stdout
    [kept] = [line for line in lines(done.stdout) if "kept the run's" in line]
    assert "epochs=2" in kept and "lr_decay_epochs=[1]" in kept, kept
    assert "changed options" not in done.stdout, done.stdout  # nothing changed: the speed settings are no change
    assert (trial / "model" / "checkpoint.pth").read_bytes() == checkpoint
    recorded = yaml.safe_load((trial / "options.yml").read_text())
    results = json.loads((trial / "results.json").read_text())
    assert recorded["epochs"] == results["epochs"] == 2 and recorded["lr_decay_epochs"] == [1]
    assert results["finished"]

    done = run_main(["-opt", opt, "--resume", "--set", "epochs=3"], tmp_path)
    assert done.returncode == 0, done.stderr
    [changed] = [line for line in lines(done.stdout) if "changed options" in line]
    assert changed == "resuming with changed options: epochs=3 (was 2)", changed
    assert "for 3 epochs;" in done.stdout and "epoch 3/3 " in done.stdout
    recorded = yaml.safe_load((trial / "options.yml").read_text())
    results = json.loads((trial / "results.json").read_text())
    assert recorded["epochs"] == results["epochs"] == 3 and [h["epoch"] for h in results["history"]] == [1, 2, 3]
    assert results["history"][-1]["lr"] == pytest.approx(0.005)  # the run's schedule, not the file's [3]


@pytest.fixture(scope="module")
def resnet14_teacher(tmp_path_factory) -> str:
    return save_random_teacher(tmp_path_factory.mktemp("teacher14") / "ckpt_epoch_240.pth", "resnet14", seed=1)


@pytest.mark.slow
def test_teacher_model_auto_is_the_checkpoint_architecture(tmp_path, data16, resnet14_teacher):
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(data16, resnet14_teacher, teacher_model="auto", epochs=1))
    done = run_main(["-opt", opt, "-trial", "2"], tmp_path)  # also the published code's spelling of -t
    assert done.returncode == 0, done.stderr
    folder = "S_resnet8_T_resnet14_cifar100_cocord_ctr1.0cls1.0p4.0" + TINY_COCORD_NAME
    trial = tmp_path / "experiments" / folder / "trial_2"
    assert yaml.safe_load((trial / "options.yml").read_text())["teacher_model"] == "resnet14"
    assert "teacher resnet14 test accuracy" in done.stdout and "for 1 epoch;" in done.stdout

    done = run_main(["-opt", opt, "--set", "teacher_model=resnet20"], tmp_path)
    assert done.returncode == 2
    [error] = lines(done.stderr)
    assert "is a resnet14" in error and "resnet20" in error, error
    assert sorted(p.name for p in (tmp_path / "experiments").iterdir()) == [trial.parent.name]
