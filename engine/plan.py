"""Everything a run decides before it writes anything: its options (a resume's come from its checkpoint),
trials, device, speed settings and teacher (its architecture, named or read from the checkpoint, and its
weights, checked on load), each checked, so that bad input stops with one line."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distiller import Distiller, method_class
from engine.checkpoint import (
    ResumeError,
    RunState,
    Trial,
    TrialPaths,
    check_resumable_files,
    experiment_folder,
    load_checkpoint,
    missing_run_message,
    resume_target,
    trained_evidence,
)
from engine.folders import FolderPlan, folder_state, kept_overrides, resume_options, run_changed_by_resume
from engine.machine import (
    Speed,
    check_memory,
    effective_speed,
    effective_workers,
    select_device,
    set_cudnn,
    tensor_fingerprint,
)
from models import CheckpointError, ZooModel, detect_architecture, load_teacher, model_dict, unknown_model_message
from options.schema import COMMON, OptionsError, merge_schemas
from options.settings import fields, flatten, unflatten
from utils import distributed
from utils.files import check_name_lengths, check_writable_folder
from utils.progress import Progress
from utils.rng import TrialRNG


@dataclass
class Command:
    """What the user asked on the command line."""
    trials: list[int]
    overrides: list[str] = field(default_factory=list)
    resume: bool = False
    replace: bool = False
    quiet: bool = False
    argv: list[str] = field(default_factory=list)  # the whole command line: provenance, and the resume hint
    notes: list[str] = field(default_factory=list)  # what main.py said reading the options file (for train.log)
    replaced: dict[str, Any] = field(default_factory=dict)  # the file's value of each key --set changed (dotted)


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
    world: int = 1  # torchrun processes


def check(opt: dict[str, Any], cmd: Command, world: int, progress: Progress) -> Plan:
    if len(cmd.trials) > 1 and world > 1:
        raise OptionsError("several trials train together in one process; under torchrun give one trial (-t N)")
    method_cls = method_class(opt["distill"])
    _check_name_lengths(opt, method_cls, cmd)
    if method_cls.needs_teacher:
        opt = resolve_teacher_model(opt)
    device = select_device(opt, progress.say)  # `gpu` is the command's on a resume too
    if cmd.resume or opt["path"]["resume"]:
        plan = _resume_plan(opt, cmd, method_cls, progress)
        _check_method(plan.method_cls, plan.opt, len(plan.trials), device, world)
    else:  # before anything is made per trial: a typo in a size, or -t 1-65536, is told at once
        _check_method(method_cls, opt, len(cmd.trials), device, world)
        plan = _new_plan(opt, method_cls, cmd)
    opt, method_cls, plan.device, plan.world = plan.opt, plan.method_cls, device, world
    for number, ckpt in plan.checkpoints.items():
        # Each process trains on batch_size images: a run resumed under another number would change its batch.
        was = ckpt.get("processes")  # None: a checkpoint older than the record
        if was is not None and was != world:
            how = "in a single process" if was == 1 else f"under torchrun --nproc_per_node={was}"
            raise ResumeError(f"cannot resume trial {number} in {_processes(world)}: it trained in {_processes(was)}, "
                              f"on batches of {was} x {opt['batch_size']} images; resume it {how}")
        if ckpt["epoch"] > opt["epochs"]:
            raise ResumeError(f"cannot resume with epochs={opt['epochs']}: trial {number} has trained {ckpt['epoch']} "
                              f"epochs already, and a resume only goes on; give epochs={ckpt['epoch']} (to end the "
                              "run where it stands) or more")
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
    check_writable_folder(Path(opt["experiments_dir"]), "experiments_dir")
    _check_trial_folders(plan)
    return plan


def _processes(n: int) -> str:
    return f"{n} process" if n == 1 else f"{n} processes"


def _check_name_lengths(opt: dict[str, Any], method_cls: type[Distiller], cmd: Command) -> None:
    """The trial folders' names fit the file system (checked first: a name too long fails even a look at it)."""
    if opt["path"]["resume"]:
        check_name_lengths(Path(opt["path"]["resume"]), "path.resume", "give the path of an existing trial folder")
        return
    trial = experiment_folder(opt, method_cls.folder_name(opt)) / f"trial_{max(cmd.trials)}_archived_000000-000000"
    check_name_lengths(trial, "experiment folder", "choose a shorter experiment_name (or experiments_dir)", room=100)


