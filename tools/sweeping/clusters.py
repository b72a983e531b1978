"""Where a sweep's jobs run, all through submitit: Slurm (one job array), this machine (one job per visible GPU at
a time, the rest queued in this process), or this very process, one job after the other (debug)."""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import submitit

from sweeping.columns import SweepError
from sweeping.folder import Sweep

CLUSTERS = ("local", "slurm", "debug")
# The cluster settings a sweep records (sweep.json) and `resubmit` may change; None: the cluster's own default.
DEFAULTS: dict[str, Any] = {"partition": None, "account": None, "gpus_per_job": 1, "cpus_per_job": 8, "mem_gb": None,
                            "time": None, "sbatch": [], "array_parallelism": None, "signal_delay_s": 90,
                            "max_timeouts": 10, "gpus": None}
SLURM_TIME = "24:00:00"  # Slurm's limit when --time is not given
LOCAL_NO_LIMIT_MIN = 60 * 24 * 365  # the local executor always has a time limit; a year is none
_TIME = re.compile(r"(?:(\d+)-)?(\d+(?::\d+){0,2})")


def minutes(text: str) -> int:
    """A time limit as Slurm writes it (`240`, `4:00:00`, `1-12:00:00`, `2-0`) in whole minutes, rounded up."""
    match = _TIME.fullmatch(str(text).strip())
    if not match:
        raise SweepError(f"--time {text!r} is not a time limit: give minutes (240), H:MM:SS (4:00:00) or D-HH:MM:SS")
    days, rest = match.groups()
    parts = [int(p) for p in rest.split(":")]
    if days is None:  # M, M:S or H:M:S
        hours, mins, secs = {1: (0, parts[0], 0), 2: (0, *parts), 3: tuple(parts)}[len(parts)]
    else:  # D-H, D-H:M or D-H:M:S
        hours, mins, secs = (parts + [0, 0])[:3]
    return math.ceil((((int(days or 0) * 24 + hours) * 60 + mins) * 60 + secs) / 60)


def slurm_parameters(settings: dict[str, Any], name: str) -> dict[str, Any]:
    """SlurmExecutor's parameters (sbatch's names) from the sweep's settings; those unset are Slurm's to decide."""
    flags = [flag.removeprefix("--").partition("=") for flag in settings["sbatch"]]  # qos=high, requeue (no value)
    params = {"job_name": f"sweep_{name}", "time": minutes(settings["time"] or SLURM_TIME),
              "cpus_per_task": settings["cpus_per_job"], "signal_delay_s": settings["signal_delay_s"],
              "ntasks_per_node": 1, "nodes": 1, "partition": settings["partition"], "account": settings["account"],
              "array_parallelism": settings["array_parallelism"],
              "gpus_per_node": settings["gpus_per_job"] or None,  # 0: a CPU partition, no --gpus-per-node at all
              "mem": None if settings["mem_gb"] is None else f"{settings['mem_gb']:g}GB",
              # cpus-per-task=16 as cpus_per_task: it replaces the setting above instead of adding a line that loses
              "additional_parameters": {k.replace("-", "_"): v if eq else True for k, eq, v in flags} or None}
    return {key: value for key, value in params.items() if value is not None}


def check_slurm_here() -> None:
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        raise SweepError(f"--cluster slurm needs Slurm's {' and '.join(missing)}, not found on this machine's PATH; "
                         "run on the cluster's login node, or add --dry-run to see the job array")


def sbatch_text(sweep: Sweep, settings: dict[str, Any], n_jobs: int) -> str:
    """The sbatch file of one array of n_jobs tasks, written by SlurmExecutor's own writer (it needs no Slurm)."""
    from submitit.slurm.slurm import _make_sbatch_string
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(sweep.logs))}"
    return _make_sbatch_string(command=command, folder=sweep.logs, map_count=n_jobs if n_jobs > 1 else None,
                               **slurm_parameters(settings, sweep.root.name))


