"""Where each column of a sweep stands: queued, running (its trials finished, and the epoch of those in training),
requeued, finished, or failed with the last line of its error; read from the trial folders, the jobs' state files
and, on Slurm, sacct."""
from __future__ import annotations

import os
import shutil
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import JobPaths

from sweeping.folder import Sweep
from sweeping.job import trained, trial_results

# Slurm states of a job that is still coming or going (anything else has ended).
SLURM_ALIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
               "RESIZING", "SUSPENDED", "PREEMPTED", "SIGNALING", "STAGE_OUT")
RESUBMITTABLE = ("failed", "not started")


@dataclass
class ColumnStatus:
    name: str
    state: str  # queued, running, requeued, finished, failed, not started
    trials: str  # trials that have trained every epoch, of the column's: 2/5
    epoch: str  # the furthest epoch of the trials still training (57/240): unstacked trials train one by one
    job: str
    note: str = ""


def pid_alive(pid: Any, host: Any) -> bool | None:
    """Whether a process of this machine runs (None: it was another machine's)."""
    if host != socket.gethostname() or not isinstance(pid, int) and not str(pid).isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent) has ended
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def submitter_alive(record: dict[str, Any]) -> bool:
    """Whether the process that runs the sweep's local or debug jobs may still run (unknown: yes)."""
    submitter = record.get("submitter") or {}
    return bool(submitter) and pid_alive(submitter.get("pid"), submitter.get("host")) is not False


def job_cluster(record: dict[str, Any], column: dict[str, Any]) -> str:
    """The cluster of the column's latest job (a resubmit may use another; a sweep.json older than that: the
    sweep's)."""
    return column.get("cluster", record["cluster"])


def slurm_states(sweep: Sweep, record: dict[str, Any]) -> dict[str, str]:
    """sacct's state of each column's latest Slurm job (one sacct call for all), {} where Slurm cannot be asked."""
    if shutil.which("sacct") is None:
        return {}
    # Every job is registered with submitit's watcher before the first query, which then asks about them all.
    jobs = [submitit.SlurmJob(folder=sweep.logs, job_id=c["jobs"][-1]) for c in record["columns"]
            if c["jobs"] and job_cluster(record, c) == "slurm"]
    try:
        return {job.job_id: job.state for job in jobs}
    except Exception:  # noqa: BLE001 - sacct unreachable or unreadable: say nothing rather than guess
        return {}


def _job_alive(record: dict[str, Any], column: dict[str, Any], state: dict[str, Any] | None,
               slurm: dict[str, str]) -> bool | None:
    """Whether the column's latest job can still run or is running (None: cannot tell from here), asked of the
    cluster it was submitted to (a resubmit may use another)."""
    job_id, cluster = column["jobs"][-1], job_cluster(record, column)
    if cluster == "slurm":
        known = slurm.get(job_id, "UNKNOWN")
        return None if known == "UNKNOWN" else known.split()[0] in SLURM_ALIVE
    if cluster == "local":  # the job id is the pid of submitit's controller, which requeues in place
        return pid_alive(job_id, (state or {}).get("host", socket.gethostname()))
    return submitter_alive(record)  # debug: the jobs run inside the sweep's process


def _log_tail(sweep: Sweep, job_id: str) -> str:
    path = JobPaths(sweep.logs, job_id=job_id, task_id=0).stderr
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return f"no log at {path}"
    return f"last line of {path.name}: {lines[-1][:200]}" if lines else f"{path.name} is empty"


def column_status(sweep: Sweep, record: dict[str, Any], column: dict[str, Any],
                  slurm: dict[str, str]) -> ColumnStatus:
    results, epochs = trial_results(sweep.runs / column["name"], record["trials"]), column["epochs"]
    training = [(r or {}).get("last_epoch") or 0 for r in results if not trained(r, epochs)]
    epoch = max(training, default=epochs)
    job_id = column["jobs"][-1] if column["jobs"] else "-"
    status = ColumnStatus(column["name"], "finished", f"{len(results) - len(training)}/{len(results)}",
                          f"{epoch}/{epochs}", job_id)
    if not training:
        return status
    if not column["jobs"]:
        if submitter_alive(record):
            status.state = "queued"
            status.note = f"waits for a free slot in the sweep's process {record['submitter']['pid']}"
        else:
            status.state, status.note = "not started", "never submitted (the sweep's process ended first)"
        return status
    state = sweep.state(column)
    alive = _job_alive(record, column, state, slurm)
    if state is None:  # submitted; the job has not started main.py yet
        status.state = "queued" if alive is not False else "failed"
        if alive is False:
            status.note = f"the job ended before main.py started; {_log_tail(sweep, job_id)}"
        return status
    status.state, status.note = state["state"], state.get("error", "")
    if status.state in ("running", "requeued") and alive is False:
        status.state = "failed"
        status.note = f"the job ended at epoch {epoch} without a word (killed? out of memory?); " \
                      f"{_log_tail(sweep, job_id)}"
    return status


def sweep_status(sweep: Sweep, record: dict[str, Any]) -> list[ColumnStatus]:
    slurm = slurm_states(sweep, record)
    return [column_status(sweep, record, column, slurm) for column in record["columns"]]


def status_lines(sweep: Sweep, record: dict[str, Any], statuses: list[ColumnStatus]) -> list[str]:
    root = shown(sweep.root)
    lines = [f"sweep {record['name']}: {len(statuses)} column(s) x trials {record['trials_text']} on "
             f"{record['cluster']}, in {root}"]
    width = max(len("column"), *(len(s.name) for s in statuses))  # a short name under the header
    jobs = max(len(s.job) for s in statuses)
    lines.append(f"  {'column':<{width}}  {'state':<11}  {'trials':>6}  {'epoch':>9}  job")
    for s in statuses:
        lines.append(f"  {s.name:<{width}}  {s.state:<11}  {s.trials:>6}  {s.epoch:>9}  {s.job:<{jobs}}  "
                     f"{s.note}".rstrip())
    counts = Counter(s.state for s in statuses)
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    again = sum(counts[state] for state in RESUBMITTABLE)
    if again:
        lines.append(f"{again} to resubmit (failed or never started; each continues from its trials' last saved "
                     f"epoch): python tools/sweep.py resubmit {root}")
    if counts["finished"]:
        lines.append(f"the table: python tools/summarize.py {root}")
    return lines


def shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
