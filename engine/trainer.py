"""The epoch loop, shared by every method: train, test, log, checkpoint, results."""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distiller import Distiller
from engine.checkpoint import atomic_save, atomic_write, rng_state
from engine.evaluation import evaluate
from engine.step import GraphedStep, lr_at, train_step
from utils.meter import DeviceMeter
from utils.progress import Progress

TAGS = {  # the published TensorBoard tags (SPEC section 5) and ours beside them
    "loss": "loss_train/total", "acc_train_top1": "acc_train/top_1", "acc_train_top5": "acc_train/top_5",
    "acc_cocord_top1": "acc_cocord/top_1", "acc_cocord_top5": "acc_cocord/top_5",
    "loss_ctr": "loss_train/ctr", "loss_cls": "loss_train/cls", "loss_pred": "loss_train/pred",
    "loss_kd": "loss_train/kd",
}


class TrainingDiverged(RuntimeError):
    """A loss term stopped being finite; the message names the term, the epoch and the step."""


@dataclass
class RunState:
    """What survives an epoch boundary, in the checkpoint."""
    epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    def __init__(self, method: Distiller, optimizer: torch.optim.Optimizer, train_batches: Any, test_batches: Any,
                 opt: dict[str, Any], device: torch.device, folder: Path, writer: Any, progress: Progress,
                 state: RunState, cuda_graph: bool, amp: bool, ddp_method: torch.nn.Module | None = None,
                 is_main: bool = True, extra_results: dict[str, Any] | None = None,
                 sync_epoch_end: Any = None, reduce_eval: Any = None):
        self.method, self.optimizer, self.opt, self.device = method, optimizer, opt, device
        self.train_batches, self.test_batches = train_batches, test_batches
        self.folder, self.writer, self.progress, self.state = folder, writer, progress, state
        self.is_main = is_main
        self.extra_results = extra_results or {}
        self.sync_epoch_end = sync_epoch_end  # DDP: reduce statistics and buffers across ranks
        self.reduce_eval = reduce_eval  # DDP with a sharded test set: sum the totals across ranks
        self.meter = DeviceMeter(method.accuracy_outputs, device)
        autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)) if amp \
            else contextlib.nullcontext
        module = ddp_method or method
        self.step = lambda views, labels: train_step(module, optimizer, views, labels, self.meter, autocast)
        if cuda_graph:
            self.step = GraphedStep(self.step, opt["batch_size"])

    def fit(self) -> dict[str, Any]:
        for epoch in range(self.state.epoch + 1, self.opt["epochs"] + 1):
            self.train_epoch(epoch)
        return self.results(finished=True)

    def _set_lr(self, lr: float) -> None:
        changed = any(group["lr"] != lr for group in self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if changed and isinstance(self.step, GraphedStep):
            self.step.invalidate()

    def train_epoch(self, epoch: int) -> None:
        lr = lr_at(epoch, self.opt)
        self._set_lr(lr)
        self.train_batches.set_epoch(epoch)
        self.method.train()
        self.meter.reset()
        self.progress.start_epoch(epoch, lr)
        t0 = time.perf_counter()
        step = 0
        for step, (views, labels) in enumerate(self.train_batches, start=1):
            self.step(views if isinstance(views, list) else [views], labels)
            # Under DDP only the epoch end reads (reduced) statistics: a rank stopping alone would hang the rest.
            if step % self.opt["print_freq"] == 0 and self.sync_epoch_end is None:
                self._check(self.meter.read(), epoch, step)
        stats = self.sync_epoch_end(self.meter) if self.sync_epoch_end else self.meter.read()
        self._check(stats, epoch, step)
        seconds = time.perf_counter() - t0
        val = evaluate(self.method.student, self.test_batches, self.reduce_eval)
        self.progress.end_epoch(stats, val)
        self._finish_epoch(epoch, lr, stats, val, seconds)

    def _check(self, stats: dict[str, Any], epoch: int, steps: int) -> None:
        self.progress.update(steps, stats)
        if stats["bad"]:
            name, at = min(stats["bad"].items(), key=lambda kv: kv[1])
            kept = self.folder / "model" / "checkpoint.pth"
            kept_note = f"the last good checkpoint {kept} is kept" if kept.exists() else "no checkpoint was written"
            raise TrainingDiverged(f"{name} became NaN or infinite at epoch {epoch}, step {at}; training stopped, "
                                   f"{kept_note}; lower learning_rate or check the data")

    def _finish_epoch(self, epoch: int, lr: float, train: dict[str, Any], val: dict[str, float],
                      seconds: float) -> None:
        state = self.state
        state.epoch = epoch
        is_best = val["top1"] > state.best_acc or state.best_epoch == 0
        if is_best:
            state.best_acc, state.best_epoch = val["top1"], epoch
        record = {"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
                  "images_per_s": round(train["images"] / max(seconds, 1e-9), 1),
                  **{k: v for k, v in train.items() if k != "bad"},
                  "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]}
        state.history.append(record)
        if not self.is_main:
            return
        self._log(epoch, lr, train, val)
        model_dir = self.folder / "model"
        ckpt = {"epoch": epoch, "model": self.method.student.state_dict(), "best_acc": state.best_acc,
                "best_epoch": state.best_epoch, "accuracy": val["top1"], "arch": self.opt["student_model"],
                "optimizer": self.optimizer.state_dict(), "method": self.method.checkpoint_state(),
                "history": state.history, "rng": rng_state(), "options": self.opt}
        atomic_save(ckpt, model_dir / "checkpoint.pth")
        if is_best:
            atomic_save({"epoch": epoch, "model": ckpt["model"], "best_acc": state.best_acc,
                         "arch": ckpt["arch"]}, model_dir / "best.pth")
        if epoch == self.opt["epochs"]:  # CRD's layout, so `path.teacher` can point here directly
            atomic_save({"epoch": epoch, "model": ckpt["model"], "best_acc": state.best_acc,
                         "optimizer": ckpt["optimizer"]}, model_dir / f"ckpt_epoch_{epoch}.pth")
        self._write_results(self.results(finished=epoch == self.opt["epochs"]))

    def _log(self, epoch: int, lr: float, train: dict[str, Any], val: dict[str, float]) -> None:
        for key, tag in TAGS.items():
            if key in train and math.isfinite(train[key]):
                self.writer.add_scalar(tag, train[key], epoch)
        self.writer.add_scalar("loss_val/loss", val["loss"], epoch)
        self.writer.add_scalar("acc_val/top_1", val["top1"], epoch)
        self.writer.add_scalar("acc_val/top_5", val["top5"], epoch)
        self.writer.add_scalar("lr", lr, epoch)
        self.writer.flush()  # before the checkpoint: a resume purges anything logged past it

    def results(self, finished: bool) -> dict[str, Any]:
        s = self.state
        last = s.history[-1] if s.history else {}
        return {"finished": finished, "best_acc": s.best_acc, "best_epoch": s.best_epoch,
                "last_acc": last.get("val_top1"), "last_epoch": last.get("epoch"),
                "last_top5": last.get("val_top5"), **self.extra_results,
                "student_model": self.opt["student_model"], "teacher_model": self.opt["teacher_model"],
                "distill": self.opt["distill"], "epochs": self.opt["epochs"], "history": s.history}

    def _write_results(self, results: dict[str, Any]) -> None:
        text = json.dumps(results, indent=1).encode()
        atomic_write(self.folder / "results.json", lambda f: f.write(text))
