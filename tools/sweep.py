"""A whole table in one command: one job per column (an options file x a variant x a `--set` grid combination),
each running main.py for the column's trial group, submitted through submitit.

    python tools/sweep.py OPTIONS.yml... [-t 1-5] [--set KEY=V1,V2 ...] [--variant 'NAME: KEY=V ...']
                          [--name NAME] [--cluster local|slurm|debug] [Slurm settings] [--dry-run]
    python tools/sweep.py status NAME          # each column: queued, running (trials, epoch), finished, failed (why)
    python tools/sweep.py resubmit NAME        # the failed ones again; each resumes from its last saved epoch

Everything lands in experiments/sweeps/NAME/ (runs/ holds the trial folders: `tools/summarize.py` on the sweep
folder gives its table). How it works, and the paper's table on Slurm: docs/sweeps.md.
"""
from __future__ import annotations

import argparse
import itertools
import re
import runpy
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from sweeping.clusters import (
    CLUSTERS,
    DEFAULTS,
    check_slurm_here,
    local_slots,
    minutes,
    run_here,
    sbatch_text,
    submit_slurm,
)
from sweeping.columns import SweepError, build_columns, check_columns
from sweeping.folder import MAIN, Sweep, create, find_sweep, plan_record
from sweeping.status import RESUBMITTABLE, job_cluster, shown, status_lines, submitter_alive, sweep_status

SWEEPS_DIR = "experiments/sweeps"


def parse_trials(text: str) -> list[int]:
    """main.py's own reading of -t (1-5, 1,3), run from its file (it imports no torch)."""
    return runpy.run_path(str(MAIN))["parse_trials"](text)


def trials_text(trials: list[int]) -> str:
    """[1, 2, 3, 5] -> '1-3,5', as -t takes it."""
    runs = [[t for _, t in run] for _, run in itertools.groupby(enumerate(trials), lambda it: it[1] - it[0])]
    return ",".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _count(text: str, least: int = 0) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    if int(text) < least:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _positive(text: str) -> int:
    return _count(text, least=1)


