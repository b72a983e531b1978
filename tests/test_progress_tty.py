"""The progress display as a user sees it: main.py in a pseudo-terminal 80 columns wide, its output replayed
on a small terminal model (carriage returns, newlines, cursor moves, line erases)."""
import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time

import pytest
from conftest import ROOT
from helpers import tiny_options, write_yaml

COLUMNS = 80
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
BAR = re.compile(r"^epoch (\d+)/\d+ .*? (\d+)/(\d+) \[")  # utils/progress.py's bar_format


def run_in_terminal(args, cwd, interrupt_when=None, timeout=240):
    """main.py ARGS with a pseudo-terminal of COLUMNS x 24 as its stdin, stdout and stderr: (output, exit
    status). `interrupt_when(output)` true: Ctrl-C is typed once."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        try:
            os.chdir(cwd)
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": str(COLUMNS), "TERM": "xterm",
                   "OMP_NUM_THREADS": "1"}
            os.execve(sys.executable, [sys.executable, str(ROOT / "main.py"), *args], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
    out, typed, deadline = b"", False, time.time() + timeout
    try:
        while time.time() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not data:
                    break
                out += data
            if interrupt_when is not None and not typed and interrupt_when(out.decode(errors="replace")):
                os.write(fd, b"\x03")
                typed = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return out.decode(errors="replace"), os.waitstatus_to_exitcode(status)


def replay(output):
    """(every line ever on the screen as it was left, every state a line was shown in: at each carriage
    return, newline or cursor move)."""
    screen, shown, row, col = [[]], [], 0, 0

    def line():
        return "".join(screen[row]).rstrip()
    i = 0
    while i < len(output):
        match = CSI.match(output, i)
        if match:
            params, final = match.groups()
            n = int(params) if params.isdigit() else None
            if final in "AF":  # cursor up
                shown.append(line())
                row, col = max(row - (n or 1), 0), 0 if final == "F" else col
            elif final == "K":  # erase in line: 0 to the end, 1 to the cursor, 2 all
                if n in (None, 0):
                    del screen[row][col:]
                elif n == 1:
                    screen[row][:col + 1] = [" "] * min(col + 1, len(screen[row]))
                else:
                    screen[row] = []
            elif final == "G":
                col = (n or 1) - 1
            i = match.end()
            continue
        ch = output[i]
        if ch == "\r":
            shown.append(line())
            col = 0
        elif ch == "\n":
            shown.append(line())
            row += 1
            if row == len(screen):
                screen.append([])
        elif ch == "\b":
            col = max(col - 1, 0)
        elif ch >= " " and ch != "\x7f":
            cells = screen[row]
            cells.extend(" " * (col + 1 - len(cells)))
            cells[col] = ch
            col += 1
        i += 1
    shown.append(line())
    return ["".join(cells).rstrip() for cells in screen], shown


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_teacher):
    """400 training images at batch 4: 100 steps an epoch, long enough for several bar refreshes."""
    from dataset import make_tiny_cifar
    work = tmp_path_factory.mktemp("tty")
    make_tiny_cifar(str(work / "data"), n_train=400, n_test=20, num_classes=10, seed=0)
    return work, tiny_teacher


@pytest.mark.slow
def test_the_bar_in_an_80_column_terminal(setup):
    work, teacher = setup
    opt = write_yaml(work / "bar.yml", tiny_options(str(work / "data"), teacher, batch_size=4, print_freq=2,
                                                     experiments_dir=str(work / "bar")))
    output, status = run_in_terminal(["-opt", opt], work)
    assert status == 0, output[-3000:]
    screen, shown = replay(output)
    # Lines that name a run's folder or a command are left to wrap; every other line must fit.
    too_wide = [s for s in shown if len(s) > COLUMNS and str(work) not in s and "python main.py" not in s]
    assert not too_wide, "\n".join(too_wide)
    steps = {}  # epoch -> step counts the bar showed
    for state in shown:
        match = BAR.match(state)
        if match:
            assert match.group(3) == "100", state
            steps.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    assert sorted(steps) == [1, 2], steps
    assert all(counts - {0} for counts in steps.values()), steps  # it advanced in each epoch
    assert len((steps[1] | steps[2]) - {0}) >= 3, steps  # several times
    # What stays on the screen: one line per epoch, each on its own line; no bar left behind.
    for epoch in (1, 2):
        ends = [row for row in screen if f"epoch {epoch}/2" in row]
        assert len(ends) == 1 and ends[0].startswith(f"epoch {epoch}/2 ") and "left " in ends[0], ends
        assert "%|" not in ends[0] and "step" not in ends[0], ends
    assert [row for row in screen if BAR.search(row)] == []
    assert screen.index(next(r for r in screen if r.startswith("epoch 1/2 "))) < \
        screen.index(next(r for r in screen if r.startswith("epoch 2/2 ")))


@pytest.mark.slow
def test_ctrl_c_in_a_terminal(setup):
    work, teacher = setup
    opt = write_yaml(work / "stop.yml", tiny_options(str(work / "data"), teacher, batch_size=4, print_freq=2,
                                                      epochs=3, experiments_dir=str(work / "stop")))

    def in_epoch_two(text):  # the bar of epoch 2 has moved: epoch 1 is saved
        return re.search(r"epoch 2/3 .*? [1-9]\d*/100 \[", text) is not None
    output, status = run_in_terminal(["-opt", opt], work, interrupt_when=in_epoch_two)
    assert status == 130, output[-3000:]
    screen, _ = replay(output)
    said = [row for row in screen if "interrupted" in row]
    assert len(said) == 1 and re.match(r"interrupted; epoch 1 is saved; continue with: python \S*main\.py ", said[0]), \
        said
    assert said[0].endswith("--resume") and "Traceback" not in output
    assert [row for row in screen if "%|" in row] == []  # the bar is gone, not glued to the message
