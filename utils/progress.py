"""What a run prints: a live bar per epoch on a terminal, one line per epoch elsewhere (CI logs)."""
from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, epochs: int, steps_per_epoch: int, stream: TextIO = sys.stdout,
                 enabled: bool = True):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.epoch_seconds: list[float] = []

    def say(self, text: str) -> None:
        if self.enabled:
            print(text, file=self.stream, flush=True)

    def start_epoch(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr, self.t0 = epoch, lr, time.perf_counter()

    def update(self, step: int, stats: dict[str, Any]) -> None:
        """Redraw the bar (terminal only); `stats` was read from the device just now."""
        if not self.tty:
            return
        elapsed = time.perf_counter() - self.t0
        rate = stats["images"] / max(elapsed, 1e-9)
        left = (self.steps - step) * elapsed / max(step, 1)
        width = 24
        done = int(width * step / max(self.steps, 1))
        bar = "#" * done + "." * (width - done)
        acc = stats.get("acc_train_top1", 0.0)
        self.stream.write(f"\repoch {self.epoch}/{self.epochs} [{bar}] {step}/{self.steps} "
                          f"loss {stats['loss']:.4f} acc {acc:5.2f}% {rate:7.0f} img/s "
                          f"epoch left {format_duration(left)}  ")
        self.stream.flush()

    def end_epoch(self, train: dict[str, Any], val: dict[str, float]) -> None:
        seconds = time.perf_counter() - self.t0
        self.epoch_seconds.append(seconds)
        recent = self.epoch_seconds[-5:]
        eta = (self.epochs - self.epoch) * sum(recent) / len(recent)
        if self.tty:
            self.stream.write("\r\033[K")
        self.say(f"epoch {self.epoch}/{self.epochs} lr {self.lr:g} | train loss {train['loss']:.4f} "
                 f"top1 {train.get('acc_train_top1', 0.0):.2f}% | test loss {val['loss']:.4f} "
                 f"top1 {val['top1']:.2f}% top5 {val['top5']:.2f}% | "
                 f"{train['images'] / max(seconds, 1e-9):.0f} img/s {seconds:.1f}s | left {format_duration(eta)}")
