"""Groups of a method whose trials train one after another (crd, abound, factor, fsp): stopped, diverging or
resumed as a user would, through main.py on tiny data (16 images: one step per epoch)."""
import json
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT
from helpers import main_env, method_options, run_main
from test_train_e2e import scalars

from dataset import make_tiny_cifar

pytestmark = pytest.mark.slow
KILLPOINT = str(ROOT / "tests" / "killpoint.py")




def killed_at(suffix, nth, args, cwd):
    done = subprocess.run([sys.executable, KILLPOINT, suffix, str(nth), "kill", "--", *args], cwd=cwd,
                          env=main_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr
    return done


def test_a_trial_killed_after_its_init_stage_logs_it_once_after_the_resume(tmp_path, data16, tiny_teacher):
    """SIGKILL in trial 2's first epoch, after its init stage and first epoch were logged but before its checkpoint:
    the resume trains it again from the start, and TensorBoard holds each of its steps once (the init stage's
    steps, <= 0, too)."""
    opt = method_options(tmp_path, data16, tiny_teacher, "abound", abound={"init_epochs": 2})
    killed_at("trial_2/model/checkpoint.pth.tmp", 1, ["-opt", opt, "-t", "1-2", "--quiet"], tmp_path)
    trial_2 = next((tmp_path / "experiments").glob("*/trial_2"))
    assert [s for s, _ in scalars(trial_2)["loss_init/total"]] == [-1, 0]  # logged before the kill
    done = run_main(["-opt", opt, "-t", "1-2", "--resume", "--quiet"], tmp_path)
    assert done.returncode == 0, done.stderr
    for trial in (trial_2.parent / "trial_1", trial_2):
        tags = scalars(trial)
        assert [s for s, _ in tags["loss_init/total"]] == [-1, 0], trial
        assert [s for s, _ in tags["loss_train/total"]] == [1], trial


def test_crd_resumed_on_a_training_set_of_another_size_is_one_line(tmp_path, data16, tiny_teacher):
    """CRD's memory holds one row per training image: a resume under a data_folder whose training set has another
    size is refused in one line that says so (not a state_dict size mismatch), and nothing is written."""
    opt = method_options(tmp_path, data16, tiny_teacher, "crd")
    assert run_main(["-opt", opt, "--quiet"], tmp_path).returncode == 0
    other = tmp_path / "d24"
    make_tiny_cifar(str(other), n_train=24, n_test=16, num_classes=10, seed=0)
    trial = next((tmp_path / "experiments").glob("*/trial_1"))
    before = {p: p.stat().st_mtime_ns for p in trial.rglob("*")}
    done = run_main(["-opt", opt, "--resume", "--set", f"data_folder={other}", "epochs=2"], tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "Traceback" not in line and line.startswith("error: "), done.stderr
    assert "16 images" in line and "24" in line and "data_folder" in line, line
    assert {p: p.stat().st_mtime_ns for p in trial.rglob("*")} == before


def test_every_trial_of_a_sequential_group_diverging_says_what_to_do_once(tmp_path, data16, tiny_teacher):
    """Each trial's line says why it stopped and that the others go on; the last line says every trial stopped
    and, once, what to do (as a stacked group's does); exit status 1."""
    opt = method_options(tmp_path, data16, tiny_teacher, "crd")
    done = run_main(["-opt", opt, "-t", "1-3", "--set", "learning_rate=1e30"], tmp_path)
    assert done.returncode == 1, done.stderr
    last = done.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("error: every trial stopped: trial 1: "), done.stderr
    said = done.stdout + done.stderr
    assert said.count("the other trials go on") == 2 and said.count("to start again with other options") == 1, said


def test_a_resume_lowers_the_learning_rate_a_run_was_started_with(tmp_path, data16, tiny_teacher):
    """What a diverging run is told to do: a group started with --set learning_rate=X (its folder is named by it)
    resumes with --resume --set learning_rate=<lower>, in its own folder; if two runs differ only in it, the
    resume is refused in one line that names them and says how to choose."""
    opt = method_options(tmp_path, data16, tiny_teacher, "crd")
    started = run_main(["-opt", opt, "-t", "1-2", "--set", "learning_rate=0.2", "--quiet"], tmp_path)
    assert started.returncode == 0, started.stderr
    (folder,) = (tmp_path / "experiments").iterdir()
    assert "learning_rate0.2" in folder.name
    lower = ["-opt", opt, "-t", "1-2", "--resume", "--set", "learning_rate=0.01", "epochs=2"]
    done = run_main(lower, tmp_path)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in (tmp_path / "experiments").iterdir()] == [folder.name]
    for t in (1, 2):
        history = json.loads((folder / f"trial_{t}" / "results.json").read_text())["history"]
        assert [h["lr"] for h in history] == [0.2, pytest.approx(0.01 * 0.1)]  # lr_decay_epochs: [1]
    other = run_main(["-opt", opt, "-t", "1", "--set", "learning_rate=0.3", "--quiet"], tmp_path)
    assert other.returncode == 0, other.stderr
    done = run_main(lower[:3] + ["1"] + lower[4:], tmp_path)
    assert done.returncode == 2 and "learning_rate0.2" in done.stderr and "learning_rate0.3" in done.stderr
    assert "path.resume" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_a_resume_changes_nothing_of_a_trial_it_does_not_train(tmp_path, data16, tiny_teacher):
    """A group resumed with a new learning rate trains the trial that has epochs left with it; the trial that has
    trained all its epochs keeps the record of what it trained with (options.yml, its checkpoint's options)."""
    opt = method_options(tmp_path, data16, tiny_teacher, "crd")
    for args in (["-t", "1", "--set", "epochs=2"], ["-t", "2"]):
        assert run_main(["-opt", opt, *args, "--quiet"], tmp_path).returncode == 0
    done = run_main(["-opt", opt, "-t", "1-2", "--resume", "--set", "epochs=2", "learning_rate=0.01"], tmp_path)
    assert done.returncode == 0, done.stderr
    folder = next((tmp_path / "experiments").iterdir())
    for t, lr in ((1, 0.05), (2, 0.01)):
        recorded = yaml.safe_load((folder / f"trial_{t}" / "options.yml").read_text())
        ckpt = torch.load(folder / f"trial_{t}" / "model" / "checkpoint.pth", weights_only=True)
        assert recorded["learning_rate"] == ckpt["options"]["learning_rate"] == lr, t
        assert recorded["epochs"] == ckpt["epoch"] == 2


def test_a_resume_of_a_run_killed_in_its_first_epoch_says_it_never_finished_one(tmp_path, data16, tiny_teacher):
    """SIGKILL in the first epoch (after the init stage) of a run started with --set of a kept option: the
    resume's refusal says the first epoch never finished and how to start again; it does not blame the --set,
    which named the right folder."""
    opt = method_options(tmp_path, data16, tiny_teacher, "abound", abound={"init_epochs": 1})
    run = ["-opt", opt, "--set", "abound.init_epochs=2", "--quiet"]
    killed_at("trial_1/model/checkpoint.pth.tmp", 1, run, tmp_path)
    done = run_main(run + ["--resume"], tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "first epoch never finished" in done.stderr and "without --resume" in done.stderr, done.stderr
    assert "only chooses which run" not in done.stderr, done.stderr


def test_each_trial_of_a_sequential_group_logs_only_its_own_epochs(tmp_path, data16, tiny_teacher):
    """Trials trained one after another in one process: the console shows every trial's epoch lines, and each
    trial's train.log holds its own alone (it once received the other trials' too)."""
    opt = method_options(tmp_path, data16, tiny_teacher, "crd")
    done = run_main(["-opt", opt, "-t", "1-2"], tmp_path)
    assert done.returncode == 0, done.stderr
    folder = next((tmp_path / "experiments").iterdir())
    for t, other in ((1, 2), (2, 1)):
        assert f"epoch 1/1 trial {t} " in done.stdout, done.stdout
        log = (folder / f"trial_{t}" / "train.log").read_text()
        assert f"epoch 1/1 trial {t} " in log and f"epoch 1/1 trial {other} " not in log, log
        assert "trains its trials one after another" in log, log  # what the run said before it trained
