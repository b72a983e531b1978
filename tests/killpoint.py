"""Run main.py and act at an exact point: the Nth time the process opens a given file for writing, or renames it.

    python tests/killpoint.py SUFFIX N ACTION [SUFFIX N ACTION ...] -- MAIN_ARGS...

SUFFIX: the end of the path being opened for writing (e.g. `trial_1/results.json.tmp`: every file is written
as `<name>.tmp`, then renamed), or `rename:` and the end of the path being renamed (`rename:model/
checkpoint.pth.tmp`: the moment the file is written whole and not yet in place), or `read:` and the end of a
path being opened for reading, or `call:` and the name of any audit event (`call:fcntl.flock`: a file lock
being taken); N: which such event (1 = the first; * = every one); ACTION:
  kill         SIGKILL this process at that moment (an open: before the file exists; a rename: before the
               file is in place): a power cut, a kill -9
  fill:PATH    write the file PATH until its file system is full, then go on: the write that follows
               fails for want of space
  pause:DIR    create DIR/here, then sleep until DIR/go exists (at most 120 s), then go on: the test acts
               meanwhile (sends SIGINT, which interrupts the sleep, or runs another process)
  sleep:SECONDS  wait that long, then go on: this process falls behind the others of a torchrun group
  raise:ERRNO  make the call fail as the system would with that error number (`raise:37`: ENOLCK, no locks on
               this file system), where the test machine cannot produce the failure itself

Under torchrun every process installs the hooks; `ACTION@R` acts in rank R alone (e.g. `sleep:2@1`).

Nothing in the project knows about this: it watches Python's audit events (sys.addaudithook; a hook that
raises makes the call fail), then runs main.py as `python main.py MAIN_ARGS` would (runpy, run_name "__main__").
"""
from __future__ import annotations

import os
import runpy
import signal
import sys
import time
from pathlib import Path

MAIN = Path(__file__).resolve().parents[1] / "main.py"
WRITE_MODES = set("wax+")
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _open_modes(args: tuple) -> set[str]:
    """The mode letters of an "open" event: open() gives its mode, os.open() only its flags."""
    if isinstance(args[1], str):
        return set(args[1])
    if len(args) > 2 and isinstance(args[2], int):
        return {"w"} if args[2] & WRITE_FLAGS else {"r"}
    return set()


def _fill(filler: Path) -> None:
    """Write `filler` until its file system has no space left."""
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError:
            pass
        try:  # the last bytes a smaller write still takes
            while True:
                f.write(b"\0" * 512)
        except OSError:
            pass


def install(suffix: str, nth: int, action: str) -> None:
    """Act at the `nth` matching event (every one if `nth` is 0)."""
    seen = 0
    busy = False
    wanted, modes = "open", WRITE_MODES
    if suffix.startswith("rename:"):
        wanted, suffix = "os.rename", suffix.removeprefix("rename:")  # os.replace raises "os.rename"
    elif suffix.startswith("read:"):
        modes, suffix = {"r"}, suffix.removeprefix("read:")
    elif suffix.startswith("call:"):
        wanted, suffix = suffix.removeprefix("call:"), ""
    action, _, rank = action.partition("@")
    if rank and os.environ.get("RANK", "0") != rank:
        return

    def hook(event: str, args: tuple) -> None:
        nonlocal seen, busy
        if event != wanted or busy:
            return
        if suffix:  # an event on a path
            if not args or not isinstance(args[0], (str, bytes, os.PathLike)):
                return
            if event == "open" and not modes & _open_modes(args):
                return
            if not os.fsdecode(args[0]).endswith(suffix):
                return
        seen += 1
        if nth and seen != nth:
            return
        busy = True
        try:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif action.startswith("fill:"):
                _fill(Path(action.removeprefix("fill:")))
            elif action.startswith("pause:"):
                folder = Path(action.removeprefix("pause:"))
                (folder / "here").touch()
                deadline = time.time() + 120
                while not (folder / "go").exists() and time.time() < deadline:
                    time.sleep(0.05)
            elif action.startswith("sleep:"):
                time.sleep(float(action.removeprefix("sleep:")))
            elif action.startswith("raise:"):
                number = int(action.removeprefix("raise:"))
                raise OSError(number, os.strerror(number))
            else:
                raise SystemExit(f"killpoint: unknown action {action!r}")
        finally:
            busy = False

    sys.addaudithook(hook)


if __name__ == "__main__":
    args = sys.argv[1:]
    sep = args.index("--") if "--" in args else -1
    specs, main_args = args[:sep], args[sep + 1:]
    assert sep > 0 and len(specs) % 3 == 0, "usage: killpoint.py SUFFIX N ACTION [SUFFIX N ACTION ...] -- MAIN_ARGS..."
    sys.path[0] = str(MAIN.parent)
    sys.argv = [str(MAIN), *main_args]
    for i in range(0, len(specs), 3):
        install(specs[i], 0 if specs[i + 1] == "*" else int(specs[i + 1]), specs[i + 2])
    runpy.run_path(str(MAIN), run_name="__main__")
