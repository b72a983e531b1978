"""The epoch loop, shared by every method and by one trial or several: train, test, log, checkpoint.

Trials that need the same epoch train together as one group. A trial whose loss stops being finite stops
(its last good checkpoint stays) and the others go on; trials resumed at different epochs catch up first.
"""
from __future__ import annotations

import contextlib
import errno
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from engine.checkpoint import Trial, make_checkpoint, save_epoch
from engine.replicas import evaluate_trials
from engine.step import Group, InitStep, lr_at
from utils.files import DiskError
from utils.progress import Progress

TIMING_KEYS = ("seconds", "test_seconds", "images_per_s")  # an epoch's history entries that measure the machine


class TrainingDiverged(RuntimeError):
    """A trial's loss stopped being finite; the message names the trial, the term, the epoch and the step."""


@dataclass
class RunContext:
    opt: dict[str, Any]
    progress: Progress
    min_batch: int
    pass_index: bool = False  # the method takes each sample's training-set index
    several: bool = False  # the run trains several trials (its lines name them)
    is_main: bool = True
    processes: int = 1  # under torchrun, how many train the run together
    extra: dict[str, Any] = field(default_factory=dict)  # written into every results.json (teacher_acc, ...)
    teacher_fingerprint: float | None = None


class Trainer:
    def __init__(self, run: RunContext, trials: list[Trial], build_group: Callable[[list[Trial]], Group],
                 test_batches: Any):
        self.run, self.trials, self.build_group, self.test_batches = run, trials, build_group, test_batches
        self.group: Group | None = None
        self.skipped_note = False
        self.init_trained = False  # an init stage has updated the method before its first epoch

    def fit(self) -> None:
        opt = self.run.opt
        while True:
            live = [t for t in self.trials if t.diverged is None and t.state.epoch < opt["epochs"]]
            if not live:
                break
            epoch = min(t.state.epoch for t in live) + 1
            members = [t for t in live if t.state.epoch == epoch - 1]
            if self.group is None or self.group.trials != members:
                self.group = self.build_group(members)
                if epoch == 1:
                    self.init_stage(self.group)
                    if any(t.diverged for t in members):  # its init stage diverged: no epoch to train
                        continue
            self.train_epoch(self.group, epoch)
        failed = [t for t in self.trials if t.diverged]
        if failed:
            raise TrainingDiverged(stopped_message(self.trials, failed))

    def init_stage(self, group: Group) -> None:
        """A method's init stage (RepDistiller's two-stage methods; not stackable), before its first epoch. Not
        checkpointed: a run stopped before its first epoch ends starts over. Logged at steps 1 - init_epochs .. 0."""
        method = getattr(group.replicas, "method", None)
        epochs = 0 if method is None else type(method).init_epochs(self.run.opt)
        if not epochs:
            return
        step = InitStep(method, self.run.opt, self.run.processes > 1, group.meter.device)
        for e in range(1, epochs + 1):
            group.batches.set_epoch([t.rng.draw_seed() for t in group.trials])
            step.start_epoch()
            total, images = 0.0, 0
            with _random_state(group):
                for views, labels, index in self._batches(group):
                    out = step(views, labels, index)
                    total, images = total + out["loss"].detach() * labels.shape[-1], images + labels.shape[-1]
            loss = float(total) / max(images, 1)  # one read per init epoch
            # Under torchrun each rank's loss is its own: the first epoch's reduced statistics tell instead.
            if not math.isfinite(loss) and self.run.processes == 1:
                lr = type(method).init_learning_rate(self.run.opt)
                how = "lower learning_rate" if lr == self.run.opt["learning_rate"] else "check the data and the teacher"
                for trial in group.trials:
                    self._stop(trial, f"the init stage's loss became NaN or infinite in init epoch {e} of {epochs} "
                                      f"(its learning rate {lr:g}: {how})")
                return
            self.init_trained = True
            label = f" of {group.trials[0].label}" if self.run.several else ""
            self.run.progress.say(f"init stage{label} epoch {e}/{epochs}: loss {loss:.4f}")
            for trial in group.trials:
                if trial.writer is not None:
                    trial.writer.add_scalar("loss_init/total", loss, e - epochs)

    def train_epoch(self, group: Group, epoch: int) -> None:
        opt, progress = self.run.opt, self.run.progress
        lr = lr_at(epoch, opt)
        group.step.set_lr(lr)
        group.batches.set_epoch([t.rng.draw_seed() for t in group.trials])
        group.replicas.start_epoch(epoch)
        group.replicas.train()
        group.meter.reset()
        progress.start_epoch(epoch, lr)
        t0, steps = time.perf_counter(), 0
        with _random_state(group):
            for views, labels, index in self._batches(group):
                group.step(views, labels, index)
                steps += 1
                progress.step()
                # Under torchrun only the epoch end reads (reduced) statistics: a rank stopping alone would hang.
                if steps % opt["print_freq"] == 0 and self.run.processes == 1:
                    stats = group.meter.read()
                    progress.update(stats[0])
                    self._check_running(group, stats, epoch)
        group.replicas.end_epoch(group.meter)
        stats = group.meter.read()
        t_test = time.perf_counter()
        vals = evaluate_trials(group.replicas.students(), self.test_batches)
        times = (t_test - t0, time.perf_counter() - t_test)  # training, testing (which ends with a host read)
        progress.close()
        lines, stopped = [], []
        for k, trial in enumerate(group.trials):
            problem = _problem(stats[k], vals[k], epoch, self.init_trained)
            state = group.replicas.trial_state(k) if problem is None else {}
            floats = [t.isfinite().all() for t in state.values() if t.is_floating_point()]
            if floats and not bool(torch.stack(floats).all()):
                problem = f"the weights became NaN or infinite in epoch {epoch}"
            if problem is None:
                problem = self._finish_epoch(trial, group, k, state, epoch, lr, stats[k], vals[k], times)
            if problem is not None:
                self._stop(trial, problem)
                stopped.append(trial)
                continue
            lines.append((f" {trial.label}" if self.run.several else "", stats[k], vals[k]))
        progress.end_epoch(lines)
        self._say_stopped(stopped)

    def _batches(self, group: Group) -> Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]:
        """The group's batches its method can train on (a smaller last batch is skipped, and said once), each with
        the samples' indices only for a method that takes them."""
        for views, labels, index in group.batches:
            if labels.shape[-1] >= self.run.min_batch:
                yield views, labels, index if self.run.pass_index else None
            elif not self.skipped_note:
                self.skipped_note = True
                self.run.progress.say(f"note: the last batch of each epoch holds {labels.shape[-1]} image(s) and is "
                                      f"skipped: this method trains on batches of {self.run.min_batch} or more")

    def _check_running(self, group: Group, stats: list[dict[str, Any]], epoch: int) -> None:
        """Mid-epoch: a single trial stops at once; in a group the others go on to the epoch's end."""
        bad = [(t, _problem(s, None, epoch, self.init_trained)) for t, s in zip(group.trials, stats)]
        if all(problem is not None for _, problem in bad):
            for trial, problem in bad:
                self._stop(trial, problem)
            self.run.progress.close()
            self._say_stopped([t for t, _ in bad])
            raise TrainingDiverged(stopped_message(self.trials, [t for t in self.trials if t.diverged]))

    def _stop(self, trial: Trial, problem: str) -> None:
        kept = trial.paths.checkpoint
        kept_note = (f"the last good checkpoint {kept} is kept" if kept.is_file() else "no checkpoint was written"
                     if trial.paths.folder.is_dir() else "its folder is gone")
        prefix = f"{trial.label}: " if self.run.several else ""
        trial.diverged = f"{prefix}{problem}; training stopped, {kept_note}"
        if trial.writer is not None:  # nothing more is logged for it (its folder may be gone)
            with contextlib.suppress(OSError):
                trial.writer.close()
            trial.writer = None

    def _say_stopped(self, stopped: list[Trial]) -> None:
        """Trials that stopped while others go on are told at once; when none goes on, the final error tells."""
        if stopped and any(t.diverged is None for t in self.trials):
            for trial in stopped:
                self.run.progress.say(f"error: {trial.diverged}; the other trials go on")

    def _finish_epoch(self, trial: Trial, group: Group, k: int, method_state: dict[str, torch.Tensor], epoch: int,
                      lr: float, train: dict[str, Any], val: dict[str, float], times: tuple[float, float]
                      ) -> str | None:
        """The trial's epoch in its state and on disk; a problem that stops this trial alone, or None."""
        seconds, test_seconds = times
        state = trial.state
        state.epoch = epoch
        if val["top1"] > state.best_acc or state.best_epoch == 0:
            state.best_acc, state.best_epoch = val["top1"], epoch
        state.history.append({"epoch": epoch, "lr": lr, "seconds": round(seconds, 3),
                              "test_seconds": round(test_seconds, 3),
                              "images_per_s": round(train["images"] / max(seconds, 1e-9), 1),
                              **{key: v for key, v in train.items() if key != "bad"},
                              "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"]})
        optimizer_state = group.replicas.optimizer_state(group.optimizer, k)
        trial.saved = (method_state, optimizer_state)
        if not self.run.is_main:
            return None
        ckpt = make_checkpoint(epoch=epoch, student=group.replicas.student_state(k), method=method_state,
                               optimizer=optimizer_state, state=state, accuracy=val["top1"], opt=self.run.opt,
                               rng=trial.rng.state, seed=trial.seed, teacher_fingerprint=self.run.teacher_fingerprint,
                               teacher_acc=self.run.extra.get("teacher_acc"), processes=self.run.processes)
        try:
            if not trial.paths.folder.is_dir():  # removed while it trained: a save would make a new, partial one
                raise FileNotFoundError(errno.ENOENT, "removed while the trial trained")
            if trial.writer is not None:
                _log(trial.writer, epoch, lr, train, val)
            save_epoch(trial.paths, ckpt, {**self.run.extra, "trial": trial.paths.number, "seed": trial.seed})
        except DiskError:
            raise  # a full disk stops every trial
        except OSError as err:
            return f"its folder {trial.paths.folder} could not be written in epoch {epoch} ({err.strerror})"
        return None


