"""Several `python main.py ARGS` in one process, to check many quick refusals for one start-up's cost.

    python tests/main_batch.py CASES.json RESULTS.json   (a list of argument lists; run in the caller's folder)
    torchrun --nproc_per_node=2 tests/main_batch.py CASES.json RESULTS.json   (RESULTS.json.<rank> per process)

Writes RESULTS.json (stdout is the runs' own): per case its exit status (main's return, SystemExit's code,
or 1 with a traceback for an exception that escaped, as a real process would end), its stderr, and how far
it raised the process's peak memory (MB).
Each case starts with the warning filters of a fresh process, so a warning it gives is not hidden because
an earlier case gave it.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cases(cases: list[list[str]]) -> list[dict]:
    sys.path.insert(0, str(ROOT))
    import main
    fresh = list(warnings.filters)
    out = []
    for argv in cases:
        warnings.filters[:] = fresh
        warnings._filters_mutated()  # forget which warnings were shown already
        err = io.StringIO()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with contextlib.redirect_stderr(err):
            try:
                code = main.main(argv)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # noqa: BLE001 - reported as a crash
                traceback.print_exc()
                code = 1
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024  # ru_maxrss: KB on Linux
        out.append({"argv": argv, "rc": code, "stderr": err.getvalue(), "peak_growth_mb": grew})
        _wait_for_the_others()  # under torchrun: the next case starts once every process is done with this one
    return out


def _wait_for_the_others() -> None:
    """Separate launches of main.py never overlap; cases in one torchrun launch must not either (rank 1 would look
    for the checkpoint rank 0 is still writing)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


if __name__ == "__main__":
    results = run_cases(json.loads(Path(sys.argv[1]).read_text()))
    rank = os.environ.get("RANK")  # under torchrun every process runs the cases; each writes its own results
    Path(sys.argv[2] + (f".{rank}" if rank is not None else "")).write_text(json.dumps(results))


def run_batch(cases: list[list[str]], cwd: Path, timeout: float = 600) -> list[dict]:
    """Run `cases` in one subprocess in `cwd`; the results as run_cases gives them."""
    import subprocess
    cases_file, results_file = Path(cwd) / "batch_cases.json", Path(cwd) / "batch_results.json"
    cases_file.write_text(json.dumps(cases))
    from helpers import main_env
    env = main_env()
    done = subprocess.run([sys.executable, __file__, str(cases_file), str(results_file)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    results = json.loads(results_file.read_text())
    cases_file.unlink()
    results_file.unlink()
    return results
