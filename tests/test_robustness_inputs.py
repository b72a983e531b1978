"""Nothing lost, nothing hung: inputs that must be refused with one line, and runs that must go wrong cleanly.

One real run (97 training images, batch 16: the last batch holds one image) is the previous run every
refusal must leave alone; the quick cases run together in one process (tests/main_batch.py).
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import main_env, run_main, tiny_options, write_yaml
from main_batch import run_batch
from test_train_e2e import COCORD_FOLDER

from dataset import make_tiny_cifar
from dataset.demo import _balanced_labels, _write_cifar

pytestmark = pytest.mark.slow


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_mtime_ns, p.stat().st_size) for root in roots for p in sorted(root.rglob("*"))}


def one_error_line(result: dict) -> str:
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result["stderr"], (result["argv"], result["stderr"])
    assert lines[0].startswith("error: ") and "[Errno" not in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_teacher):
    """Data sets for each case, a teacher with a NaN, and a finished previous run in trial_1."""
    work = tmp_path_factory.mktemp("robust_inputs")
    make_tiny_cifar(str(work / "d97"), n_train=97, n_test=16, num_classes=10, seed=0)
    make_tiny_cifar(str(work / "d16"), n_train=16, n_test=16, num_classes=10, seed=0)
    make_tiny_cifar(str(work / "d1"), n_train=1, n_test=16, num_classes=10, seed=0)
    make_tiny_cifar(str(work / "no_test"), n_train=32, n_test=0, num_classes=10, seed=0)
    make_tiny_cifar(str(work / "no_train"), n_train=0, n_test=16, num_classes=10, seed=0)
    rng = np.random.default_rng(0)
    _write_cifar(str(work / "test_labels_12"), _balanced_labels(32, 10, rng), np.arange(16) % 12, rng)
    ckpt = torch.load(tiny_teacher, weights_only=True)
    ckpt["model"]["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(ckpt, work / "nan_teacher.pth")
    write_yaml(work / "opt.yml", tiny_options(str(work / "d97"), tiny_teacher, epochs=1))
    done = run_main(["-opt", "opt.yml", "-t", "1"], work)
    assert done.returncode == 0, done.stderr
    # Scenario 8: a final batch of one image is skipped with one note, and the run finishes.
    assert done.stdout.count("note: the last batch of each epoch holds 1 image(s) and is skipped") == 1
    assert done.stderr == ""
    return work


def test_refusals_leave_every_run_alone(work):
    """Scenarios 1, 7, 8 and 10: exit 2, one line that names the problem, nothing big built, nothing written, the
    previous run in the trial folder not archived although --replace asks to archive it."""
    trial = work / "experiments" / COCORD_FOLDER / "trial_1"
    (work / "elsewhere" / "model").mkdir(parents=True)
    for copy in (work / "elsewhere" / "model" / "checkpoint.pth", work / "elsewhere" / "checkpoint.pth"):
        shutil.copy(trial / "model" / "checkpoint.pth", copy)
    archived = work / "old" / "trial_1_archived_261126-101010"
    shutil.copytree(trial, archived)
    other = work / "other_run" / "trial_1"
    shutil.copytree(trial, other)

    base = ["-opt", "opt.yml", "-t", "1", "--replace", "--set"]
    cases = [  # (extra --set options or arguments, words the line must hold)
        # 1: path.resume naming a checkpoint that is not a trial's model/checkpoint.pth
        (["path.resume=elsewhere/model/checkpoint.pth"], ["elsewhere", "trial"]),
        (["path.resume=elsewhere/checkpoint.pth"], ["cannot resume", "trial folder"]),
        ([f"path.resume={other}/model/best.pth"], ["cannot resume", "best.pth"]),
        ([f"path.resume={other}/model/ckpt_epoch_1.pth"], ["cannot resume", "ckpt_epoch_1.pth"]),
        ([f"path.resume={archived}"], [archived.name, "trial"]),
        (["path.resume=experiments/nowhere/trial_4"], ["nothing to resume", "trial_4"]),
        (["epochs=1", "-t", "9", "--resume"], ["nothing to resume", "trial_9"]),
        # 7: data that cannot train, folders that cannot be written, sizes that cannot fit
        (["data_folder=test_labels_12"], ["test labels", "11", "n_cls"]),
        (["data_folder=no_test"], ["test", "no images"]),
        (["data_folder=no_train"], ["train", "no images"]),
        (["experiments_dir=opt.yml"], ["experiments_dir", "opt.yml", "is a file"]),
        (["cocord.key_size=4000000000"], ["GiB", "queue"]),
        (["cocord.hidden_dim=2000000000"], ["GiB", "head"]),
        (["n_cls=2000000000", "distill=none"], ["GiB", "fc"]),
        # 8: batches of one image cannot train CoCoRD's heads
        (["batch_size=1"], ["batch_size 1", "2 or more"]),
        (["data_folder=d1"], ["training", "1 image", "2 or more"]),
        # 10: a damaged teacher is named at load, not found later as a NaN loss
        (["path.teacher=nan_teacher.pth"], ["nan_teacher.pth", "NaN", "damaged"]),
    ]
    watched = (work / "experiments", work / "elsewhere", work / "old", work / "other_run")
    before = snapshot(*watched)
    folders = sorted(p.name for p in (work / "experiments").iterdir())  # other tests of this module add some
    assert COCORD_FOLDER in folders
    results = run_batch([base + extra for extra, _ in cases], work)
    for (extra, words), result in zip(cases, results):
        assert result["rc"] == 2, (extra, result["stderr"])
        line = one_error_line(result)
        for word in words:
            assert word in line, (extra, line)
        assert result["peak_growth_mb"] < 500, (extra, result)  # refused before anything big is built
    assert snapshot(*watched) == before
    assert sorted(p.name for p in (work / "experiments").iterdir()) == folders  # no folder made, empty or not


def test_runs_that_go_wrong(work):
    """Scenario 5: a NaN test loss after one step of learning_rate 1e30 saves nothing (the last good checkpoint
    stays, results.json stays valid JSON), exit 1 with one line naming the epoch. Scenario 10: a NaN at
    epoch 1, step 1 names the options, not the learning rate. Scenario 11: speed.amp on the CPU changes
    nothing and options.yml says it is off."""
    shutil.copytree(work / "experiments" / COCORD_FOLDER / "trial_1", work / "copy" / "trial_1")
    copy = work / "copy" / "trial_1"
    kept = (copy / "model" / "checkpoint.pth").read_bytes()
    results_before = json.loads((copy / "results.json").read_text())
    results = run_batch([
        ["-opt", "opt.yml", "--set", "path.resume=copy/trial_1", "epochs=2", "learning_rate=1e30",
         "data_folder=d16"],
        ["-opt", "opt.yml", "--set", "experiment_name=step1", "loss_ctr=1e38", "loss_cls=1e38", "loss_pred=1e38"],
        ["-opt", "opt.yml", "--set", "experiment_name=amp", "speed.amp=true"],
    ], work)
    diverged, step1, amp = results

    assert diverged["rc"] == 1
    line = one_error_line(diverged)
    assert "NaN" in line and "epoch 2" in line and "learning_rate" in line, line
    assert (copy / "model" / "checkpoint.pth").read_bytes() == kept
    assert not (copy / "model" / "ckpt_epoch_2.pth").exists()
    saved = json.loads((copy / "results.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    # The epoch-1 results, for the run as it now goes on (2 epochs, unfinished), as options.yml says.
    assert saved == {**results_before, "epochs": 2, "finished": False} and saved["last_epoch"] == 1

    assert step1["rc"] == 1
    line = one_error_line(step1)
    assert "epoch 1, step 1" in line and "options" in line and "lower learning_rate" not in line, line
    assert not (work / "experiments" / "step1" / "trial_1" / "model").exists()

    assert amp["rc"] == 0, amp["stderr"]
    ran = work / "experiments" / "amp" / "trial_1"
    speed = yaml.safe_load((ran / "options.yml").read_text())["speed"]
    assert speed == {"loader": "torchvision", "cuda_graph": False, "compile": False, "channels_last": False,
                     "streams": False, "amp": False}
    a = torch.load(ran / "model" / "checkpoint.pth", weights_only=True)
    b = torch.load(work / "experiments" / COCORD_FOLDER / "trial_1" / "model" / "checkpoint.pth", weights_only=True)
    for key, value in a["method"].items():
        assert torch.equal(value, b["method"][key]), key


def test_a_teacher_that_is_a_named_pipe_does_not_hang(work):
    """Scenario 6: reading a FIFO would block forever; refused instead. The timeout only ends a hang: starting
    main.py (importing torch) takes over 10 s on a loaded 2-core machine."""
    os.mkfifo(work / "fifo.pth")
    done = run_main(["-opt", "opt.yml", "-t", "1", "--replace", "--set", "path.teacher=fifo.pth"], work, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "fifo.pth" in done.stderr and "Traceback" not in done.stderr


def test_a_read_only_experiments_dir_is_refused(work, tiny_teacher):
    """Scenario 7: a folder this process cannot write in. Root ignores permission bits, so as root the folder is
    a read-only file system (a tmpfs mounted read-only in a private mount namespace)."""
    folder = work / "read_only"
    folder.mkdir()
    args = [sys.executable, str(Path(__file__).parents[1] / "main.py"), "-opt", "opt.yml", "-t", "1",
            "--set", f"experiments_dir={folder}"]
    env = main_env()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        done = subprocess.run(args, cwd=work, capture_output=True, text=True, timeout=60, env=env)
    elif shutil.which("unshare") and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0:
        script = 'mount -t tmpfs -o ro,size=1m tmpfs "$1" || exit 99; shift; exec "$@"'
        done = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", str(folder), *args], cwd=work,
                              capture_output=True, text=True, timeout=60, env=env)
        if done.returncode == 99:
            pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.strip()}")
    else:
        pytest.skip("running as root (permissions do not apply) and cannot make a mount namespace")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and str(folder) in lines[0], done.stderr
    assert list(folder.iterdir()) == []
