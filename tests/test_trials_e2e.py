"""Several trials trained together through main.py (-t 1-2): complete folders, the same runs as alone,
kills and resumes, and a trial that diverges while the others go on."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from helpers import main_env, run_main, tiny_options, write_yaml
from test_train_e2e import COCORD_FOLDER, PUBLISHED_TAGS, scalars

from dataset import make_tiny_cifar

pytestmark = pytest.mark.slow

KILLPOINT = ROOT / "tests" / "killpoint.py"


@pytest.fixture(scope="module")
def data32(tmp_path_factory) -> str:
    """32 training images: two batches an epoch, so a trial's data order still spans batches (the 100-image set
    cost each epoch of each trial here seven steps)."""
    folder = tmp_path_factory.mktemp("trials_e2e") / "d32"
    make_tiny_cifar(str(folder), n_train=32, n_test=16, num_classes=10, seed=0)
    return str(folder)


def run_killed_at(target: str, count: int, args: list[str], cwd) -> int:
    """main.py, SIGKILLed the `count`-th time it opens a file ending in `target` for writing (tests/killpoint.py)."""
    done = subprocess.run([sys.executable, str(KILLPOINT), target, str(count), "kill", "--", *args], cwd=cwd,
                          env=main_env(), capture_output=True, text=True, timeout=300)
    return done.returncode


def trial_dir(work, t: int, folder: str = COCORD_FOLDER):
    return work / "experiments" / folder / f"trial_{t}"


def test_two_trials_write_two_complete_folders_and_equal_their_single_runs(tmp_path, data32, tiny_teacher):
    # A learning rate of ~0: nothing feeds back, so what a trial computes shows its initialisation, its data
    # order and its augmentation; a trial of the group must show its own seed's, as the same trial alone does.
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(data32, tiny_teacher, epochs=2, learning_rate=1e-12,
                                                        seed=3, experiment_name="lr0"))
    done = run_main(["-opt", opt, "-t", "1-2"], tmp_path)
    assert done.returncode == 0, done.stderr
    seeds = []
    for t in (1, 2):
        folder = trial_dir(tmp_path, t, "lr0")
        for name in ("options.yml", "run.json", "train.log", "network_summary.txt", "results.json",
                     "model/checkpoint.pth", "model/best.pth", "model/ckpt_epoch_2.pth"):
            assert (folder / name).is_file(), (t, name)
        results = json.loads((folder / "results.json").read_text())
        assert results["finished"] and results["trial"] == t and [h["epoch"] for h in results["history"]] == [1, 2]
        tags = scalars(folder)
        assert all([s for s, _ in tags[tag]] == [1, 2] for tag in PUBLISHED_TAGS)
        seeds.append(results["seed"])
    assert seeds == [3, 4]  # trial t runs with seed + t - 1
    group = torch.load(trial_dir(tmp_path, 2, "lr0") / "model/checkpoint.pth", weights_only=True)
    alone_dir = tmp_path / "alone"
    alone_dir.mkdir()
    done = run_main(["-opt", opt, "-t", "2"], alone_dir)
    assert done.returncode == 0, done.stderr
    alone = torch.load(trial_dir(alone_dir, 2, "lr0") / "model/checkpoint.pth", weights_only=True)
    for key, value in alone["method"].items():
        if value.is_floating_point():
            assert torch.allclose(group["method"][key], value, rtol=1e-4, atol=1e-6), key
        else:
            assert torch.equal(group["method"][key], value), key
    other = torch.load(trial_dir(tmp_path, 1, "lr0") / "model/checkpoint.pth", weights_only=True)
    assert not torch.allclose(other["method"]["student.conv1.weight"], alone["method"]["student.conv1.weight"])


def test_a_group_killed_between_two_trials_checkpoints_resumes_with_every_epoch_once(tmp_path, data32,
                                                                                     tiny_teacher):
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(data32, tiny_teacher, epochs=3, lr_decay_epochs=[2]))
    # Killed as trial 2 starts writing its epoch-2 checkpoint: trial 1 has saved epoch 2, trial 2 only epoch 1.
    code = run_killed_at("trial_2/model/checkpoint.pth.tmp", 2, ["-opt", opt, "-t", "1-2", "--quiet"], tmp_path)
    assert code == -9
    epochs = [torch.load(trial_dir(tmp_path, t) / "model/checkpoint.pth", weights_only=True)["epoch"] for t in (1, 2)]
    assert epochs == [2, 1]
    done = run_main(["-opt", opt, "-t", "1-2", "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    for t in (1, 2):
        folder = trial_dir(tmp_path, t)
        results = json.loads((folder / "results.json").read_text())
        assert results["finished"] and [h["epoch"] for h in results["history"]] == [1, 2, 3]
        for tag in PUBLISHED_TAGS:
            assert [step for step, _ in scalars(folder)[tag]] == [1, 2, 3], (t, tag)


def test_a_diverging_trial_stops_and_the_others_finish(tmp_path, data32, tiny_teacher):
    opt = write_yaml(tmp_path / "opt.yml", tiny_options(data32, tiny_teacher, epochs=1))
    assert run_main(["-opt", opt, "-t", "1-2"], tmp_path).returncode == 0
    # Trial 2's weights become absurd (as if a step had exploded): its next epoch cannot stay finite.
    path = trial_dir(tmp_path, 2) / "model/checkpoint.pth"
    ckpt = torch.load(path, weights_only=True)
    ckpt["method"] = {k: v * 1e30 if k.startswith("student.") and v.is_floating_point() else v
                      for k, v in ckpt["method"].items()}
    torch.save(ckpt, path)
    before = path.read_bytes()
    done = run_main(["-opt", opt, "-t", "1-2", "--resume", "--set", "epochs=2"], tmp_path)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "trial 2" in line and "NaN or infinite" in line and "trial 1" not in line, line
    assert "the other trials go on" in done.stdout
    first = json.loads((trial_dir(tmp_path, 1) / "results.json").read_text())
    assert first["finished"] and [h["epoch"] for h in first["history"]] == [1, 2]
    assert path.read_bytes() == before  # trial 2 keeps its last checkpoint, untouched
    second = json.loads((trial_dir(tmp_path, 2) / "results.json").read_text())
    assert not second["finished"] and second["last_epoch"] == 1
