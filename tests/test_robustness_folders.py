"""Trial folders that are damaged, lost, locked or out of reach: one line and exit status 2, before anything is
written (or, for a trial of a group, that trial alone stops), never a traceback, never a run over old results.

Every case starts from a copy of one finished group (-t 1-2, 2 epochs of 16 images: one step each), in its own
experiments_dir; the quick refusals run together in one process (tests/main_batch.py).
"""
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from helpers import main_env, run_main, tiny_options, write_yaml
from main_batch import run_batch
from test_robustness_inputs import one_error_line, snapshot
from test_robustness_stops import pause_dir, start, stderr_line, wait_for
from test_train_e2e import COCORD_FOLDER, PUBLISHED_TAGS, scalars

from dataset import make_tiny_cifar

pytestmark = pytest.mark.slow
KILLPOINT = str(ROOT / "tests" / "killpoint.py")


def at(*specs_and_args: str) -> list[str]:
    """main.py through tests/killpoint.py: `at(SUFFIX, N, ACTION, ..., "--", MAIN_ARGS...)`."""
    return [sys.executable, KILLPOINT, *specs_and_args]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_teacher):
    """A finished group of two 2-epoch trials, and its options file (absolute data and teacher paths)."""
    work = tmp_path_factory.mktemp("robust_folders")
    make_tiny_cifar(str(work / "d16"), n_train=16, n_test=16, num_classes=10, seed=0)
    make_tiny_cifar(str(work / "d16b"), n_train=16, n_test=16, num_classes=10, seed=1)
    write_yaml(work / "opt.yml", tiny_options(str(work / "d16"), tiny_teacher, epochs=2))
    done = run_main(["-opt", "opt.yml", "-t", "1-2", "--quiet"], work)
    assert done.returncode == 0, done.stderr
    return work


def copy_of(base: Path, work: Path, name: str = "experiments") -> Path:
    """The finished group, copied into `work/name` (an experiments_dir); returns its experiment folder."""
    shutil.copytree(base / "experiments", work / name)
    shutil.copy(base / "opt.yml", work / "opt.yml")
    return work / name / COCORD_FOLDER


def test_damaged_lost_or_impossible_trial_folders_are_refused(tmp_path, base):
    """Issue 21 items 1, 4, 7, 9 and 14, and a resume of a trial that never existed: each refused with one line
    before anything is written (run.json as a folder used to crash after results.json and options.yml were
    rewritten; a group trial without its checkpoint was trained again over its results)."""
    cases = []  # (case folder, how to damage the copy, extra arguments, words the line must hold)

    def case(name, damage, args, words):
        folder = copy_of(base, tmp_path, name) if damage is not None else None
        if damage is not None:
            damage(folder)
        cases.append((["-opt", "opt.yml", "--set", f"experiments_dir={name}", *args], words))

    def into_folder(relative):
        def damage(folder):
            path = folder / relative
            path.unlink()
            path.mkdir()
        return damage

    def without_best_epoch(folder):
        path = folder / "trial_1" / "model" / "checkpoint.pth"
        ckpt = torch.load(path, weights_only=True)
        del ckpt["best_epoch"]
        torch.save(ckpt, path)

    def trial_2_a_file(folder):
        shutil.rmtree(folder / "trial_2")
        (folder / "trial_2").write_text("not a folder")

    def lose_checkpoint(folder):
        (folder / "trial_2" / "model" / "checkpoint.pth").unlink()

    def deep_run_json(folder):  # it once crashed the resume with a RecursionError
        (folder / "trial_1" / "run.json").write_text('{"sessions": ' + "[" * 100_000 + "]" * 100_000 + "}")

    def huge_run_json(folder):  # sparse: 17 MB without writing them
        with open(folder / "trial_1" / "run.json", "r+b") as f:
            f.truncate(17 << 20)

    resume = ["epochs=3", "--resume", "-t"]
    case("run_json", into_folder("trial_1/run.json"), [*resume, "1"], ["run.json is a folder", "move it away"])
    case("run_json_deep", deep_run_json, [*resume, "1"], ["run.json nests deeper", "move it away"])
    case("run_json_huge", huge_run_json, [*resume, "1"], ["run.json is", "over the", "move it away"])
    case("train_log", into_folder("trial_1/train.log"), [*resume, "1"], ["train.log is a folder"])
    case("results", into_folder("trial_2/results.json"), [*resume, "1-2"], ["trial_2", "results.json is a folder"])
    case("tmp", lambda folder: (folder / "trial_1/model/checkpoint.pth.tmp").mkdir(), [*resume, "1"],
         ["model/checkpoint.pth.tmp is a folder"])
    case("ckpt", into_folder("trial_2/model/checkpoint.pth"), [*resume, "1-2"], ["checkpoint.pth is not a regular"])
    case("file", trial_2_a_file, [*resume, "1-2"], ["trial_2", "is a file"])
    case("keys", without_best_epoch, [*resume, "1"], ["lacks best_epoch", "damaged"])
    case("lost", lose_checkpoint, [*resume, "1-2"], ["trial_2", "checkpoint.pth is missing", "results.json"])
    case("lost_one", lose_checkpoint, [*resume, "2"], ["trial_2", "checkpoint.pth is missing", "move the folder"])
    case("fewer", lambda folder: None, ["epochs=1", "--resume", "-t", "1-2"], ["epochs=1", "trained 2 epochs"])
    case("never", lambda folder: None, [*resume, "9"], ["nothing to resume", "no run at", "trial_9"])
    case("long", None, ["experiment_name=" + "x" * 300], ["300 bytes", "shorter experiment_name"])
    case("wide", None, ["experiment_name=" + "\u4e00" * 90], ["270 bytes", "shorter experiment_name"])
    # 65536 resnet32x4 need terabytes: said before the teacher (missing here) is read, before any trial is made.
    case("many", None, ["path.teacher=missing.pth", "student_model=resnet32x4", "-t", "1-65536"],
         ["GiB", "65536 trial"])

    before = snapshot(tmp_path)
    results = run_batch([argv for argv, _ in cases], tmp_path)
    for (argv, words), result in zip(cases, results):
        assert result["rc"] == 2, (argv, result["stderr"])
        line = one_error_line(result)
        for word in words:
            assert word in line, (argv, line)
        assert result["peak_growth_mb"] < 500, (argv, result)
    assert snapshot(tmp_path) == before  # nothing written, renamed or made, not even an experiment folder