def _gpu_list(text: str) -> list[int]:
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of GPU indices such as 0,1,3")
    return [int(g) for g in text.split(",")]


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Settings a sweep records and `resubmit` may change (unset: the recorded value, or the default)."""
    parser.add_argument("--cluster", choices=CLUSTERS, help="slurm: one job array; local (default): this machine, "
                        "one job per GPU at a time; debug: in this process, one job after the other")
    group = parser.add_argument_group("cluster settings (Slurm, except --gpus; --time and --signal-delay-s apply "
                                      "to local jobs too)")
    group.add_argument("--partition")
    group.add_argument("--account")
    group.add_argument("--gpus-per-job", type=_count, help=f"GPUs per job (default {DEFAULTS['gpus_per_job']})")
    group.add_argument("--cpus-per-job", type=_positive, help=f"CPUs per job (default {DEFAULTS['cpus_per_job']})")
    group.add_argument("--mem-gb", type=_count, help="memory per job in whole GB, as sbatch takes it (default: the "
                       "partition's)")
    group.add_argument("--time", help="time limit per job: minutes, H:MM:SS or D-HH:MM:SS (Slurm default 24:00:00; "
                       "local: none); the job is requeued before it and resumes")
    group.add_argument("--sbatch", action="append", metavar="FLAG", help="any other sbatch flag, passed through: "
                       "--sbatch qos=high --sbatch constraint=a100 --sbatch requeue")
    group.add_argument("--array-parallelism", type=_positive, help="at most this many jobs of the array at once")
    group.add_argument("--signal-delay-s", type=_positive, help="seconds before the time limit at which the job is "
                       f"signalled to requeue (default {DEFAULTS['signal_delay_s']}; above 60, main.py's time to stop)")
    group.add_argument("--max-timeouts", type=_positive, help="requeues after a time limit, per job (default "
                       f"{DEFAULTS['max_timeouts']}); preemptions are not counted")
    group.add_argument("--gpus", type=_gpu_list, help="local: the GPUs to use (default: every visible one)")


def _settings(args: argparse.Namespace, recorded: dict[str, Any], cluster: str) -> dict[str, Any]:
    given = {key: getattr(args, key) for key in DEFAULTS if getattr(args, key) is not None}
    settings = {**DEFAULTS, **recorded, **given}
    if settings["time"] is not None and minutes(settings["time"]) * 60 <= settings["signal_delay_s"]:
        raise SweepError(f"--time {settings['time']} is not longer than --signal-delay-s ({settings['signal_delay_s']} "
                         "s): the job would be signalled to requeue (or killed) before it trains; give it more time")
    if cluster == "local":
        local_slots(settings)  # a SweepError if CUDA_VISIBLE_DEVICES names no GPU indices
    return settings


def parse_args(argv: list[str]) -> argparse.Namespace:
    command = argv[0] if argv and argv[0] in ("status", "resubmit") else "submit"
    parser = argparse.ArgumentParser(prog=f"tools/sweep.py{'' if command == 'submit' else ' ' + command}",
                                     description=__doc__.split("\n\n")[0])
    if command == "submit":
        parser.add_argument("files", nargs="+", metavar="OPTIONS.yml", help="options files, e.g. options/paper/*.yml")
        parser.add_argument("-t", "--trials", default="1", type=parse_trials, metavar="TRIALS",
                            help="the trials of every column, trained together in its job: 1-5, 1,3 (default 1)")
        parser.add_argument("--set", dest="grid", nargs="+", action="extend", default=[], metavar="KEY=V1,V2",
                            help="overrides; several comma-separated values make one column each (a value "
                                 "holding a comma: in brackets or quotes, [150,180,210] or 'a,b')")
        parser.add_argument("--variant", action="append", default=[], metavar="'NAME: KEY=V ...'",
                            help="a named set of overrides; each makes its own columns (e.g. one per method)")
        parser.add_argument("--name", help="the sweep's folder under --sweeps-dir (default: the date and time)")
    else:
        parser.add_argument("name", metavar="NAME", help="the sweep's name (under --sweeps-dir) or its folder")
    parser.add_argument("--sweeps-dir", default=SWEEPS_DIR, help=f"where sweeps live (default {SWEEPS_DIR})")
    if command != "status":
        _add_cluster_options(parser)
        parser.add_argument("--dry-run", action="store_true", help="print the jobs, their commands and (Slurm) the "
                            "sbatch file of the job array; write and submit nothing")
    args = parser.parse_args(argv if command == "submit" else argv[1:])
    args.command = command
    return args


def submit(args: argparse.Namespace, argv: list[str]) -> int:
    cluster = args.cluster or "local"
    if cluster == "slurm" and not args.dry_run:
        check_slurm_here()
    name = args.name or time.strftime("%y%m%d-%H%M%S")
    if not re.fullmatch(r"[A-Za-z0-9._+=-]+", name) or name in (".", ".."):
        raise SweepError(f"--name {name!r} must be a plain folder name (letters, digits, ._+=-)")
    sweep = Sweep(Path(args.sweeps_dir) / name)
    if sweep.root.exists():  # refused by --dry-run too
        raise SweepError(f"{sweep.root} exists already; choose another --name, or see it with: python tools/sweep.py "
                         f"status {sweep.root}")
    columns = build_columns(args.files, args.grid, args.variant)
    check_columns(columns)
    settings = _settings(args, {}, cluster)
    record = plan_record(sweep, columns, args.trials, trials_text(args.trials), argv, cluster, settings)
    if args.dry_run:
        return dry_run(sweep, record, record["columns"])
    create(sweep, record)
    return launch(sweep, record, record["columns"])


def dry_run(sweep: Sweep, record: dict[str, Any], columns: list[dict[str, Any]]) -> int:
    print(f"sweep {record['name']}: {len(columns)} columns x trials {record['trials_text']} on {record['cluster']}, "
          f"in {shown(sweep.root)} (dry run: nothing written, nothing submitted)")
    for column in columns:
        print(f"  {column['name']}: {shlex.join(['python', *column['command']]).replace(f'{Path.cwd()}/', '')}")
    if record["cluster"] == "slurm":
        print(f"Slurm: {'one job array of ' if len(columns) > 1 else ''}{len(columns)} job(s), each: {record['python']}"
              " -m submitit.core._submit (the column's job: main.py as above, with --resume once it has saved an "
              "epoch); the sbatch file:")
        print(sbatch_text(sweep, record["settings"], len(columns)))
    elif record["cluster"] == "local":
        slots = local_slots(record["settings"])
        print("local: no GPU visible, one job at a time on the CPU" if slots == [None] else
              f"local: one job per GPU at a time, CUDA_VISIBLE_DEVICES={' / '.join(map(str, slots))}")
    return 0


def launch(sweep: Sweep, record: dict[str, Any], columns: list[dict[str, Any]]) -> int:
    root = shown(sweep.root)
    if record["cluster"] == "slurm":
        try:
            submit_slurm(sweep, record, columns)
        except Exception as err:  # noqa: BLE001 - sbatch's refusal, whatever submitit wraps it in
            print(f"error: Slurm refused the jobs: {str(err).strip().splitlines()[-1] if str(err).strip() else err!r}"
                  f"; fix that, then: python tools/sweep.py resubmit {root}", file=sys.stderr)
            return 1
        print(f"submitted {len(columns)} job(s) to Slurm: {', '.join(c['jobs'][-1] for c in columns)}; sweep in "
              f"{root}\nsee them with: python tools/sweep.py status {root}")
        return 0
    print(f"sweep {record['name']}: {len(columns)} column(s) in {root}; running them here (Ctrl-C stops them, "
          f"each keeping its last epoch)", flush=True)
    try:
        run_here(sweep, record, columns, lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print(f"\nstopped; continue with: python tools/sweep.py resubmit {root}", file=sys.stderr)
        return 130
    statuses = sweep_status(sweep, record)
    print("\n".join(status_lines(sweep, record, statuses)))
    return 0 if all(s.state == "finished" for s in statuses) else 1


def resubmit(args: argparse.Namespace) -> int:
    sweep = find_sweep(args.name, args.sweeps_dir)
    record = sweep.load()
    if submitter_alive(record):
        submitter = record["submitter"]
        raise SweepError(f"the sweep still runs in process {submitter['pid']} on {submitter['host']}; resubmit "
                         "after it ends (or stop it with Ctrl-C)")
    statuses = sweep_status(sweep, record)
    for column in record["columns"]:  # recorded before the sweep's cluster changes: status asks each column's own
        column["cluster"] = job_cluster(record, column)
    record["cluster"] = args.cluster or record["cluster"]
    record["settings"] = _settings(args, record["settings"], record["cluster"])
    again = [c for c, s in zip(record["columns"], statuses) if s.state in RESUBMITTABLE]
    if not again:
        print("\n".join(status_lines(sweep, record, statuses)))
        print("nothing to resubmit: no column failed or was left unstarted")
        return 0
    if record["cluster"] == "slurm" and not args.dry_run:
        check_slurm_here()
    if args.dry_run:
        return dry_run(sweep, record, again)
    sweep.save(record)
    print(f"resubmitting {len(again)} column(s); each resumes from its trials' last saved epoch (main.py --resume), "
          "or starts afresh if none was saved")
    return launch(sweep, record, again)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.command == "status":
            sweep = find_sweep(args.name, args.sweeps_dir)
            record = sweep.load()
            print("\n".join(status_lines(sweep, record, sweep_status(sweep, record))))
            return 0
        return resubmit(args) if args.command == "resubmit" else submit(args, argv)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
