"""Trial folders that are damaged, lost, locked or out of reach: one line and exit status 2, before anything is
written (or, for a trial of a group, that trial alone stops), never a traceback, never a run over old results.

Every case starts from a copy of one finished group (-t 1-2, 2 epochs of 16 images: one step each), in its own
experiments_dir; the quick refusals run together in one process (tests/main_batch.py).
"""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import main_env, run_main, tiny_options, write_yaml
from test_robustness_stops import pause_dir, start, stderr_line, wait_for
from test_train_e2e import COCORD_FOLDER

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
