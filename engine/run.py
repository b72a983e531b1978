"""From options to finished trials: check, build, write, train.

Order matters for users: every check that can fail on their input (options, models, teacher, memory, data,
the trial folders, a resume target) runs before anything is written or an old run archived.
"""
from __future__ import annotations

import math
import shlex
import shutil
import sys
from typing import Any

import torch

from dataset import DataError
from distiller import Distiller
from engine.checkpoint import ResumeError, recorded_teacher_acc, repair, saved_epoch
from engine.data import TrainBatches, build_data
from engine.folders import (
    FolderBusy,
    FolderPlan,
    check_unchanged,
    lock_trials,
    network_summary,
    plan_folder,
    prepare_folder,
    record_run,
)
from engine.machine import quiet_library_warnings
from engine.plan import Command, Plan, check
from engine.replicas import evaluate
from engine.step import group_builder
from engine.trainer import RunContext, Trainer, TrainingDiverged, stopped_message
from models import CheckpointError, build_model
from options.schema import OptionsError
from utils import distributed
from utils.files import DiskError
from utils.progress import Progress, plural
from utils.rng import TrialRNG

USER_ERRORS = (OptionsError, CheckpointError, DataError, ResumeError, DiskError, FolderBusy)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; the message says what was saved and the exact command that continues."""


def run(opt: dict[str, Any], cmd: Command) -> None:
    """Train the trials `cmd` names as `opt` (distiller.build_options) says."""
    quiet_library_warnings()
    rank, world = distributed.setup()
    progress = Progress(opt["epochs"], 0, enabled=rank == 0 and not cmd.quiet)
    for note in cmd.notes:  # main.py showed them on stderr already
        progress.log(note)
    with distributed.agreed(USER_ERRORS):  # under torchrun, a refusal stops every process, each at once
        plan = check(opt, cmd, world, progress)
        train_batches, test_batches = build_data(plan.opt, plan.method_cls.n_views, plan.device, plan.speed.loader,
                                                 len(plan.trials), rank, world, plan.method_cls.min_batch,
                                                 channels_last=plan.speed.channels_last)
    locks = []
    try:
        with distributed.agreed(USER_ERRORS):
            if rank == 0:
                # The first write: another run of these trials stops here. Only then is what their folders hold
                # judged (a run that holds the lock may be making them right now), and only by the writing process
                # (another rank may look only after rank 0 has begun to write, and take its half-made folder for
                # another run).
                locks = lock_trials(plan.trials)
                check_unchanged(plan.trials, plan.folder_states)
                if not plan.checkpoints:
                    plan.folders = [plan_folder(t.paths, plan.opt, cmd.replace) for t in plan.trials]
        if plan.checkpoints:
            progress.say(resume_line(plan))
        with distributed.agreed(USER_ERRORS):
            methods, extra = build(plan, train_batches.train_labels, test_batches, world, progress)
        with distributed.agreed(USER_ERRORS):  # the other processes wait for rank 0's files, and stop if it does
            if rank == 0:
                write(plan, cmd, methods[0], extra, progress)
        for line in methods[0].describe():
            progress.say(line)
        train(plan, train_batches, test_batches, methods, extra, rank, world, progress)
    except KeyboardInterrupt:
        progress.close()
        close_writers(plan)
        undone = undo_unsaved_folders(plan)
        progress.logs = [p for p in progress.logs if p not in {f.paths.log for f in undone}]
        message = interrupted_message(plan, cmd, undone)
        progress.log(message)
        raise Interrupted(message) from None
    finally:
        close_writers(plan)
        for lock in locks:
            lock.release()


def close_writers(plan: Plan) -> None:
    for trial in plan.trials:
        if trial.writer is not None:
            trial.writer.close()
            trial.writer = None


def build(plan: Plan, train_labels: torch.Tensor, test_batches: Any, world: int, progress: Progress
          ) -> tuple[list[Distiller], dict[str, Any]]:
    """One method per trial (initialised from the trial's own seed, or from its checkpoint), and the teacher's
    test accuracy: still nothing written."""
    opt, device = plan.opt, plan.device
    extra_args = {"train_labels": train_labels} if plan.method_cls.needs_index else {}
    fmt = torch.channels_last if plan.speed.channels_last else torch.contiguous_format
    methods = []
    for trial in plan.trials:
        ckpt = plan.checkpoints.get(trial.paths.number)
        # A resumed trial's random state is its checkpoint's: its (overwritten) initialisation draws elsewhere.
        with (trial.rng if ckpt is None else TrialRNG(trial.seed)).active():
            student = build_model(opt["student_model"], opt["n_cls"])
            if opt["sync_bn"] and world > 1:
                student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            method = plan.method_cls(student, plan.teacher, opt, **extra_args).to(device=device, memory_format=fmt)
        if ckpt is not None:
            try:
                method.load_checkpoint_state(ckpt["method"])
            except (KeyError, ValueError) as err:  # a method state that does not fit: the method says why
                raise ResumeError(f"cannot resume {trial.paths.folder}: {err.args[0]}") from None
        trial.saved = (method.checkpoint_state(), None if ckpt is None else ckpt["optimizer"])
        methods.append(method)
    extra: dict[str, Any] = {}
    # A resume with nothing left to train keeps the teacher accuracy its run recorded: evaluated again (perhaps on
    # other data), it would change the result of a finished run.
    recorded = [recorded_teacher_acc(t.paths, ckpt) for t in plan.trials
                if (ckpt := plan.checkpoints.get(t.paths.number)) is not None]
    if plan.teacher is not None and (any(t.state.epoch < opt["epochs"] for t in plan.trials) or None in recorded):
        test = evaluate(plan.teacher, test_batches)
        if not all(math.isfinite(v) for v in test.values()):
            raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} gives NaN or infinite outputs on the "
                                  "test set; it is damaged or was trained on other data")
        extra["teacher_acc"] = test["top1"]
        progress.say(f"teacher {opt['teacher_model']} test accuracy: {extra['teacher_acc']:.2f}%")
    return methods, extra


def write(plan: Plan, cmd: Command, method: Distiller, extra: dict[str, Any], progress: Progress) -> None:
    for folder in plan.folders:
        prepare_folder(folder, progress.say)
    summary = network_summary(method)
    for trial in plan.trials:
        ckpt = plan.checkpoints.get(trial.paths.number)
        # A trial with nothing left to train keeps the record of what it trained with (the group's --set
        # learning_rate, say, changes nothing of it); only epochs may end it where it stands.
        opt = plan.opt if ckpt is None or trial.state.epoch < plan.opt["epochs"] else \
            {**ckpt["options"], "epochs": plan.opt["epochs"]}
        if ckpt is not None:
            kept = {} if "teacher_acc" in extra or plan.teacher is None else \
                {"teacher_acc": recorded_teacher_acc(trial.paths, ckpt)}
            results = {**extra, **kept, "trial": trial.paths.number, "seed": trial.seed}  # beside the checkpoint's
            fixed, ended = repair(trial.paths, ckpt, results, opt)
            if fixed:
                progress.say(f"{trial.paths.folder}: rewrote {', '.join(fixed)} from the last checkpoint (the last run "
                             "stopped before writing them)")
            if ended:
                progress.say(f"{trial.paths.folder}: the run ends at epoch {ckpt['epoch']}, as epochs={opt['epochs']} "
                             f"asks: wrote {', '.join(ended)}")
        record_run(trial.paths, opt, cmd.argv, plan.device, plan.opt["speed"], trial.seed, summary, plan.world)
        if trial.state.epoch >= plan.opt["epochs"]:
            continue  # nothing to log: no event file
        from torch.utils.tensorboard import SummaryWriter
        # In a resume, every trial's events past its checkpoint are dropped: also a trial of the group that
        # starts again, whose first epoch (and init stage, logged at steps <= 0) may have been logged before the
        # kill that lost its checkpoint.
        first = trial.state.epoch + 1 if trial.state.epoch else 1 - plan.method_cls.init_epochs(plan.opt)
        trial.writer = SummaryWriter(str(trial.paths.folder), purge_step=first if plan.checkpoints else None)
    progress.log_to([t.paths.log for t in plan.trials])


def train(plan: Plan, train_batches: TrainBatches, test_batches: Any, methods: list[Distiller], extra: dict[str, Any],
          rank: int, world: int, progress: Progress) -> None:
    opt, device = plan.opt, plan.device
    left = [t for t in plan.trials if t.state.epoch < opt["epochs"]]
    if not left:
        progress.say(f"{plural(len(plan.trials), 'trial')} already trained all {plural(opt['epochs'], 'epoch')}; to "
                     f"continue, resume with --set epochs=N (N > {opt['epochs']})")
        return
    progress.steps = len(train_batches)
    run_ctx = RunContext(opt, progress, plan.method_cls.min_batch, plan.method_cls.needs_index, len(plan.trials) > 1,
                         rank == 0, world, extra, plan.teacher_fingerprint)
    where = plan.trials[0].paths.folder if len(plan.trials) == 1 else plan.trials[0].paths.folder.parent
    progress.say(f"training {opt['student_model']} ({opt['distill']}, {plural(len(left), 'trial')}) on {device} "
                 f"for {plural(opt['epochs'], 'epoch')}; logs in {where}")
    if plan.method_cls.stackable or len(plan.trials) == 1:
        build = group_builder(methods, plan.trials, opt, plan.speed, device, train_batches, distributed=world > 1)
        Trainer(run_ctx, plan.trials, build, test_batches).fit()
    else:
        train_one_by_one(plan, run_ctx, methods, train_batches, test_batches, progress)
    for trial in plan.trials:
        s = trial.state
        if trial.diverged is None and s.history:
            progress.say(f"{trial.paths.folder}: best test top-1 {s.best_acc:.2f}% (epoch {s.best_epoch}), last "
                         f"{s.history[-1]['val_top1']:.2f}% (epoch {s.epoch})")


def train_one_by_one(plan: Plan, run_ctx: RunContext, methods: list[Distiller], train_batches: TrainBatches,
                     test_batches: Any, progress: Progress) -> None:
    """A method that cannot be stacked (distiller/base.py) trains its trials one after another, each exactly as a
    run of it alone; one that stops does not stop the others."""
    progress.say(f"distill: {plan.opt['distill']} trains its trials one after another (its trials cannot be "
                 "stacked)")
    for k, trial in enumerate(plan.trials):
        batches = train_batches.subset([k], stacked=False)
        build = group_builder([methods[k]], [trial], plan.opt, plan.speed, plan.device, batches)
        with progress.only_to(trial.paths.log):
            try:
                Trainer(run_ctx, [trial], build, test_batches).fit()
            except TrainingDiverged:
                if k + 1 < len(plan.trials):  # what to do is said once, at the end
                    progress.say(f"error: {trial.diverged}; the other trials go on")
    stopped = [t for t in plan.trials if t.diverged is not None]
    if stopped:
        raise TrainingDiverged(stopped_message(plan.trials, stopped))


def resume_line(plan: Plan) -> str:
    """Where each trial of a resume goes on from, e.g. `resuming trial 3 from epoch 2; the run trains to epoch 4`."""
    by_epoch: dict[int, list[int]] = {}
    for trial in plan.trials:
        by_epoch.setdefault(trial.state.epoch, []).append(trial.paths.number)
    parts = []
    for epoch, numbers in sorted(by_epoch.items(), reverse=True):
        who = (f"trial {numbers[0]}" if len(numbers) == 1 else f"trials {', '.join(map(str, numbers))}"
               if len(numbers) <= 6 else f"{len(numbers)} trials")
        parts.append(f"{who} from epoch {epoch}" if epoch else f"{who} from the start (no epoch saved)")
    return f"resuming {' and '.join(parts)}; the run trains to epoch {plan.opt['epochs']}"


def undo_unsaved_folders(plan: Plan) -> list[FolderPlan]:
    """The trial folders this run made and saved no epoch in hold nothing of value: removed, and the run each had
    archived put back, so that no half-made run is left for the next run to archive or for summaries to list."""
    removed = [f for f in plan.folders if f.made and not f.paths.checkpoint.exists()]
    for folder in removed:
        shutil.rmtree(folder.paths.folder, ignore_errors=True)
        if folder.archived_to is not None and not folder.paths.folder.exists():
            folder.archived_to.rename(folder.paths.folder)
    return removed


def interrupted_message(plan: Plan, cmd: Command, removed: list[FolderPlan]) -> str:
    # What is on disk, not the trials' progress: Ctrl-C may land while an epoch's checkpoint is being written.
    # (A folder put back holds the old run's epochs, not this run's.)
    gone = {f.paths.folder for f in removed}
    epochs = sorted({e for e in (saved_epoch(t.paths.checkpoint) for t in plan.trials if t.paths.folder not in gone)
                     if e is not None})
    if not epochs:
        made = f", and the trial folder{'s' if len(removed) > 1 else ''} it made removed" if removed else ""
        if any(f.archived_to is not None for f in removed):
            made += " (the run it had archived is back in its place)"
        return (f"interrupted before the first epoch ended: nothing was saved{made}; run the same command again to "
                "start over")
    again = [a for a in cmd.argv if a not in ("--resume", "--replace")] + ["--resume"]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "main.py"  # as the user named it
    return (f"interrupted; epoch {'/'.join(map(str, epochs))} is saved; continue with: "
            f"python {shlex.join([script, *again])}")
