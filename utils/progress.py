"""What a run shows: on a terminal a tqdm bar that advances every step and fits the width, elsewhere
(a log file, CI) one line per epoch; every line also goes to each trial's train.log."""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class Progress:
    def __init__(self, epochs: int, steps_per_epoch: int, stream: TextIO = sys.stdout, enabled: bool = True):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.stream, self.enabled = stream, enabled
        self.tty = enabled and stream.isatty()
        self.logs: list[Path] = []
        self.said: list[str] = []  # lines said before the logs exist (checks, the teacher's accuracy)
        self.bar: tqdm | None = None
        self.epoch_seconds: list[float] = []
        self.epoch, self.lr, self.t0 = 0, 0.0, time.perf_counter()

    def log_to(self, paths: list[Path]) -> None:
        """Append every line said, from the start of the run, to these files (each trial's train.log)."""
        self.logs = list(paths)
        for path in self.logs:
            with open(path, "a") as f:
                f.writelines(line + "\n" for line in self.said)

    @contextmanager
    def only_to(self, path: Path) -> Iterator[None]:
        """Lines said inside go to `path` alone of the logs (one trial's train.log, while a run trains its trials
        one after another); the other logs get the lines said after. A log that fails inside stays dropped."""
        every = self.logs
        self.logs = [p for p in every if p == path]  # none where this process writes no logs
        try:
            yield
        finally:
            self.logs = [p for p in every if p != path or path in self.logs]

    def say(self, text: str, shorter: tuple[str, ...] = ()) -> None:
        """`text` to the screen and the logs; on a terminal narrower than `text`, the first of `shorter`
        (richest first) that fits instead (the last, cut to the width, if none does)."""
        if self.enabled:
            columns = self.columns() if self.tty and shorter else None
            shown = fit_width([text, *shorter], columns) if columns else text
            if self.bar is not None:
                self.bar.write(shown, file=self.stream)  # above the bar, which stays at the bottom
            else:
                print(shown, file=self.stream, flush=True)
        self.log(text)

    def log(self, text: str) -> None:
        """`text` to the logs only (a line the console already showed elsewhere, e.g. on stderr)."""
        if not self.logs:
            self.said.append(text)
        for path in list(self.logs):
            try:
                with open(path, "a") as f:
                    f.write(text + "\n")
            except OSError:  # its folder was removed or made read-only: the trainer stops that trial and says so
                self.logs.remove(path)

    def start_epoch(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr, self.t0 = epoch, lr, time.perf_counter()
        if self.tty:
            # No rate or percentage fields: in 80 columns they would leave the bar itself no room.
            self.bar = tqdm(total=self.steps, desc=f"epoch {epoch}/{self.epochs}", file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0.5,
                            bar_format="{desc} {bar} {n_fmt}/{total_fmt} [{elapsed}<{remaining}]{postfix}")

    def step(self) -> None:
        """One step done: host-side bookkeeping only, nothing is read from the device."""
        if self.bar is not None:
            self.bar.update(1)

    def update(self, stats: dict[str, Any]) -> None:
        """New statistics, read from the device just now (every print_freq steps)."""
        if self.bar is not None:
            rate = stats["images"] / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"loss {stats['loss']:.3f} acc {stats.get('acc_train_top1', 0.0):.1f}% "
                                     f"{rate:.0f} img/s", refresh=False)

    def close(self) -> None:
        """Take the bar off the screen (before an epoch's lines, an error or an interruption message)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def end_epoch(self, lines: list[tuple[str, dict[str, Any], dict[str, float]]]) -> None:
        """One line per trial: (label, training statistics, test results)."""
        seconds = time.perf_counter() - self.t0
        self.close()
        self.epoch_seconds.append(seconds)
        recent = self.epoch_seconds[-5:]
        eta = (self.epochs - self.epoch) * sum(recent) / len(recent)
        # Trials of a group train together: each line gives its trial's images per second, and how many all made.
        total = sum(train["images"] for _, train, _ in lines) / max(seconds, 1e-9)
        for label, train, val in lines:
            epoch, left = f"epoch {self.epoch}/{self.epochs}{label}", f"left {format_duration(eta)}"
            loss, top1 = f"{train['loss']:.4f}", f"{train.get('acc_train_top1', 0.0):.2f}%"
            test = f"top1 {val['top1']:.2f}% top5 {val['top5']:.2f}%"
            rate = f"{train['images'] / max(seconds, 1e-9):.0f} img/s"
            if len(lines) > 1:
                rate += f" per trial ({total:.0f} in all)"
            self.say(f"{epoch} lr {self.lr:g} | train loss {loss} top1 {top1} | test loss {val['loss']:.4f} {test} | "
                     f"{rate} {seconds:.1f}s | {left}",
                     shorter=(f"{epoch} lr {self.lr:g} | train loss {loss} top1 {top1} | test {test} | {left}",
                              f"{epoch} | train loss {loss} top1 {top1} | test top1 {val['top1']:.2f}% | {left}",
                              f"{epoch} | loss {loss} train {top1} test {val['top1']:.2f}% | {left}"))

    def columns(self) -> int | None:
        """The terminal's width; None where it cannot be told (then, as tqdm, nothing is cut to fit)."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or None
        except (OSError, AttributeError, ValueError):
            return None


def fit_width(variants: list[str], columns: int) -> str:
    """The first variant shorter than the terminal (its last column left free, as tqdm does: no wrap)."""
    for text in variants:
        if len(text) < columns:
            return text
    return variants[-1][:max(columns - 1, 1)]
