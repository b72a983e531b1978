"""tools/sweep.py: columns of main.py runs as submitit jobs (the local executor: real processes on the CPU), a job
requeued by the preemption signal resuming its trials, `resubmit` continuing failed columns, Slurm's job array
shown without Slurm, and bad input refused before anything is written."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT
from helpers import main_env, save_random_teacher, tiny_options, write_yaml
from test_train_e2e import scalars

sys.path.insert(0, str(ROOT / "tools"))  # tools/sweeping, as tools/sweep.py imports it

from sweeping.clusters import DEFAULTS, minutes, sbatch_text  # noqa: E402
from sweeping.columns import SweepError, build_columns, split_values  # noqa: E402
from sweeping.folder import Sweep  # noqa: E402
from sweeping.job import read_json  # noqa: E402

SWEEP = str(ROOT / "tools" / "sweep.py")
SUMMARIZE = str(ROOT / "tools" / "summarize.py")
TAGS = ("loss_train/total", "acc_val/top_1", "acc_cocord/top_1")


def sweep(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, SWEEP, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=main_env())


def start_sweep(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, SWEEP, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=main_env())


def trial_folder(sweep_dir: Path, column: str, trial: int) -> Path:
    found = list((sweep_dir / "runs").glob(f"{column}*/*/trial_{trial}"))
    assert len(found) == 1, found
    return found[0]


def wait_for_epoch(sweep_dir: Path, column: str, trials: list[int], proc: subprocess.Popen[str]) -> dict:
    """The column's job state once every trial has saved its first epoch (main.py is then in a later one)."""
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        state = next((read_json(p) for p in (sweep_dir / "jobs").glob(f"{column}*.json")), None)
        results = [read_json(p) for t in trials
                   for p in (sweep_dir / "runs").glob(f"{column}*/*/trial_{t}/results.json")]
        if state and "child" in state and len(results) == len(trials) and all(r and r["last_epoch"] for r in results):
            return state
        time.sleep(0.05)
    raise AssertionError(f"no epoch saved: {proc.communicate()[0] if proc.poll() is not None else 'timed out'}")


def assert_every_epoch_once(trial: Path, epochs: int) -> None:
    results = json.loads((trial / "results.json").read_text())
    assert results["finished"] and [h["epoch"] for h in results["history"]] == list(range(1, epochs + 1))
    tags = scalars(trial)
    for tag in TAGS:
        assert [step for step, _ in tags[tag]] == list(range(1, epochs + 1)), tag


