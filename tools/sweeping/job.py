"""The job a sweep submits for one column: main.py for the column's trial group, requeued by submitit when the
cluster signals it (preemption, or its time limit near), and resumed from the trials' per-epoch checkpoints.

This module runs inside submitit's job process, on a cluster node: it is pickled with the job (by value, see
folder.py), so it imports nothing of the project, and the process needs nothing of it but submitit.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import submitit

# How long main.py gets to stop on SIGINT before it is killed; keep Slurm's signal delay (--signal-delay-s) above it.
STOP_WAIT_S = 60


def write_json(path: Path, data: Any) -> None:
    """Whole or not at all (a temporary file, then a rename): a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: a file nested thousands deep
        return None


def trial_results(runs: Path, trials: list[int]) -> list[dict[str, Any] | None]:
    """Each trial's results.json under the column's experiments_dir (None until its first epoch is saved)."""
    found = []
    for trial in trials:  # where several experiment folders of the column hold the trial: the furthest
        results = [r for r in map(read_json, runs.glob(f"*/trial_{trial}/results.json"))
                   if isinstance(r, dict) and isinstance(r.get("last_epoch") or 0, int)]  # else damaged: unread
        found.append(max(results, key=lambda r: r.get("last_epoch") or 0, default=None))
    return found


def trained(results: dict[str, Any] | None, epochs: int) -> bool:
    return bool(results and results.get("finished") and (results.get("last_epoch") or 0) >= epochs)


def _shield() -> None:
    """Run in main.py's process before it starts. Slurm signals every process of the job (SIGTERM when it ends
    or preempts it, the requeue signal before its time limit); left to their default both kill main.py at once.
    The job's own process answers them for main.py: submitit ignores SIGTERM, and on the requeue signal stops
    main.py with SIGINT. A job ended without one is killed (SIGKILL) and loses its epoch in progress."""
    for sig in (signal.SIGTERM, signal.Signals[f"SIG{submitit.JobEnvironment.USR_SIG}"]):
        signal.signal(sig, signal.SIG_IGN)


def _reap(child: subprocess.Popen[str]) -> int | None:
    """main.py's exit status once it has ended, else None. os.waitpid, not Popen.poll: this also runs inside
    submitit's signal handler, which may have interrupted a Popen method holding the Popen's lock."""
    if child.returncode is None:
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:  # reaped already
            pid, status = child.pid, 255 << 8
        if pid == child.pid:
            child.returncode = os.waitstatus_to_exitcode(status)
    return child.returncode


def _copy_lines(stream: TextIO, last: list[str]) -> None:
    """main.py's stderr into this job's (submitit's log), keeping its last line: the error, if it failed."""
    for line in stream:
        sys.stderr.write(line)
        sys.stderr.flush()
        if line.strip():
            last[:] = [line.strip()]


class ColumnJob(submitit.helpers.Checkpointable):
    """`python main.py -opt FILE -t TRIALS --set ...` for one column, with `--resume` once any of its trials has
    saved an epoch; nothing at all once every trial has trained all its epochs.

    main.py runs as a child process: submitit requeues from a signal handler and then exits wherever this process
    was, which in-process would be inside a training step. The child is stopped as Ctrl-C stops main.py (SIGINT):
    it closes its files and releases its locks, and the requeued job resumes its last per-epoch checkpoint. The
    run is also exactly the command-line run, and its memory and GPU are freed when it ends.
    Whether to resume is read from the trial folders when the job starts, not carried in the job: Slurm may
    requeue the original submission itself (node failure), and a job stopped before its first epoch ended has
    nothing to resume (main.py refuses --resume then).
    """

    def __init__(self, column: str, command: list[str], cwd: str, runs: Path, trials: list[int], epochs: int,
                 state_file: Path, attempt: int) -> None:
        self.column, self.command, self.cwd, self.runs = column, command, cwd, runs
        self.trials, self.epochs, self.state_file, self.attempt = trials, epochs, state_file, attempt
        self._child: subprocess.Popen[str] | None = None

    def __getstate__(self) -> dict[str, Any]:  # what a requeue pickles: never the running child
        return {**self.__dict__, "_child": None}

    def __call__(self) -> str:
        if all(trained(r, self.epochs) for r in trial_results(self.runs, self.trials)):
            self._record("finished")
            print(f"{self.column}: every trial has trained all {self.epochs} epochs; nothing to do", flush=True)
            return "finished"
        resume = any(any(self.runs.glob(f"*/trial_{t}/model/checkpoint.pth")) for t in self.trials)
        command = self.command + (["--resume"] if resume else [])
        print(f"{self.column}: {shlex.join(command)}", flush=True)
        status, last_line = self._run(command)
        if status == 0:
            self._record("finished")
            return "finished"
        error = (f"main.py exited with status {status}: {last_line}" if status > 0 else
                 f"main.py was killed by {signal.Signals(-status).name}")
        self._record("failed", error=error)
        raise RuntimeError(f"{self.column}: {error}")

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """submitit calls this on the requeue signal: stop main.py, then requeue this same job."""
        self._stop_child()
        self._record("requeued")
        return super().checkpoint(*args, **kwargs)

    def _run(self, command: list[str]) -> tuple[int, str]:
        child = subprocess.Popen(command, cwd=self.cwd, stderr=subprocess.PIPE, text=True, errors="replace",
                                 preexec_fn=_shield)
        self._child = child
        last: list[str] = []
        reader = threading.Thread(target=_copy_lines, args=(child.stderr, last), daemon=True)
        reader.start()
        self._record("running", child=child.pid)
        try:
            while (status := _reap(child)) is None:
                time.sleep(0.5)
        except BaseException as stop:  # the requeue (after checkpoint()), or Ctrl-C / the local controller's SIGINT
            if isinstance(stop, KeyboardInterrupt):
                self._record("failed", error="stopped by Ctrl-C (SIGINT)")
            self._stop_child()
            raise
        reader.join(timeout=10)
        return status, last[0] if last else "(no message)"

    def _stop_child(self) -> None:
        child = self._child
        if child is None or _reap(child) is not None:
            return
        os.kill(child.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        while _reap(child) is None:
            if time.monotonic() > deadline:
                os.kill(child.pid, signal.SIGKILL)
                deadline = float("inf")
            time.sleep(0.2)

    def _record(self, state: str, **extra: Any) -> None:
        """The column's state file (jobs/<column>.json), read by `tools/sweep.py status`."""
        try:
            job_id = submitit.JobEnvironment().job_id
        except RuntimeError:  # run in-process by the debug executor outside its environment
            job_id = None
        write_json(self.state_file, {"state": state, "attempt": self.attempt, "job_id": job_id,
                                     "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), **extra})