def _check_same_teacher(plan: Plan) -> None:
    """A resume is given the teacher its run trained with: a number that changes with any weight, compared."""
    plan.teacher_fingerprint = float(sum(tensor_fingerprint(t) for t in plan.teacher.state_dict().values()
                                         if t.numel()))
    for ckpt in plan.checkpoints.values():
        recorded = ckpt.get("teacher_fingerprint")
        if recorded is not None and abs(recorded - plan.teacher_fingerprint) > 1e-9 * max(abs(recorded), 1.0):
            raise ResumeError(f"the teacher {plan.opt['path']['teacher']} is not the one this run was trained with "
                              f"(its weights differ); resume with the run's, {ckpt['options']['path']['teacher']}")


def _check_trial_folders(plan: Plan) -> None:
    """Every folder the run writes in can be written: the experiment folder (locks, new trials, archives), each
    trial folder, and a resumed trial's model folder; a resumed trial's files can be rewritten."""
    check_writable_folder(plan.trials[0].paths.folder.parent, "experiment folder",
                          "make it writable, or give this run another experiments_dir or experiment_name")
    for trial in plan.trials:
        folders = (trial.paths.folder, trial.paths.model_dir) if plan.checkpoints else (trial.paths.folder,)
        for folder in folders:
            check_writable_folder(folder, "trial folder", "move it away, or fix its permissions")
        if plan.checkpoints and trial.paths.folder.is_dir():
            check_resumable_files(trial.paths, plan.opt["epochs"])


def _check_method(method_cls: type[Distiller], opt: dict[str, Any], trials: int, device: torch.device,
                  world: int) -> None:
    """The method's options, its models, and whether `trials` of it fit on `device` (nothing is built)."""
    method_cls.check_options(opt, world)
    if opt["batch_size"] < method_cls.min_batch:
        raise OptionsError(f"batch_size {opt['batch_size']} is too small for distill: {opt['distill']}, which trains "
                           f"on batches of {method_cls.min_batch} or more; raise batch_size")
    for key in ("student_model",) + (("teacher_model",) if method_cls.needs_teacher else ()):
        if opt[key] not in model_dict:
            raise OptionsError(f"option '{key}': {unknown_model_message(opt[key])}")
    check_memory(method_cls, opt, opt["teacher_model"] if method_cls.needs_teacher else None, trials, device)


def _new_plan(opt: dict[str, Any], method_cls: type[Distiller], cmd: Command) -> Plan:
    # Trial t runs with seed + t - 1 (the schema keeps room below numpy's limit); without a seed, a drawn one.
    seed = opt["seed"]
    base = seed if seed is not None else distributed.broadcast_int(int.from_bytes(os.urandom(4), "little") % 2**30)
    folder = experiment_folder(opt, method_cls.folder_name(opt))
    trials = [Trial(TrialPaths(folder / f"trial_{t}"), base + t - 1, TrialRNG(base + t - 1)) for t in cmd.trials]
    return Plan(opt, method_cls, trials, {}, folder_states={t.paths.number: folder_state(t.paths) for t in trials})


def _resume_targets(opt: dict[str, Any], cmd: Command, cls: type[Distiller], table: dict[str, Any]
                    ) -> list[TrialPaths]:
    """The trials a resume continues. A run is found by the options that name its folder; a --set of one that a
    resume may change (learning_rate, say) applies to the run found with the file's value, unless a run with
    the new value exists. A run started before folder names held the options is found by the published name."""
    if opt["path"]["resume"]:
        if len(cmd.trials) > 1:
            raise OptionsError("path.resume names one trial; to resume several, give -t with --resume")
        return [resume_target(opt["path"]["resume"])]
    changed = {k: v for k, v in cmd.replaced.items() if k in table and table[k].resume == "change"}
    candidates = [opt, unflatten({**flatten(opt), **changed})] if changed else [opt]
    folders = [experiment_folder(c, cls.folder_name(c)) for c in candidates]
    if not opt["experiment_name"]:
        folders.append(experiment_folder(opt, cls.experiment_name(opt)))
    for folder in folders:
        targets = [TrialPaths(folder / f"trial_{t}") for t in cmd.trials]
        if any(p.checkpoint.is_file() for p in targets):
            return targets
    started = run_changed_by_resume(Path(opt["experiments_dir"]), cmd.trials, opt, set(changed), table) \
        if changed and not opt["experiment_name"] else None  # started with another value than file or command
    return [TrialPaths((started or folders[0]) / f"trial_{t}") for t in cmd.trials]


