"""Nothing lost, nothing hung: runs stopped at exact points (tests/killpoint.py: SIGKILL, a full disk, Ctrl-C
while a given file is being written), and two processes on one trial.

Trial 3 of these settings (16 images: one step per epoch) has its best test accuracy in epoch 2 of 2.
"""
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import main_env, run_main, tiny_options, write_yaml
from main_batch import run_batch
from test_train_e2e import COCORD_FOLDER, scalars

from dataset import make_tiny_cifar

pytestmark = pytest.mark.slow
KILLPOINT = str(ROOT / "tests" / "killpoint.py")
ENV = main_env()


def at(suffix: str, nth: int, action: str, *args: str) -> list[str]:
    """main.py ARGS, acting (tests/killpoint.py) at the nth open of a file ending in `suffix` for writing."""
    return [sys.executable, KILLPOINT, suffix, str(nth), action, "--", *args]


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def pause_dir(work: Path, name: str) -> Path:
    folder = work / name
    folder.mkdir()
    return folder


def stderr_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def assert_consistent(trial: Path, epochs: int) -> None:
    """A finished trial whose files agree: checkpoint, best.pth, ckpt_epoch_N.pth, results.json, TensorBoard."""
    ckpt = torch.load(trial / "model" / "checkpoint.pth", weights_only=True)
    results = json.loads((trial / "results.json").read_text())
    best = torch.load(trial / "model" / "best.pth", weights_only=True)
    assert ckpt["epoch"] == epochs and results["finished"] and results["last_epoch"] == epochs
    assert results["history"] == ckpt["history"] and [h["epoch"] for h in results["history"]] == [1, 2]
    assert results["best_epoch"] == ckpt["best_epoch"] == best["epoch"], (results["best_epoch"], best["epoch"])
    assert results["best_acc"] == ckpt["best_acc"] == best["best_acc"]
    final = torch.load(trial / "model" / f"ckpt_epoch_{epochs}.pth", weights_only=True)
    assert final["epoch"] == epochs
    for key, value in ckpt["model"].items():
        assert torch.equal(final["model"][key], value), key
        if best["epoch"] == epochs:
            assert torch.equal(best["model"][key], value), key
    for tag, values in scalars(trial).items():
        assert [step for step, _ in values] == list(range(1, epochs + 1)), tag
    assert not list(trial.rglob("*.tmp"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_teacher):
    shared = tmp_path_factory.mktemp("robust_stops")
    make_tiny_cifar(str(shared / "d16"), n_train=16, n_test=16, num_classes=10, seed=0)
    return write_yaml(shared / "opt.yml", tiny_options(str(shared / "d16"), tiny_teacher, epochs=2))


@pytest.mark.parametrize("suffix,nth", [("trial_5/results.json.tmp", 2), ("model/best.pth.tmp", 2)],
                         ids=["before results.json", "before best.pth"])
def test_killed_after_the_final_checkpoint_a_resume_completes_the_files(tmp_path, setup, suffix, nth):
    """Scenarios 2 and 3: SIGKILL after checkpoint.pth of the final (and best) epoch, before results.json or
    before best.pth: --resume completes the run's files (exit 0), it does not refuse a finished run."""
    run = ["-opt", setup, "-t", "5", "--quiet"]
    killed = subprocess.run(at(suffix, nth, "kill", *run), cwd=tmp_path, env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    trial = tmp_path / "experiments" / COCORD_FOLDER / "trial_5"
    ckpt = torch.load(trial / "model" / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["best_epoch"] == 2, "the fixed seed should make epoch 2 the best"
    assert json.loads((trial / "results.json").read_text())["last_epoch"] == 1  # not yet written for epoch 2
    expected_best = 2 if "results" in suffix else 1
    assert torch.load(trial / "model" / "best.pth", weights_only=True)["epoch"] == expected_best

    done = run_main(["-opt", setup, "-t", "5", "--resume"], tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "rewrote" in done.stdout and "results.json" in done.stdout
    assert_consistent(trial, 2)


def test_two_processes_on_one_trial(tmp_path, setup):
    """Scenario 4: a second process refuses while the first trains, without renaming its folder; one that
    checked the folder before the first began and locked it after the first ended refuses too; two started
    together: one trains, the other refuses cleanly."""
    run = ["-opt", setup, "-t", "1", "--quiet"]
    late, first = pause_dir(tmp_path, "late"), pause_dir(tmp_path, "first")
    # `late` plans (no trial_1 yet), then waits at its lock while `first` trains the trial from start to end.
    late_proc = start(at(".trial_1.lock", 1, f"pause:{late}", *run), tmp_path)
    wait_for(late / "here", late_proc)
    first_proc = start(at("model/checkpoint.pth.tmp", 1, f"pause:{first}", *run), tmp_path)
    wait_for(first / "here", first_proc)  # first is in its first epoch's save, holding the lock

    trial = tmp_path / "experiments" / COCORD_FOLDER / "trial_1"
    second = run_main(run, tmp_path)
    assert second.returncode == 2
    assert "is being trained by process" in stderr_line(second.stderr)
    (first / "go").touch()
    assert first_proc.wait(timeout=300) == 0, first_proc.communicate()
    assert_consistent(trial, 2)
    results = (trial / "results.json").read_text()

    (late / "go").touch()
    out, err = late_proc.communicate(timeout=120)
    assert late_proc.returncode == 2, err
    assert "another process" in stderr_line(err)
    assert (trial / "results.json").read_text() == results
    assert sorted(p.name for p in trial.parent.iterdir()) == [".trial_1.lock", "trial_1"]

    # Two started at once over that finished run (same settings: the winner archives it). Each is held at its lock
    # until both have planned (without that, on a busy machine one could end before the other starts: no race).
    gates = [pause_dir(tmp_path, f"gate{k}") for k in range(2)]
    both = [start(at(".trial_1.lock", 1, f"pause:{gate}", *run), tmp_path) for gate in gates]
    for gate, proc in zip(gates, both):
        wait_for(gate / "here", proc)
    for gate in gates:
        (gate / "go").touch()
    ended = [(p.wait(timeout=300), p.communicate()[1]) for p in both]
    assert sorted(rc for rc, _ in ended) == [0, 2], ended
    loser = next(err for rc, err in ended if rc == 2)
    assert "another process" in stderr_line(loser) or "being trained" in loser
    archived = [p for p in trial.parent.iterdir() if p.name.startswith("trial_1_archived_")]
    assert len(archived) == 1 and (archived[0] / "results.json").read_text() == results
    assert_consistent(trial, 2)
    assert_consistent(archived[0], 2)


def test_a_full_disk_keeps_the_last_checkpoint(tmp_path, setup):
    """Scenario 9: the second epoch's checkpoint does not fit: one line about space, no .tmp file, the first
    epoch's checkpoint whole. The disk is a small tmpfs in a private mount namespace, filled at that moment."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small tmpfs")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    command = shlex.join(at("model/checkpoint.pth.tmp", 2, f"fill:{disk}/filler", "-opt", setup, "--set",
                            f"experiments_dir={disk}/experiments"))
    script = (f'mount -t tmpfs -o size=16m tmpfs {shlex.quote(str(disk))} || exit 99; {command}; rc=$?; '
              f'cp -a {shlex.quote(str(disk))}/experiments {shlex.quote(str(out))}/; exit $rc')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=300)
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode != 0
    line = stderr_line(done.stderr)
    assert line.startswith("error: no space left") and "checkpoint.pth" in line and "--resume" in line, line
    trial = out / "experiments" / COCORD_FOLDER / "trial_1"
    assert not list(trial.rglob("*.tmp"))
    ckpt = torch.load(trial / "model" / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1
    assert json.loads((trial / "results.json").read_text())["last_epoch"] == 1


def test_ctrl_c_says_what_was_saved_and_how_to_continue(tmp_path, setup, tiny_teacher):
    """Scenario 10: Ctrl-C before the first epoch is saved says nothing was, and leaves nothing (the trial folder
    it had made is removed); Ctrl-C after an epoch (while the next one is being saved) prints the exact command
    that continues, and writes it in train.log too, and that command completes the run, saying where it goes on
    from; neither leaves the checkpoint's temporary file behind.
    A resume then refuses a teacher with other weights, and accepts (and says) a copy of the same one."""
    run = ["-opt", setup, "-t", "3"]
    trial = tmp_path / "experiments" / COCORD_FOLDER / "trial_3"
    for nth, said in ((1, "nothing was saved, and the trial folder it made removed"),
                      (2, "epoch 1 is saved; continue with: python ")):
        paused = pause_dir(tmp_path, f"pause{nth}")  # the epoch's checkpoint is written whole, not yet in place
        proc = start(at("rename:model/checkpoint.pth.tmp", nth, f"pause:{paused}", *run), tmp_path)
        wait_for(paused / "here", proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err
        line = stderr_line(err)
        assert said in line and "Traceback" not in err, line
        assert nth == 2 or not trial.exists()
    assert not list(trial.rglob("*.tmp"))
    assert torch.load(trial / "model" / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert (trial / "train.log").read_text().splitlines()[-1] == line

    again = shlex.split(line.split("continue with: ", 1)[1])
    assert again[0] == "python" and again[-1] == "--resume"
    done = subprocess.run([sys.executable, *again[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    resuming = "resuming trial 3 from epoch 1; the run trains to epoch 2"
    assert resuming in done.stdout.splitlines() and resuming in (trial / "train.log").read_text().splitlines()
    assert_consistent(trial, 2)

    other = tmp_path / "other_teacher.pth"
    ckpt = torch.load(tiny_teacher, weights_only=True)
    ckpt["model"]["fc.bias"] += 1
    torch.save(ckpt, other)
    same = tmp_path / "same_teacher.pth"
    shutil.copy(tiny_teacher, same)
    before = (trial / "results.json").read_text()
    refused, accepted = run_batch([run + ["--resume", "--set", f"path.teacher={other}"],
                                   run + ["--resume", "--set", f"path.teacher={same}"]], tmp_path)
    assert refused["rc"] == 2
    assert "not the one this run was trained with" in stderr_line(refused["stderr"])
    assert accepted["rc"] == 0 and accepted["stderr"] == "", accepted["stderr"]
    assert (trial / "results.json").read_text() == before
    said = (trial / "train.log").read_text().splitlines()
    changed = [s for s in said if s.startswith("resuming with changed options")]
    assert changed == [f"resuming with changed options: path.teacher='{same}' (was '{tiny_teacher}')"], changed