def stopped_message(trials: list[Trial], failed: list[Trial]) -> str:
    """The run's last line when trials stopped: which, why, and what to do next (once, for all of them)."""
    if len(trials) == 1:
        what = failed[0].diverged
    elif len(failed) == len(trials):
        what = "every trial stopped: " + "; ".join(t.diverged for t in failed)
    else:
        what = f"{len(failed)} of {len(trials)} trials stopped: " + "; ".join(t.diverged for t in failed)
    gone = [t for t in failed if not t.paths.folder.is_dir()]
    diverged = [t for t in failed if t not in gone]
    then = []
    if any(t.paths.checkpoint.is_file() for t in diverged):
        then.append("to go on from the last good checkpoint, resume with --resume and the change, e.g. --set "
                    "learning_rate=<lower>")
    elif diverged:
        then.append("to start again with other options, run the command with them (a trial folder that holds "
                    "no finished epoch is archived)")
    if gone:
        numbers = ",".join(str(t.paths.number) for t in gone)
        then.append(f"to train {'it' if len(gone) == 1 else 'them'} again, run the command with -t {numbers}")
    return "; ".join([what, *then])


def _random_state(group: Group) -> contextlib.AbstractContextManager:
    """A trial trained alone draws from its own random state (a method that draws in its step, CRD, then repeats
    its draws on resume); stacked trials draw nothing in their step (distiller/base.py)."""
    return group.trials[0].rng.active() if len(group.trials) == 1 else contextlib.nullcontext()