def test_grid_values_columns_and_time_limits():
    assert split_values("0.05,0.1, 0.2") == ["0.05", "0.1", "0.2"]
    assert split_values("[150,180,210],[100,150]") == ["[150,180,210]", "[100,150]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    for bad in ("1,,2", "[1,2", "'a,b"):
        with pytest.raises(SweepError):
            split_values(bad)
    columns = build_columns(["a/x.yml", "b/y.yml"], ["epochs=5", "cocord.T=0.05,0.1", "lr_decay_epochs=[3,4]"],
                            ["cocord: loss_kd=0", "kd: distill=kd loss_cls=0.1"])
    assert len(columns) == 2 * 2 * 2 and len({c.name for c in columns}) == 8
    assert columns[0].name == "1-x-cocord-cocord.T=0.05"
    assert columns[-1].overrides == ["epochs=5", "lr_decay_epochs=[3,4]", "distill=kd", "loss_cls=0.1", "cocord.T=0.1"]
    for grid, variants in ((["experiments_dir=a,b"], []), (["epochs=1", "epochs=2"], []), ([], ["kd distill=kd"])):
        with pytest.raises(SweepError):
            build_columns(["x.yml"], grid, variants)
    assert (minutes("240"), minutes("4:00:00"), minutes("1-12:00:00"), minutes("0:30"), minutes("2-0")) == \
        (240, 240, 2160, 1, 2880)


def test_a_variant_with_an_unclosed_quote_is_refused_in_one_line():
    with pytest.raises(SweepError, match="close its quotes"):  # was shlex's ValueError: a traceback
        build_columns(["x.yml"], [], ["kd: path.teacher='a b.pth"])


@pytest.mark.parametrize("args, expected", [
    (["missing.yml"], "missing.yml"),
    (["opt.yml", "--set", "epohcs=1,2"], "did you mean 'epochs'"),
    (["opt.yml", "--set", "cocord.T=0.1,-1"], "cocord.T=-1"),  # refused by the method's own check (imports torch)
    (["opt.yml", "--set", "experiments_dir=a"], "the sweep's to decide"),
    (["resume.yml"], "path.resume is the sweep's to decide"),  # resumed that run, in another folder
    (["opt.yml", "--time", "0"], "not longer than --signal-delay-s (90 s)"),  # ran with a 1-minute limit
    (["opt.yml", "--time", "1"], "not longer than --signal-delay-s (90 s)"),  # locally: killed at 1 min, no requeue
    (["opt.yml", "--cluster", "slurm"], "sbatch"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, tiny_cifar, args, expected):
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, "teacher.pth"))
    write_yaml(tmp_path / "resume.yml", tiny_options(tiny_cifar, "teacher.pth", path={"teacher": "teacher.pth",
                                                                                      "resume": "old/trial_1"}))
    if "slurm" in args and shutil.which("sbatch"):
        pytest.skip("Slurm is installed here")
    done = sweep(args, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert expected in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.yml", "resume.yml"]


@pytest.mark.parametrize("visible, taken", [("GPU-5e1c", False), ("", True)])
def test_refusals_after_the_options_checks_write_and_print_nothing(tmp_path, tiny_cifar, visible, taken):
    """CUDA_VISIBLE_DEVICES naming GPUs by UUID was refused after the sweep folder was written (a folder no job ran
    in, its --name then taken); a --name taken was refused by the sweep but not by its --dry-run."""
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, "teacher.pth"))
    if taken:
        (tmp_path / "experiments" / "sweeps" / "s").mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, SWEEP, "opt.yml", "--name", "s", *(["--dry-run"] if taken else [])],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=main_env(CUDA_VISIBLE_DEVICES=visible))
    assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert ("exists already" if taken else "by UUID") in done.stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_dry_run_prints_the_slurm_job_array_without_slurm(tmp_path, tiny_cifar):
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, "teacher.pth"))
    done = subprocess.run([sys.executable, SWEEP, "opt.yml", "-t", "1-2", "--set", "loss_cls=1,2", "--name", "s",
                           "--cluster", "slurm", "--dry-run", "--partition", "gpu", "--gpus-per-job", "1",
                           "--cpus-per-job", "4", "--mem-gb", "16", "--time", "4:00:00", "--account", "lab",
                           "--sbatch", "qos=high", "--array-parallelism", "1"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=main_env(PATH=os.path.dirname(sys.executable)))  # no sbatch
    assert done.returncode == 0, done.stderr
    for line in ("--array=0-1%1", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--mem=16GB",
                 "--time=240", "--account=lab", "--qos=high", "--signal=USR2@90", "--job-name=sweep_s"):
        assert f"#SBATCH {line}\n" in done.stdout, line
    commands = [line for line in done.stdout.splitlines() if "main.py -opt" in line]
    assert len(commands) == 2 and all(" -t 1-2 " in c for c in commands)
    assert "loss_cls=1 " in commands[0] and "loss_cls=2 " in commands[1]
    assert "submitit.core._submit" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.yml"]  # nothing written


def test_an_sbatch_flag_replaces_the_setting_it_names(tmp_path):
    """--sbatch cpus-per-task=16 added a line before the sweep's own --cpus-per-task=8, which won."""
    text = sbatch_text(Sweep(tmp_path / "s"), {**DEFAULTS, "sbatch": ["cpus-per-task=16", "constraint=a100-80gb"]}, 2)
    assert re.findall(r"#SBATCH --(cpus-per-task|constraint)=(.*)", text) == [("constraint", "a100-80gb"),
                                                                             ("cpus-per-task", "16")], text


def test_mem_gb_is_refused_unless_whole_gigabytes(tmp_path, tiny_cifar):
    """sbatch takes --mem in whole units: --mem-gb 7.5, -1 or nan went into the sbatch file (--mem=7.5GB), which
    sbatch refused only once the sweep folder was written."""
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, "teacher.pth"))
    for bad in ("7.5", "-1", "nan"):
        done = sweep(["opt.yml", "--cluster", "slurm", "--dry-run", "--mem-gb", bad], tmp_path)
        assert done.returncode == 2 and "--mem-gb" in done.stderr and "#SBATCH" not in done.stdout, done.stdout