def _resume_plan(opt: dict[str, Any], cmd: Command, cls: type[Distiller], progress: Progress) -> Plan:
    table = fields(merge_schemas(COMMON, cls.options))
    targets = _resume_targets(opt, cmd, cls, table)
    states = {p.number: folder_state(p) for p in targets}  # before reading: a checkpoint written later shows
    checkpoints = {p.number: load_checkpoint(p.checkpoint) for p in targets if p.checkpoint.is_file()}
    renamed = kept_overrides(cmd.overrides, table)
    if not checkpoints and renamed and not any(p.folder.exists() for p in targets):  # the run meant is elsewhere
        raise ResumeError(f"nothing to resume at {', '.join(str(p.folder) for p in targets)}: no model/checkpoint.pth"
                          f", and --set {' '.join(renamed)} only chooses which run to resume (a resume keeps what "
                          "the run was trained with); to train with a new value, start a new run without --resume")
    if not checkpoints:
        raise ResumeError(missing_run_message(targets[0]) if len(targets) == 1 else
                          f"nothing to resume at {', '.join(str(p.folder) for p in targets)}: no trial there has a "
                          "model/checkpoint.pth; run the command without --resume to start them")
    for paths in targets:  # a trial of the group without a checkpoint starts again, unless it has trained
        if paths.number not in checkpoints and paths.folder.exists() and \
                (not paths.folder.is_dir() or paths.checkpoint.exists() or trained_evidence(paths)):
            raise ResumeError(missing_run_message(paths))
    method_cls = method_class(next(iter(checkpoints.values()))["options"]["distill"])
    schema = merge_schemas(COMMON, method_cls.options)
    resumed = {n: resume_options(ckpt["options"], opt, cmd.overrides, schema) for n, ckpt in checkpoints.items()}
    (number, (run_opt, notes)), *others = resumed.items()
    for other, (other_opt, _) in others:  # one group trains with one set of options (the seed apart)
        if differs := _differences(run_opt, other_opt):
            raise ResumeError(f"trials {number} and {other} of {targets[0].folder.parent} were trained with different "
                              f"options ({differs}); they cannot train on as one group: resume each on its own "
                              f"(-t {number} --resume, then -t {other} --resume)")
    for line in notes:
        progress.say(line)
    base = int(checkpoints[number].get("seed", 0)) - number + 1
    trials = []
    for paths in targets:
        ckpt = checkpoints.get(paths.number)
        if ckpt is None:  # a trial of the group that never finished an epoch: it starts again, from its seed
            trials.append(Trial(paths, base + paths.number - 1, TrialRNG(base + paths.number - 1)))
        else:
            state = RunState(ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"], ckpt["history"])
            trials.append(Trial(paths, int(ckpt.get("seed", 0)), TrialRNG(state=ckpt["rng"]), state))
    return Plan(run_opt, method_cls, trials, checkpoints, folder_states=states)


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The keys two trials' options disagree on (the seed aside), as `key x vs y`."""
    fa, fb = flatten(a), flatten(b)
    keys = [k for k in dict.fromkeys([*fa, *fb]) if k != "seed" and fa.get(k) != fb.get(k)]
    return ", ".join(f"{k} {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys[:3]) + (", ..." if len(keys) > 3 else "")


def resolve_teacher_model(opt: dict[str, Any]) -> dict[str, Any]:
    """`teacher_model: auto` becomes the architecture the teacher checkpoint holds."""
    if opt["teacher_model"] != "auto":
        return opt
    if not opt["path"]["teacher"]:
        raise OptionsError("teacher_model: auto reads the architecture from path.teacher, which is empty; "
                           "set path.teacher to a checkpoint")
    return {**opt, "teacher_model": detect_architecture(opt["path"]["teacher"], opt["n_cls"])}


def load_checked_teacher(opt: dict[str, Any]) -> ZooModel:
    """The teacher, frozen, in eval mode; refused if its weights hold NaN or infinite values or a BatchNorm
    variance below zero (a damaged file would otherwise show as a NaN loss at the first step)."""
    if not opt["path"]["teacher"]:
        raise OptionsError(f"distill: {opt['distill']} needs a teacher: set path.teacher to a checkpoint")
    teacher = load_teacher(opt["path"]["teacher"], opt["teacher_model"], opt["n_cls"])
    for name, value in teacher.state_dict().items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} holds NaN or infinite values in "
                                  f"{name}; it is damaged: fetch or train it again")
        if name.endswith("running_var") and bool((value < 0).any()):
            raise CheckpointError(f"teacher checkpoint {opt['path']['teacher']} holds a negative BatchNorm variance "
                                  f"in {name}; it is damaged: fetch or train it again")
    return teacher
