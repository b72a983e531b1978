"""From options to finished trials: check, build, write, train.

Order matters for users: every check that can fail on their input (options, models, teacher, memory, data,
the trial folders, a resume target) runs before anything is written or an old run archived.
"""
from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dataset import DataError
from distiller import Distiller, method_class
from engine.data import TrainBatches, build_data
from engine.evaluation import evaluate
from engine.group import group_builder
from engine.machine import (
    check_memory,
    effective_speed,
    effective_workers,
    quiet_library_warnings,
    select_device,
    set_cudnn,
)
from engine.resume import FolderPlan, fixed_overrides, plan_folder, resume_options
from engine.step import Speed
from engine.teacher import check_teacher_outputs, fingerprint, load_checked_teacher, resolve_teacher_model
from engine.trainer import RunContext, Trainer, Trial
from engine.trial import (
    ResumeError,
    RunState,
    TrialPaths,
    experiment_folder,
    load_checkpoint,
    resume_target,
    saved_epoch,
)
from engine.writing import (
    FolderBusy,
    check_unchanged,
    complete_resumed,
    folder_state,
    lock_trials,
    network_summary,
    prepare_folder,
    record_run,
)
from models import CheckpointError, build_model, model_dict, unknown_model_message
from options.schema import OptionsError
from utils import distributed
from utils.files import DiskError, check_writable_folder
from utils.progress import Progress, plural
from utils.rng import TrialRNG

USER_ERRORS = (OptionsError, CheckpointError, DataError, ResumeError, DiskError, FolderBusy)


@dataclass
class Command:
    """What the user asked on the command line."""
    trials: list[int]
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    replace: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the whole command line: provenance, and the resume hint


class Interrupted(KeyboardInterrupt):
    """Ctrl-C; the message says what was saved and the exact command that continues."""


@dataclass
class Plan:
    """Everything decided before anything is written."""
    opt: dict[str, Any]
    method_cls: type[Distiller]
    trials: list[Trial]
    checkpoints: dict[int, dict[str, Any]]  # resumed trials: trial number -> checkpoint
    folders: list[FolderPlan] = field(default_factory=list)  # new trials
    device: torch.device = torch.device("cpu")
    speed: Speed = field(default_factory=Speed)
    teacher: torch.nn.Module | None = None
    teacher_fingerprint: float | None = None
    folder_states: dict[int, Any] = field(default_factory=dict)  # what each trial folder held when planned


def run(opt: dict[str, Any], cmd: Command) -> None:
    """Train the trials `cmd` names as `opt` (engine.config.build_options) says."""
    quiet_library_warnings()
    rank, world = distributed.setup()
    progress = Progress(opt["epochs"], 0, enabled=rank == 0 and not cmd.quiet)
    plan = check(opt, cmd, world, progress)
    train_batches, test_batches, methods, extra = build(plan, rank, world, progress)
    if not plan.checkpoints:  # the last check: what the trial folders hold now
        plan.folders = [plan_folder(t.paths, plan.opt, cmd.replace) for t in plan.trials]
    locks = lock_trials(plan.trials) if rank == 0 else []  # the first write: another run of these trials stops here
    try:
        if rank == 0:
            check_unchanged(plan.trials, plan.folder_states)
        write(plan, cmd, methods[0], extra, rank, progress)
        train(plan, cmd, train_batches, test_batches, methods, extra, rank, world, progress)
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(interrupted_message(plan, cmd)) from None
    finally:
        for trial in plan.trials:
            if trial.writer is not None:
                trial.writer.close()
        for lock in locks:
            lock.release()


def check(opt: dict[str, Any], cmd: Command, world: int, progress: Progress) -> Plan:
    if len(cmd.trials) > 1 and world > 1:
        raise OptionsError("several trials train together in one process; under torchrun give one trial (-t N)")
    method_cls = method_class(opt["distill"])
    if method_cls.needs_teacher:
        opt = resolve_teacher_model(opt)
    if cmd.resume or opt["path"]["resume"]:
        plan = _resume_plan(opt, cmd, progress)
    else:
        plan = _new_plan(opt, method_cls, cmd)
    opt, method_cls = plan.opt, plan.method_cls
    method_cls.check_options(opt, world)
    if opt["batch_size"] < method_cls.min_batch:
        raise OptionsError(f"batch_size {opt['batch_size']} is too small for distill: {opt['distill']}, which trains "
                           f"on batches of {method_cls.min_batch} or more; raise batch_size")
    for key in ("student_model",) + (("teacher_model",) if method_cls.needs_teacher else ()):
        if opt[key] not in model_dict:
            raise OptionsError(f"option '{key}': {unknown_model_message(opt[key])}")
    plan.device = select_device(opt, progress.say)
    set_cudnn(opt["seed"], plan.device)
    if opt["sync_bn"] and plan.device.type != "cuda":
        raise OptionsError("sync_bn needs CUDA GPUs (SyncBatchNorm); set sync_bn: false to train on the CPU")
    if opt["sync_bn"] and world == 1:
        progress.say("note: sync_bn has no effect in a single process (launch with torchrun to use several GPUs)")
    plan.speed = effective_speed(opt, plan.device, len(plan.trials), world)
    if plan.checkpoints:  # the run recorded the speed settings that applied where it trained
        was = next(iter(plan.checkpoints.values()))["options"].get("speed", {})
        moved = [f"speed.{k}={v!r} (was {was.get(k)!r})" for k, v in plan.speed.as_options().items() if was.get(k) != v]
        if moved:
            progress.say(f"resuming with changed speed settings (they apply on a GPU only): {', '.join(moved)}")
    plan.opt = opt = {**opt, "speed": plan.speed.as_options(), "num_workers": effective_workers(opt, progress.say)}
    if method_cls.needs_teacher:
        plan.teacher = load_checked_teacher(opt)
        _check_same_teacher(plan)
    check_memory(method_cls, opt, opt["teacher_model"] if method_cls.needs_teacher else None, len(plan.trials),
                 plan.device)
    check_writable_folder(Path(opt["experiments_dir"]), "experiments_dir")
    return plan