def test_status_counts_finished_trials_and_shows_the_epoch_in_training(tmp_path):
    """Trials that train one after another (a method that cannot be stacked): the column's progress is its
    finished trials and the epoch of the one in training, not the lowest epoch (0 until its last trial starts)."""
    root = tmp_path / "s"
    record = {"name": "s", "cluster": "local", "trials": [1, 2, 3], "trials_text": "1-3", "submitter": None,
              "columns": [{"name": "1-crd", "epochs": 240, "jobs": [str(os.getpid())]}]}
    for trial, epoch in ((1, 240), (2, 57), (3, [240])):  # trial 3's is damaged: read as none (was a traceback)
        results = root / "runs" / "1-crd" / "exp" / f"trial_{trial}" / "results.json"
        results.parent.mkdir(parents=True)
        results.write_text(json.dumps({"last_epoch": epoch, "finished": epoch != 57}))
    (root / "jobs").mkdir()
    (root / "jobs" / "1-crd.json").write_text(json.dumps({"state": "running", "attempt": 1, "pid": os.getpid(),
                                                          "host": socket.gethostname()}))
    (root / "sweep.json").write_text(json.dumps(record))
    done = sweep(["status", str(root)], tmp_path)
    assert done.returncode == 0, done.stderr
    header, row = (line.split() for line in done.stdout.splitlines()[1:3])
    assert header == ["column", "state", "trials", "epoch", "job"]
    assert row == ["1-crd", "running", "1/3", "57/240", str(os.getpid())]


def test_a_resubmit_elsewhere_leaves_the_other_columns_running(tmp_path):
    """A resubmit to another cluster made status ask that cluster about every column's job: here the debug
    process, ended by then, so a column still running in its local job read failed, and resubmitting it would
    have started a second main.py in its trial folders."""
    root = tmp_path / "s"
    record = {"name": "s", "cluster": "local", "trials": [1], "trials_text": "1", "submitter": None,
              "python": sys.executable, "cwd": str(tmp_path), "settings": {},
              "columns": [{"name": "1-running", "epochs": 2, "jobs": [str(os.getpid())], "command": []},
                          {"name": "2-unstarted", "epochs": 2, "jobs": [], "command": ["-c", "pass"]}]}
    (root / "jobs").mkdir(parents=True)
    (root / "jobs" / "1-running.json").write_text(json.dumps({"state": "running", "attempt": 1, "pid": os.getpid(),
                                                               "host": socket.gethostname()}))
    (root / "sweep.json").write_text(json.dumps(record))
    done = sweep(["resubmit", str(root), "--cluster", "debug"], tmp_path)
    status = sweep(["status", str(root)], tmp_path).stdout
    assert [line.split()[:2] for line in status.splitlines()[2:4]] == [["1-running", "running"],
                                                                      ["2-unstarted", "finished"]], done.stdout + status