def chattr(flag: str, *paths: Path) -> bool:
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True).returncode == 0


def test_folders_and_locks_this_user_cannot_write(tmp_path, base):
    """Issue 21 item 6: an experiment folder, a trial folder or a model folder that cannot be written, and a lock
    file another user left, each one line before anything is written. The tests run as root, which ignores
    permission bits: the immutable attribute (chattr +i) makes the folder or file unwritable for root too."""
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr")
    folders = {name: copy_of(base, tmp_path, name) for name in ("exp", "trial", "model", "lock")}
    (folders["lock"] / ".trial_1.lock").write_text("process 1")
    locked = [folders["exp"], folders["trial"] / "trial_1", folders["model"] / "trial_1" / "model",
              folders["lock"] / ".trial_1.lock"]
    if not chattr("+i", *locked):
        pytest.skip("this file system has no immutable attribute")
    resume = ["epochs=3", "--resume", "-t", "1"]
    cases = [("exp", ["-t", "3"], ["experiment folder", "not writable"]),
             ("exp", resume, ["experiment folder", "not writable"]),
             ("trial", resume, ["trial folder", "trial_1", "not writable"]),
             ("model", resume, ["trial folder", "model", "not writable"]),
             ("lock", resume, ["cannot lock", ".trial_1.lock", "not writable", "remove it"])]
    try:
        before = snapshot(tmp_path)
        results = run_batch([["-opt", "opt.yml", "--set", f"experiments_dir={name}", *args]
                             for name, args, _ in cases], tmp_path)
        after = snapshot(tmp_path)
    finally:
        chattr("-i", *locked)
    for (name, args, words), result in zip(cases, results):
        assert result["rc"] == 2, (name, args, result["stderr"])
        line = one_error_line(result)
        for word in words:
            assert word in line, (name, line)
    assert after == before