def submit_slurm(sweep: Sweep, record: dict[str, Any], columns: list[dict[str, Any]]) -> None:
    """One job array of the columns; their job ids go into sweep.json."""
    executor = submitit.SlurmExecutor(folder=sweep.logs, max_num_timeout=record["settings"]["max_timeouts"])
    executor.update_parameters(**slurm_parameters(record["settings"], sweep.root.name))
    jobs = executor.submit_array([sweep.job(record, column) for column in columns])
    for column, job in zip(columns, jobs):
        column["jobs"].append(job.job_id)
        column["cluster"] = "slurm"  # the cluster of its latest job, which status asks
    sweep.save(record)


def local_slots(settings: dict[str, Any]) -> list[int | None]:
    """The GPUs the local jobs share, one job each; [None] (one job at a time, on the CPU) where there is none."""
    if settings["gpus"] is not None:
        return list(settings["gpus"]) or [None]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        if not all(v.isdigit() for v in ids):
            raise SweepError(f"CUDA_VISIBLE_DEVICES={visible!r} names GPUs by UUID; give their indices with --gpus 0,1")
        return [int(v) for v in ids] or [None]
    import torch  # imported already by the options check
    return list(range(torch.cuda.device_count())) or [None]


def run_here(sweep: Sweep, record: dict[str, Any], columns: list[dict[str, Any]], say: Callable[[str], None]) -> None:
    """Run the columns on this machine and wait for them: `local`, each job in its own process (submitit's
    LocalExecutor), as many at once as there are GPUs (CUDA_VISIBLE_DEVICES its GPU), the others queued here;
    `debug`, one after the other in this process (submitit's DebugExecutor)."""
    settings, debug = record["settings"], record["cluster"] == "debug"
    slots = [None] if debug else local_slots(settings)
    if not debug:
        say("no GPU visible: the columns run one at a time on the CPU" if slots == [None] else
            f"{len(slots)} GPU(s) ({', '.join(map(str, slots))}): one column on each at a time")
    executor: Any = submitit.DebugExecutor(folder=sweep.logs) if debug else \
        submitit.LocalExecutor(folder=sweep.logs, max_num_timeout=settings["max_timeouts"])
    timeout = minutes(settings["time"]) if settings["time"] else LOCAL_NO_LIMIT_MIN
    record["submitter"] = {"pid": os.getpid(), "host": socket.gethostname()}
    sweep.save(record)
    pending, running = list(columns), {}  # slot -> (column, job)
    try:
        while pending or running:
            for slot, (column, job) in list(running.items()):
                if debug:
                    job.exception()  # runs the job here and now; its failure is in its state file
                if debug or job.done():
                    del running[slot]
                    state = sweep.state(column) or {"state": "failed", "error": "ended without a word; see its log"}
                    say(f"{column['name']}: {state['state']}{': ' + state['error'] if state.get('error') else ''}")
            for slot in [s for s in range(len(slots)) if s not in running][:len(pending)]:
                column = pending.pop(0)
                gpu = () if slots[slot] is None else (slots[slot],)
                if not debug:
                    executor.update_parameters(timeout_min=timeout, signal_delay_s=settings["signal_delay_s"],
                                               gpus_per_node=len(gpu), visible_gpus=gpu)
                running[slot] = (column, executor.submit(sweep.job(record, column)))
                column["jobs"].append(running[slot][1].job_id)
                column["cluster"] = record["cluster"]
                sweep.save(record)
                where = "" if debug else f" on {f'GPU {gpu[0]}' if gpu else 'the CPU'}"
                say(f"{column['name']}: started (job {column['jobs'][-1]}){where}")
            if running and not debug:
                time.sleep(0.5)
    except KeyboardInterrupt:
        for _, job in running.values():
            if not debug:
                job.cancel()  # SIGINT: main.py stops as on Ctrl-C, keeping its last epoch
        raise
    finally:
        record["submitter"] = None
        sweep.save(record)