@pytest.mark.slow
def test_local_sweep_of_two_columns_finishes_and_summarizes(tmp_path, tiny_cifar, tiny_teacher):
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher))
    done = sweep(["opt.yml", "-t", "1-2", "--set", "loss_cls=1,2", "--name", "s"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    root = tmp_path / "experiments" / "sweeps" / "s"
    record = json.loads((root / "sweep.json").read_text())
    assert [len(c["jobs"]) for c in record["columns"]] == [1, 1] and (root / "options" / "opt.yml").is_file()
    for column, weight in (("1-opt-loss_cls=1", 1.0), ("2-opt-loss_cls=2", 2.0)):
        for trial in (1, 2):
            folder = trial_folder(root, column, trial)
            assert json.loads((folder / "results.json").read_text())["finished"]
            assert f"loss_cls: {weight}" in (folder / "options.yml").read_text()
    status = sweep(["status", "s"], tmp_path)
    assert status.returncode == 0 and "2 finished" in status.stdout, status.stdout
    table = subprocess.run([sys.executable, SUMMARIZE, str(root), "--json"], capture_output=True, text=True,
                           timeout=120, env=main_env())
    assert table.returncode == 0, table.stderr
    groups = json.loads(table.stdout)["groups"]
    assert sorted((g["n"], g["options"]["loss_cls"]) for g in groups) == [(2, 1.0), (2, 2.0)]


@pytest.mark.slow
def test_preempted_job_is_requeued_and_logs_every_epoch_once(tmp_path, tiny_cifar, tiny_teacher):
    epochs = 3
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=epochs))
    proc = start_sweep(["opt.yml", "-t", "1-2", "--name", "p"], tmp_path)
    root = tmp_path / "experiments" / "sweeps" / "p"
    state = wait_for_epoch(root, "1-opt", [1, 2], proc)
    # What Slurm sends every process of a preempted job: SIGTERM, then the requeue signal (USR2). main.py ignores
    # both; the job's process stops it with SIGINT and requeues. (Not LocalJob._interrupt(): in submitit 1.5.4 it
    # signals the local controller, which has no handler for USR2 and dies, while the job runs on unsignalled.)
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        os.kill(state["child"], sig)
    os.kill(state["pid"], signal.SIGUSR2)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    logs = "".join(p.read_text() for p in sorted((root / "logs").glob("*_log.*")))
    assert "this job is preempted" in logs and "Requeued job" in logs, logs
    stopped = re.search(r"interrupted; epoch (\d) is saved", logs)
    assert stopped and int(stopped.group(1)) < epochs, logs
    for trial in (1, 2):
        folder = trial_folder(root, "1-opt", trial)
        assert_every_epoch_once(folder, epochs)
        sessions = json.loads((folder / "run.json").read_text())["sessions"]
        assert len(sessions) == 2 and sessions[1]["command"].endswith("--resume")

    # Requeued once more after its trials finished, the job starts nothing.
    record = json.loads((root / "sweep.json").read_text())
    files = sorted(p.name for p in trial_folder(root, "1-opt", 1).iterdir())
    assert Sweep(root).job(record, record["columns"][0])() == "finished"
    assert sorted(p.name for p in trial_folder(root, "1-opt", 1).iterdir()) == files
    assert len(json.loads((trial_folder(root, "1-opt", 1) / "run.json").read_text())["sessions"]) == 2


@pytest.mark.slow
def test_resubmit_continues_the_failed_columns(tmp_path, tiny_cifar, tiny_teacher):
    epochs, missing = 3, tmp_path / "later.pth"
    write_yaml(tmp_path / "opt.yml", tiny_options(tiny_cifar, tiny_teacher, epochs=epochs))
    proc = start_sweep(["opt.yml", "--set", f"path.teacher={missing},{tiny_teacher}", "--name", "r"], tmp_path)
    root = tmp_path / "experiments" / "sweeps" / "r"
    state = wait_for_epoch(root, "2-opt", [1], proc)  # the first column has failed by now: no teacher
    os.kill(state["child"], signal.SIGKILL)  # the second dies mid-epoch, as on running out of memory
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, output
    status = sweep(["status", "r"], tmp_path).stdout
    rows = {line.split()[0]: line for line in status.splitlines() if line.startswith("  ") and "-opt-" in line}
    first, second = (rows[name] for name in sorted(rows))
    assert " failed " in first and f"main.py exited with status 2: error: checkpoint {missing}" in first, status
    assert " failed " in second and "killed by SIGKILL" in second, status
    assert "2 to resubmit" in status and "python tools/sweep.py resubmit" in status

    save_random_teacher(missing, "resnet8", seed=1)
    done = sweep(["resubmit", "r"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 finished" in done.stdout
    for name in sorted(rows):
        assert_every_epoch_once(trial_folder(root, name, 1), epochs)
    sessions = json.loads((trial_folder(root, sorted(rows)[1], 1) / "run.json").read_text())["sessions"]
    assert len(sessions) == 2 and sessions[1]["command"].endswith("--resume")  # continued, not restarted
