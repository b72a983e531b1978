"""Resume that really resumes; kill-safety of checkpoints and of whole runs."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import ROOT
from helpers import main_env, run_main, tiny_options, write_yaml
from test_train_e2e import COCORD_FOLDER, scalars

from engine.trainer import TIMING_KEYS


def trial(work: Path) -> Path:
    return work / "experiments" / COCORD_FOLDER / "trial_1"


def assert_same_state(a: dict, b: dict, where: str) -> None:
    assert list(a) == list(b), where
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), f"{where}.{key} differs"
        elif isinstance(value, dict):
            assert_same_state(value, b[key], f"{where}.{key}")
        else:
            assert value == b[key], f"{where}.{key}: {value!r} != {b[key]!r}"


def without_timing(results: dict) -> dict:
    return {**results, "history": [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in results["history"]]}


def test_resume_equals_a_straight_run(tmp_path, tiny_cifar, tiny_teacher):
    straight, split = tmp_path / "straight", tmp_path / "split"
    for work in (straight, split):
        work.mkdir()
    options = tiny_options(tiny_cifar, tiny_teacher, epochs=3, num_workers=2)  # workers: their seeds must resume too
    opt_path = write_yaml(tmp_path / "opt.yml", options)
    assert run_main(["-opt", opt_path], straight).returncode == 0
    first = run_main(["-opt", opt_path, "--set", "epochs=2"], split)
    assert first.returncode == 0, first.stderr
    second = run_main(["-opt", opt_path, "--resume", "--set", "epochs=3"], split)
    assert second.returncode == 0, second.stderr
    assert "resuming" in second.stdout and "epochs=3" in second.stdout  # the changed option is said

    a = torch.load(trial(straight) / "model/checkpoint.pth", weights_only=True)
    b = torch.load(trial(split) / "model/checkpoint.pth", weights_only=True)
    for part in ("model", "method", "optimizer", "rng"):
        assert_same_state(a[part], b[part], part)
    assert (a["epoch"], a["best_acc"], a["best_epoch"]) == (b["epoch"], b["best_acc"], b["best_epoch"])
    ra, rb = (json.loads((trial(w) / "results.json").read_text()) for w in (straight, split))
    assert without_timing(ra) == without_timing(rb)
    assert not list(trial(split).parent.glob("*archived*"))  # resumed in place, nothing renamed


def test_killed_run_resumes_with_every_epoch_accounted_for(tmp_path, tiny_cifar, tiny_teacher):
    epochs = 4
    opt_path = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=epochs))
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "-opt", opt_path, "--quiet"], cwd=tmp_path,
                            env=main_env())
    ckpt = trial(tmp_path) / "model" / "checkpoint.pth"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # at once: mid-epoch or mid-save, whatever the moment is
    proc.wait()
    assert torch.load(ckpt, weights_only=True)["epoch"] < epochs

    done = run_main(["-opt", opt_path, "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr
    results = json.loads((trial(tmp_path) / "results.json").read_text())
    assert results["finished"] and [h["epoch"] for h in results["history"]] == list(range(1, epochs + 1))
    tags = scalars(trial(tmp_path))
    for tag in ("loss_train/total", "acc_val/top_1", "acc_cocord/top_1"):
        assert [step for step, _ in tags[tag]] == list(range(1, epochs + 1)), tag
    logged = dict(tags["acc_val/top_1"])
    for h in results["history"]:
        assert abs(logged[h["epoch"]] - h["val_top1"]) < 1e-4


def test_checkpoint_write_killed_midway_leaves_the_old_one(tmp_path):
    path = tmp_path / "checkpoint.pth"
    from utils.files import atomic_save
    atomic_save({"epoch": 1, "w": torch.arange(10)}, path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch; from utils.files import atomic_save; "
        "atomic_save({'epoch': 2, 'w': torch.randn(100_000_000)}, __import__('pathlib').Path(sys.argv[1]))"),
        str(path)], cwd=ROOT)
    tmp = path.with_name(path.name + ".tmp")
    deadline = time.time() + 60
    while not (tmp.exists() and tmp.stat().st_size > 0) and time.time() < deadline:
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL  # killed while writing, not after
    kept = torch.load(path, weights_only=True)
    assert kept["epoch"] == 1 and torch.equal(kept["w"], torch.arange(10))


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, tiny_cifar, tiny_teacher):
    opt_path = write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=1))
    assert run_main(["-opt", opt_path], tmp_path).returncode == 0
    ckpt = trial(tmp_path) / "model" / "checkpoint.pth"
    before = ckpt.read_bytes()
    done = run_main(["-opt", opt_path, "--resume", "--set", "epochs=2", "learning_rate=1e30"], tmp_path)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    assert "NaN or infinite" in line and "epoch 2" in line and "step" in line and "loss" in line, line
    assert ckpt.read_bytes() == before  # the epoch-1 checkpoint is untouched
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