def test_a_file_system_without_locks(tmp_path, base):
    """Issue 21 item 6: every flock fails with ENOLCK (NFS without a lock daemon; made to fail here at the call, as
    this machine's file systems all lock): one line that says so, exit status 2."""
    copy_of(base, tmp_path)
    done = subprocess.run(at("call:fcntl.flock", "*", "raise:37", "--", "-opt", "opt.yml", "-t", "3"),
                          cwd=tmp_path, env=main_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = stderr_line(done.stderr)
    assert line.startswith("error: cannot lock") and "no file locks" in line and "[Errno" not in line, line
    assert not (tmp_path / "experiments" / COCORD_FOLDER / "trial_3").exists()


def test_a_run_starting_while_another_makes_its_folders_is_told_it_is_busy(tmp_path, base):
    """`-t 2-3` started while `-t 1-2` has made its trial folders and not yet written into them: told that trial 2
    is being trained (the lock is checked before the folder is judged), not that trial 2 holds someone's files."""
    shutil.copy(base / "opt.yml", tmp_path / "opt.yml")
    first = pause_dir(tmp_path, "first")
    making = start(at("trial_1/options.yml.tmp", "1", f"pause:{first}", "--", "-opt", "opt.yml", "-t", "1-2",
                      "--quiet", "--set", "epochs=1"), tmp_path)
    wait_for(first / "here", making)
    assert (tmp_path / "experiments" / COCORD_FOLDER / "trial_2").is_dir()
    second = run_main(["-opt", "opt.yml", "-t", "2-3", "--set", "epochs=1"], tmp_path)
    (first / "go").touch()
    assert making.wait(timeout=300) == 0, making.communicate()
    assert second.returncode == 2
    line = stderr_line(second.stderr)
    assert "trial_2 is being trained by process" in line, line
    assert not (tmp_path / "experiments" / COCORD_FOLDER / "trial_3").exists()


def test_a_trial_folder_removed_while_its_group_trains(tmp_path, base):
    """Issue 21 item 8: trial 2's folder is removed in the middle of the first epoch's saves: trial 2 stops with a
    line that says so, trial 1 finishes, exit status 1; trial 2's folder is not made again."""
    shutil.copy(base / "opt.yml", tmp_path / "opt.yml")
    paused = pause_dir(tmp_path, "saving")
    proc = start(at("rename:trial_1/model/checkpoint.pth.tmp", "1", f"pause:{paused}", "--", "-opt", "opt.yml",
                    "-t", "1-2"), tmp_path)
    wait_for(paused / "here", proc)
    folder = tmp_path / "experiments" / COCORD_FOLDER
    shutil.rmtree(folder / "trial_2")
    (paused / "go").touch()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = stderr_line(err)
    assert "1 of 2 trials stopped: trial 2: its folder" in line and "could not be written" in line, line
    assert "trial 2: its folder" in out and "the other trials go on" in out, out
    assert not (folder / "trial_2").exists()
    results = json.loads((folder / "trial_1" / "results.json").read_text())
    assert results["finished"] and [h["epoch"] for h in results["history"]] == [1, 2]


def test_a_group_killed_before_a_trials_first_checkpoint(tmp_path, base):
    """Issue 21 item 3: killed as trial 2 writes its first checkpoint (its epoch 1 already in TensorBoard): the
    resume says where each trial goes on from, and trial 2's epochs are in TensorBoard once each. Item 4: a
    resume with epochs equal to the saved epoch ends the run there, with its ckpt_epoch_N.pth."""
    shutil.copy(base / "opt.yml", tmp_path / "opt.yml")
    killed = subprocess.run(at("trial_2/model/checkpoint.pth.tmp", "1", "kill", "--", "-opt", "opt.yml", "-t", "1-2",
                               "--quiet"), cwd=tmp_path, env=main_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    folder = tmp_path / "experiments" / COCORD_FOLDER
    assert not (folder / "trial_2" / "model" / "checkpoint.pth").exists()
    shutil.copytree(folder / "trial_1", tmp_path / "ends" / COCORD_FOLDER / "trial_1")

    resumed, ended = run_batch([
        ["-opt", "opt.yml", "-t", "1-2", "--resume"],
        ["-opt", "opt.yml", "-t", "1", "--resume", "--set", "epochs=1", "experiments_dir=ends"]], tmp_path)
    assert resumed["rc"] == 0 and resumed["stderr"] == "", resumed["stderr"]
    for t in (1, 2):
        log = (folder / f"trial_{t}" / "train.log").read_text().splitlines()
        assert "resuming trial 1 from epoch 1 and trial 2 from the start (no epoch saved); the run trains to epoch 2" \
            in log, log
        for tag in PUBLISHED_TAGS:
            assert [step for step, _ in scalars(folder / f"trial_{t}")[tag]] == [1, 2], (t, tag)

    assert ended["rc"] == 0 and ended["stderr"] == "", ended["stderr"]
    trial = tmp_path / "ends" / COCORD_FOLDER / "trial_1"
    results = json.loads((trial / "results.json").read_text())
    assert results["finished"] and results["epochs"] == results["last_epoch"] == 1
    final = torch.load(trial / "model" / "ckpt_epoch_1.pth", weights_only=True)
    ckpt = torch.load(trial / "model" / "checkpoint.pth", weights_only=True)
    assert final["epoch"] == ckpt["epoch"] == 1 and ckpt["options"]["epochs"] == 1
    assert "the run ends at epoch 1, as epochs=1 asks" in (trial / "train.log").read_text()


def test_every_trial_of_a_group_diverging_says_what_to_do(tmp_path, base):
    """A learning rate of 1e30 makes both trials' test losses NaN after the first step: no line says the other
    trials go on; the last line says what to do, and doing it works: the same command with another learning rate
    runs (the folders hold no finished epoch: archived, no --replace needed), and --resume says there is nothing
    to resume and why."""
    # One folder, named by hand: another learning rate would otherwise be another run's folder.
    (tmp_path / "opt.yml").write_text((base / "opt.yml").read_text() + "experiment_name: pinned\n")
    run = ["-opt", "opt.yml", "-t", "1-2", "--set", "epochs=1"]
    diverged = subprocess.run([sys.executable, str(ROOT / "main.py"), *run, "learning_rate=1e30"], cwd=tmp_path,
                              env=main_env(), capture_output=True, text=True, timeout=300)
    assert diverged.returncode == 1, diverged.stderr
    line = stderr_line(diverged.stderr)
    assert line.startswith("error: every trial stopped: trial 1: ") and "trial 2: " in line, line
    assert "run the command with them" in line and "go on" not in diverged.stdout, (line, diverged.stdout)

    resumed, again = run_batch([[*run, "--resume"], run], tmp_path)
    assert resumed["rc"] == 2
    said = one_error_line(resumed)
    assert "no trial there has a model/checkpoint.pth" in said and "without --resume" in said, said
    assert again["rc"] == 0, again["stderr"]
    folder = tmp_path / "experiments" / "pinned"
    assert json.loads((folder / "trial_2" / "results.json").read_text())["finished"]
    assert len([p for p in folder.iterdir() if p.name.startswith("trial_2_archived_")]) == 1


def test_resume_messages_say_what_happened(tmp_path, base):
    """Issue 23 item 4: a resume of a finished run with another data_folder evaluates nothing and changes
    nothing (no teacher accuracy, no event file); an ordinary --set epochs resume says where it goes on from and
    reports no repair; a group's epoch lines say their img/s is per trial; a refused new run shows integers."""
    folder = copy_of(base, tmp_path)
    results = {t: (folder / f"trial_{t}" / "results.json").read_bytes() for t in (1, 2)}
    events = sorted(p.name for p in folder.rglob("events.out.tfevents.*"))
    finished, refused = run_batch([
        ["-opt", "opt.yml", "-t", "1-2", "--resume", "--set", f"data_folder={base / 'd16b'}"],
        ["-opt", "opt.yml", "-t", "1", "--set", "epochs=3"]], tmp_path)
    assert finished["rc"] == 0, finished["stderr"]
    log = (folder / "trial_1" / "train.log").read_text()
    said = log[log.index(f"data_folder='{base / 'd16b'}'"):]
    assert "test accuracy" not in said and "resuming trials 1, 2 from epoch 2; the run trains to epoch 2" in said, said
    assert {t: (folder / f"trial_{t}" / "results.json").read_bytes() for t in (1, 2)} == results
    assert sorted(p.name for p in folder.rglob("events.out.tfevents.*")) == events

    assert refused["rc"] == 2 and "epochs 2 -> 3" in one_error_line(refused), refused["stderr"]

    [longer] = run_batch([["-opt", "opt.yml", "-t", "1-2", "--resume", "--set", "epochs=3"]], tmp_path)
    assert longer["rc"] == 0, longer["stderr"]
    said = (folder / "trial_2" / "train.log").read_text().split("epochs=3 (was 2)")[-1]
    assert "resuming trials 1, 2 from epoch 2; the run trains to epoch 3" in said and "rewrote" not in said, said
    epoch_lines = [line for line in said.splitlines() if line.startswith("epoch 3/3 trial")]
    assert len(epoch_lines) == 2 and all(" img/s per trial (" in line for line in epoch_lines), epoch_lines


def test_ctrl_c_before_the_first_epoch_puts_the_archived_run_back(tmp_path, base):
    """Issue 23 item 4: a new run archives the finished run of the same settings, then Ctrl-C comes before its
    first epoch is saved: the folder it made is removed and the old run is back in its place, as it was."""
    folder = copy_of(base, tmp_path)
    before = snapshot(folder / "trial_1")
    paused = pause_dir(tmp_path, "saving")
    proc = start(at("rename:trial_1/model/checkpoint.pth.tmp", "1", f"pause:{paused}", "--", "-opt", "opt.yml",
                    "-t", "1"), tmp_path)
    wait_for(paused / "here", proc)
    assert [p.name.startswith("trial_1_archived_") for p in folder.iterdir() if p.name.startswith("trial_1")] \
        .count(True) == 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    line = stderr_line(err)
    assert "nothing was saved" in line and "the run it had archived is back in its place" in line, line
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["trial_1", "trial_2"]
    assert snapshot(folder / "trial_1") == before