def _new_plan(opt: dict[str, Any], method_cls: type[Distiller], cmd: Command) -> Plan:
    # Trial t runs with seed + t - 1 (the schema keeps room below numpy's limit); without a seed, a drawn one.
    seed = opt["seed"]
    base = seed if seed is not None else distributed.broadcast_int(int.from_bytes(os.urandom(4), "little") % 2**30)
    folder = experiment_folder(opt, method_cls.experiment_name(opt))
    trials = [Trial(TrialPaths(folder / f"trial_{t}"), base + t - 1, TrialRNG(base + t - 1)) for t in cmd.trials]
    return Plan(opt, method_cls, trials, {}, folder_states={t.paths.number: folder_state(t.paths) for t in trials})


def _resume_plan(opt: dict[str, Any], cmd: Command, progress: Progress) -> Plan:
    if opt["path"]["resume"]:
        if len(cmd.trials) > 1:
            raise OptionsError("path.resume names one trial; to resume several, give -t with --resume")
        targets = [resume_target(opt["path"]["resume"])]
    else:
        folder = experiment_folder(opt, method_class(opt["distill"]).experiment_name(opt))
        targets = [TrialPaths(folder / f"trial_{t}") for t in cmd.trials]
    states = {p.number: folder_state(p) for p in targets}  # before reading: a checkpoint written later shows
    checkpoints = {p.number: load_checkpoint(p.checkpoint) for p in targets if p.checkpoint.is_file()}
    renamed = fixed_overrides(cmd.overrides, method_class(opt["distill"]).fixed_options)
    if not checkpoints and renamed:  # the folder is named by what --set changed: the run it meant is elsewhere
        raise ResumeError(f"nothing to resume at {', '.join(str(p.folder) for p in targets)}: no model/checkpoint.pth"
                          f", and --set {' '.join(renamed)} only chooses which run to resume (a resume keeps what "
                          "the run was trained with); to train with a new value, start a new run without --resume")
    if not checkpoints:
        raise ResumeError(f"nothing to resume at {', '.join(str(p.folder) for p in targets)}: no model/checkpoint.pth"
                          " (an interrupted first epoch saves nothing); run the command without --resume")
    number, first = next(iter(checkpoints.items()))
    method_cls = method_class(first["options"]["distill"])
    base = int(first.get("seed", 0)) - number + 1
    run_opt, notes = resume_options(first["options"], opt, cmd.overrides, method_cls.fixed_options)
    for line in notes:
        progress.say(line)
    trials = []
    for paths in targets:
        ckpt = checkpoints.get(paths.number)
        if ckpt is None:  # a trial of the group that never finished an epoch: it starts again, from its seed
            trials.append(Trial(paths, base + paths.number - 1, TrialRNG(base + paths.number - 1)))
        else:
            state = RunState(ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"], ckpt["history"])
            trials.append(Trial(paths, int(ckpt.get("seed", 0)), TrialRNG(state=ckpt["rng"]), state))
    return Plan(run_opt, method_cls, trials, checkpoints, folder_states=states)


def _check_same_teacher(plan: Plan) -> None:
    plan.teacher_fingerprint = fingerprint(plan.teacher)
    for ckpt in plan.checkpoints.values():
        recorded = ckpt.get("teacher_fingerprint")
        if recorded is not None and abs(recorded - plan.teacher_fingerprint) > 1e-9 * max(abs(recorded), 1.0):
            raise ResumeError(f"the teacher {plan.opt['path']['teacher']} is not the one this run was trained with "
                              f"(its weights differ); resume with the run's, {ckpt['options']['path']['teacher']}")


def build(plan: Plan, rank: int, world: int, progress: Progress
          ) -> tuple[TrainBatches, Any, list[Distiller], dict[str, Any]]:
    """Data, one method per trial (initialised from the trial's own seed, or from its checkpoint), and the
    teacher's test accuracy: still nothing written."""
    opt, device = plan.opt, plan.device
    train_batches, test_batches = build_data(opt, plan.method_cls.n_views, device, plan.speed, len(plan.trials),
                                             rank, world, plan.method_cls.min_batch)
    fmt = torch.channels_last if plan.speed.channels_last else torch.contiguous_format
    methods = []
    for trial in plan.trials:
        ckpt = plan.checkpoints.get(trial.paths.number)
        # A resumed trial's random state is its checkpoint's: its (overwritten) initialisation draws elsewhere.
        with (trial.rng if ckpt is None else TrialRNG(trial.seed)).active():
            student = build_model(opt["student_model"], opt["n_cls"])
            if opt["sync_bn"] and world > 1:
                student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
            method = plan.method_cls(student, plan.teacher, opt).to(device=device, memory_format=fmt)
        if ckpt is not None:
            method.load_checkpoint_state(ckpt["method"])
        trial.saved = (method.checkpoint_state(), None if ckpt is None else ckpt["optimizer"])
        methods.append(method)
    extra: dict[str, Any] = {}
    if plan.teacher is not None:
        reduce = distributed.all_reduce_sum if getattr(test_batches, "sharded", False) else None
        test = evaluate(plan.teacher, test_batches, reduce)
        check_teacher_outputs(opt, test)
        extra["teacher_acc"] = test["top1"]
        progress.say(f"teacher {opt['teacher_model']} test accuracy: {extra['teacher_acc']:.2f}%")
    return train_batches, test_batches, methods, extra


def write(plan: Plan, cmd: Command, method: Distiller, extra: dict[str, Any], rank: int, progress: Progress) -> None:
    if rank == 0:
        for folder in plan.folders:
            prepare_folder(folder, progress.say)
        summary = network_summary(method)
        for trial in plan.trials:
            ckpt = plan.checkpoints.get(trial.paths.number)
            if ckpt is not None:
                complete_resumed(trial.paths, ckpt, {**extra, "trial": trial.paths.number, "seed": trial.seed},
                                 plan.opt, progress.say)
            record_run(trial.paths, plan.opt, cmd.argv, plan.device, plan.opt["speed"], trial.seed, summary)
            from torch.utils.tensorboard import SummaryWriter
            trial.writer = SummaryWriter(str(trial.paths.folder),
                                         purge_step=trial.state.epoch + 1 if ckpt is not None else None)
        progress.log_to([t.paths.log for t in plan.trials])
    distributed.barrier()
    for line in method.describe():
        progress.say(line)


def train(plan: Plan, cmd: Command, train_batches: TrainBatches, test_batches: Any, methods: list[Distiller],
          extra: dict[str, Any], rank: int, world: int, progress: Progress) -> None:
    opt, device = plan.opt, plan.device
    left = [t for t in plan.trials if t.state.epoch < opt["epochs"]]
    if not left:
        progress.say(f"{plural(len(plan.trials), 'trial')} already trained all {opt['epochs']} epochs; to continue, "
                     "resume with --set epochs=N")
        return
    progress.steps = len(train_batches)
    run_ctx = RunContext(opt, progress, plan.method_cls.min_batch, rank == 0, world > 1, extra,
                         plan.teacher_fingerprint,
                         distributed.all_reduce_sum if getattr(test_batches, "sharded", False) else None)
    where = plan.trials[0].paths.folder if len(plan.trials) == 1 else plan.trials[0].paths.folder.parent
    progress.say(f"training {opt['student_model']} ({opt['distill']}, {plural(len(left), 'trial')}) on {device} "
                 f"for {plural(opt['epochs'], 'epoch')}; logs in {where}")
    build = group_builder(methods, plan.trials, opt, plan.speed, device, train_batches, distributed=world > 1)
    Trainer(run_ctx, plan.trials, build, test_batches).fit()
    for trial in plan.trials:
        s = trial.state
        if trial.diverged is None and s.history:
            progress.say(f"{trial.paths.folder}: best test top-1 {s.best_acc:.2f}% (epoch {s.best_epoch}), last "
                         f"{s.history[-1]['val_top1']:.2f}% (epoch {s.epoch})")


def interrupted_message(plan: Plan, cmd: Command) -> str:
    # What is on disk, not the trials' progress: Ctrl-C may land while an epoch's checkpoint is being written.
    epochs = sorted({e for e in (saved_epoch(t.paths.checkpoint) for t in plan.trials) if e is not None})
    if not epochs:
        return ("interrupted before the first epoch ended: nothing was saved; run the same command again to start "
                "over")
    again = [a for a in cmd.argv if a not in ("--resume", "--replace")] + ["--resume"]
    script = sys.argv[0] if sys.argv and sys.argv[0].endswith(".py") else "main.py"  # as the user named it
    return (f"interrupted; epoch {'/'.join(map(str, epochs))} is saved; continue with: "
            f"python {shlex.join([script, *again])}")
