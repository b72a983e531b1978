"""From an options file to a finished run: check everything, then build, then write, then train.

Order matters for users: every check that can fail on their input (options, model names, teacher,
data, resume target) runs before the experiment folder is created or an old one archived.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dataset import DataError
from distiller import method_class
from engine import distributed
from engine.checkpoint import ResumeError, load_checkpoint, resolve_resume, set_rng_state
from engine.data import build_data
from engine.evaluation import evaluate
from engine.step import build_optimizer, compile_method
from engine.trainer import RunState, Trainer, TrainingDiverged
from models import CheckpointError, build_model, load_teacher, model_dict, unknown_model_message
from options.schema import OptionsError, dump_options
from utils.progress import Progress

USER_ERRORS = (OptionsError, CheckpointError, DataError, ResumeError)
# Options that define what is trained: a resume must not change them.
STRUCTURAL = ("student_model", "teacher_model", "distill", "dataset", "n_cls", "batch_size", "cocord",
              "loss_ctr", "loss_cls", "loss_pred", "loss_kd", "kd_T")


def select_device(opt: dict[str, Any], say: Any) -> torch.device:
    if distributed.is_distributed() and torch.cuda.is_available():
        return torch.device("cuda", distributed.local_rank())
    if opt["gpu"] is None:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        say("warning: no CUDA GPU found; training on the CPU (slow; set gpu: null to silence this)")
        return torch.device("cpu")
    if opt["gpu"] >= torch.cuda.device_count():
        raise OptionsError(f"option 'gpu' is {opt['gpu']} but this machine has {torch.cuda.device_count()} GPU(s)")
    return torch.device("cuda", opt["gpu"])


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CUDA generators too
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def _check_resume(ckpt: dict[str, Any], opt: dict[str, Any], say: Any) -> None:
    old = ckpt["options"]
    for key in STRUCTURAL:
        if old.get(key) != opt.get(key):
            raise ResumeError(f"cannot resume: '{key}' was {old.get(key)!r} in the checkpoint's run but is "
                              f"{opt.get(key)!r} now; resume with the options the run was started with")
    changed = [k for k in opt if k not in STRUCTURAL and old.get(k) != opt[k] and k != "path"]
    if changed:
        say(f"resuming with changed options: {', '.join(f'{k}={opt[k]!r}' for k in changed)}")
    if ckpt["epoch"] >= opt["epochs"]:
        raise ResumeError(f"the run at epoch {ckpt['epoch']} is already finished (epochs: {opt['epochs']}); "
                          f"raise epochs to continue it")


def _archive(folder: Path) -> None:
    stamp = time.strftime("%y%m%d-%H%M%S")
    folder.rename(folder.with_name(f"{folder.name}_archived_{stamp}"))


def _speed_settings(opt: dict[str, Any], device: torch.device) -> dict[str, bool]:
    """The fast path applies on a GPU; on the CPU everything is the published eager path."""
    s, gpu = opt["speed"], device.type == "cuda"
    single = not distributed.is_distributed()
    return {"gpu_loader": gpu and s["loader"] in ("auto", "gpu") and opt["dataset"] == "cifar100",
            "cuda_graph": gpu and s["cuda_graph"] and single, "compile": gpu and s["compile"],
            "channels_last": gpu and s["channels_last"], "streams": gpu and s["streams"], "amp": s["amp"]}


def run(opt: dict[str, Any], trial: int, resume: bool, quiet: bool = False) -> dict[str, Any]:
    """Train as `opt` (from options.schema.load_options) says; returns what results.json holds."""
    rank, world = distributed.setup(opt)
    say = (lambda text: print(text, flush=True)) if rank == 0 and not quiet else (lambda text: None)
    method_cls = method_class(opt["distill"])
    method_cls.check_options(opt, world)
    for key in ("student_model",) + (("teacher_model",) if method_cls.needs_teacher else ()):
        if opt[key] not in model_dict:
            raise OptionsError(f"option '{key}': {unknown_model_message(opt[key])}")
    device = select_device(opt, say)
    if opt["sync_bn"] and device.type != "cuda":
        raise OptionsError("sync_bn needs CUDA GPUs (SyncBatchNorm); set sync_bn: false to train on the CPU")
    if opt["sync_bn"] and world == 1:
        say("note: sync_bn has no effect in a single process (launch with torchrun to use several GPUs)")
    speed = _speed_settings(opt, device)
    if opt["seed"] is not None:
        seed_everything(opt["seed"], device)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    distributed.share_seed(opt)

    folder = Path(opt["experiments_dir"]) / method_cls.experiment_name(opt) / f"trial_{trial}"
    ckpt = None
    if resume or opt["path"]["resume"]:
        ckpt_path = resolve_resume(opt["path"]["resume"] or str(folder))
        ckpt = load_checkpoint(ckpt_path)
        _check_resume(ckpt, opt, say)
        if ckpt_path.parent.name == "model":
            folder = ckpt_path.parent.parent

    student = build_model(opt["student_model"], opt["n_cls"])
    teacher = None
    if method_cls.needs_teacher:
        if not opt["path"]["teacher"]:
            raise OptionsError(f"distill: {opt['distill']} needs a teacher: set path.teacher to a checkpoint")
        teacher = load_teacher(opt["path"]["teacher"], opt["teacher_model"], opt["n_cls"])
    if opt["sync_bn"] and world > 1:
        student = torch.nn.SyncBatchNorm.convert_sync_batchnorm(student)
    method = method_cls(student, teacher, opt)
    memory_format = torch.channels_last if speed["channels_last"] else torch.contiguous_format
    method.to(device=device, memory_format=memory_format)
    train_batches, test_batches = build_data(opt, method.n_views, device, speed["gpu_loader"],
                                             speed["channels_last"], rank, world)
    optimizer = build_optimizer(method, opt)

    state = RunState()
    if ckpt is not None:
        method.load_checkpoint_state(ckpt["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = RunState(ckpt["epoch"], ckpt["best_acc"], ckpt["best_epoch"], ckpt["history"])
    elif rank == 0:
        if folder.exists():
            _archive(folder)
        folder.mkdir(parents=True)
    distributed.barrier()

    for line in method.describe():
        say(line)
    extra: dict[str, Any] = {}
    reduce_eval = distributed.all_reduce_sum if getattr(test_batches, "sharded", False) else None
    if teacher is not None:
        extra["teacher_acc"] = evaluate(teacher, test_batches, reduce_eval)["top1"]
        say(f"teacher {opt['teacher_model']} test accuracy: {extra['teacher_acc']:.2f}%")
    if speed["compile"]:
        compile_method(method)
    if speed["streams"] and hasattr(method, "side_stream"):
        method.side_stream = torch.cuda.Stream(device)
    ddp_method, sync = distributed.wrap(method, opt, device)

    if rank == 0:
        dump_options(opt, folder / "options.yml")
        (folder / "network_summary.txt").write_text(_summary(method))
    if ckpt is not None:
        set_rng_state(ckpt["rng"])  # last: everything above may draw random numbers
        say(f"resuming {folder} after epoch {ckpt['epoch']}")
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(folder), purge_step=state.epoch + 1 if ckpt is not None else None) \
        if rank == 0 else None
    progress = Progress(opt["epochs"], len(train_batches), enabled=rank == 0 and not quiet)
    say(f"training {opt['student_model']} ({opt['distill']}) on {device} for {opt['epochs']} epochs; "
        f"logs in {folder}")
    trainer = Trainer(method, optimizer, train_batches, test_batches, opt, device, folder, writer, progress, state,
                      cuda_graph=speed["cuda_graph"], amp=speed["amp"], ddp_method=ddp_method, is_main=rank == 0,
                      extra_results=extra, sync_epoch_end=sync, reduce_eval=reduce_eval)
    try:
        results = trainer.fit()
    finally:
        if writer is not None:
            writer.close()
    say(f"best test top-1 {results['best_acc']:.2f}% (epoch {results['best_epoch']}), last "
        f"{results['last_acc']:.2f}% (epoch {results['last_epoch']}); results in {folder / 'results.json'}")
    return results


def _summary(method: torch.nn.Module) -> str:
    lines = []
    for name, module in method.named_children():
        n = sum(p.numel() for p in module.parameters())
        trained = sum(p.numel() for p in module.parameters() if p.requires_grad)
        lines.append(f"{name}: {n:,} parameters ({trained:,} trained)")
    return "\n".join(lines) + "\n\n" + repr(method) + "\n"


__all__ = ["run", "USER_ERRORS", "TrainingDiverged"]
