"""A sweep's folder, experiments/sweeps/<name>/: sweep.json (what was submitted, with each column's command and
job ids), options/ (the options files as submitted, which the columns read), logs/ (submitit's), jobs/<column>.json
(the column's state as its job last wrote it) and runs/<column>/ (the column's experiments_dir); docs/sweeps.md.
"""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cloudpickle

from sweeping import job as job_module
from sweeping.columns import Column, SweepError
from sweeping.job import ColumnJob, read_json, write_json

MAIN = Path(__file__).resolve().parents[2] / "main.py"
# The job's code travels inside its pickle: the job process imports submitit, not this folder.
cloudpickle.register_pickle_by_value(job_module)


class Sweep:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).absolute()
        self.file, self.logs, self.jobs, self.runs = (self.root / n for n in ("sweep.json", "logs", "jobs", "runs"))

    def load(self) -> dict[str, Any]:
        record = read_json(self.file)
        if not isinstance(record, dict) or not isinstance(record.get("columns"), list):
            raise SweepError(f"{self.file} is missing or damaged: not a sweep folder written by tools/sweep.py")
        return record

    def save(self, record: dict[str, Any]) -> None:
        write_json(self.file, record)

    def state(self, column: dict[str, Any]) -> dict[str, Any] | None:
        """The column's job state, if its latest submission has written one."""
        state = read_json(self.jobs / f"{column['name']}.json")
        return state if isinstance(state, dict) and state.get("attempt") == len(column["jobs"]) else None

    def job(self, record: dict[str, Any], column: dict[str, Any]) -> ColumnJob:
        """The job for the column's next submission."""
        return ColumnJob(column["name"], [record["python"], *column["command"]], record["cwd"],
                         self.runs / column["name"], record["trials"], column["epochs"],
                         self.jobs / f"{column['name']}.json", len(column["jobs"]) + 1)


def find_sweep(name: str, sweeps_dir: str) -> Sweep:
    """A sweep by name (under sweeps_dir) or by its folder."""
    for root in (Path(sweeps_dir) / name, Path(name)):
        if (root / "sweep.json").is_file():
            return Sweep(root)
    raise SweepError(f"no sweep {name!r}: neither {Path(sweeps_dir) / name} nor {name} holds a sweep.json; "
                     f"list them with: ls {sweeps_dir}")


def plan_record(sweep: Sweep, columns: list[Column], trials: list[int], trials_text: str, argv: list[str],
                cluster: str, settings: dict[str, Any]) -> dict[str, Any]:
    """sweep.json before anything is submitted: each column's main.py command reads the sweep's copy of its
    options file and writes under runs/<column>/."""
    copies: dict[Path, str] = {}  # options file -> its copy's name (stem.yml, stem_2.yml for a second stem)
    for source in dict.fromkeys(c.source for c in columns):
        name, n = f"{source.stem}.yml", 1
        while name in copies.values():
            n += 1
            name = f"{source.stem}_{n}.yml"
        copies[source] = name
    return {
        "name": sweep.root.name, "created": time.strftime("%Y-%m-%d %H:%M:%S"), "cwd": str(Path.cwd()),
        "python": sys.executable, "command": ["tools/sweep.py", *argv], "cluster": cluster, "settings": settings,
        "trials": trials, "trials_text": trials_text, "submitter": None,
        "columns": [{"name": c.name, "source": str(c.source), "options": f"options/{copies[c.source]}",
                     "set": c.overrides, "label": c.label, "epochs": c.epochs, "jobs": [],
                     "command": [str(MAIN), "-opt", str(sweep.root / "options" / copies[c.source]), "-t", trials_text,
                                 "--set", *c.overrides, f"experiments_dir={sweep.runs / c.name}"]}
                    for c in columns],
    }


def create(sweep: Sweep, record: dict[str, Any]) -> None:
    """The folder (which submit() found absent), its options copies and sweep.json."""
    try:
        (sweep.root / "options").mkdir(parents=True)
        for copy, source in {c["options"]: c["source"] for c in record["columns"]}.items():
            shutil.copyfile(source, sweep.root / copy)
        sweep.save(record)
    except OSError as err:
        shutil.rmtree(sweep.root, ignore_errors=True)
        raise SweepError(f"cannot write the sweep folder {sweep.root}: {err.strerror or err}") from None