def _problem(train: dict[str, Any], val: dict[str, float] | None, epoch: int, init_trained: bool = False
             ) -> str | None:
    """`init_trained`: an init stage updated the method before epoch 1 (whose first step is then not the first)."""
    if train["bad"]:
        name, at = min(train["bad"].items(), key=lambda kv: kv[1])
        cause = ("before any update, so the teacher, the data or the options (e.g. cocord.T) produce it, not the "
                 "learning rate" if epoch == 1 and at == 1 and not init_trained else
                 "lower learning_rate or check the data")
        return f"{name} became NaN or infinite at epoch {epoch}, step {at} ({cause})"
    if val is not None and not math.isfinite(val["loss"]):
        return f"the test loss became NaN or infinite at epoch {epoch} (lower learning_rate)"
    return None


def _log(writer: Any, epoch: int, lr: float, train: dict[str, Any], val: dict[str, float]) -> None:
    """The published tags follow one rule: every loss term -> loss_train/<term> (the total: loss_train/total),
    every accuracy -> <name>/top_1 and /top_5; then the test numbers and the learning rate."""
    for key, value in train.items():
        if key == "loss":
            writer.add_scalar("loss_train/total", value, epoch)
        elif key.startswith("loss_"):
            writer.add_scalar(f"loss_train/{key.removeprefix('loss_')}", value, epoch)
        elif key.endswith(("_top1", "_top5")):
            writer.add_scalar(f"{key[:-5]}/top_{key[-1]}", value, epoch)
    writer.add_scalar("loss_val/loss", val["loss"], epoch)
    writer.add_scalar("acc_val/top_1", val["top1"], epoch)
    writer.add_scalar("acc_val/top_5", val["top5"], epoch)
    writer.add_scalar("lr", lr, epoch)
    writer.flush()  # before the checkpoint: a resume purges anything logged past it
