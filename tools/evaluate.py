"""Test accuracy of any checkpoint: the architecture is read from the checkpoint itself.

    python tools/evaluate.py CHECKPOINT [--data-folder DIR] [--dataset cifar100|imagenet]
                             [--n-cls N] [--arch NAME] [--batch-size 256] [--gpu N | --cpu] [--json]

Any checkpoint this project wrote (model/best.pth, checkpoint.pth, ckpt_epoch_*.pth), a CRD/RepDistiller or
mdistiller teacher, a published CoCoRD checkpoint or a bare state_dict. A checkpoint inside a trial folder
(trial_N/model/*.pth) is evaluated on the data of its run: data_folder, dataset and n_cls come from
trial_N/options.yml unless given here (elsewhere: ./data_cifar100, cifar100, the checkpoint's head). Prints one
line: architecture, top-1, top-5, loss, images. A missing file, a file that is not a checkpoint, weights that
are not finite, or missing data: one line on stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from dataset import DataError, GPUTestLoader, build_imagenet_loaders, load_cifar100
from dataset.constants import CIFAR_FOLDER
from engine.data import DeviceBatches
from engine.replicas import evaluate
from models import CheckpointError, load_teacher, match_architectures, read_state_dict
from utils.trialfiles import TrialFileRefused, read_trial_options

DEFAULTS = {"data_folder": "./data_cifar100", "dataset": "cifar100", "n_cls": None}


class UsageError(ValueError):
    """A problem with the command line or the machine, reported as one line."""


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """data_folder, dataset and n_cls: from the command line, else from the run's options.yml beside a checkpoint
    in a trial folder (trial_N/model/X.pth), else DEFAULTS; 'source' names the options file used, if any."""
    given = {"data_folder": args.data_folder, "dataset": args.dataset, "n_cls": args.n_cls}
    folder = Path(args.checkpoint).resolve().parent
    options = folder.parent / "options.yml" if folder.name == "model" else folder / "options.yml"
    if all(v is not None for v in given.values()) or not os.path.isfile(options):
        return {k: DEFAULTS[k] if v is None else v for k, v in given.items()} | {"source": None}
    try:
        run = read_trial_options(options)
    except TrialFileRefused as err:
        raise UsageError(f"the run's options {options.parent}/{err}; fix it, or give --data-folder, --dataset "
                         "and --n-cls") from None
    found = {k: run.get(k, DEFAULTS[k]) if v is None else v for k, v in given.items()}
    if found["dataset"] not in ("cifar100", "imagenet") or not isinstance(found["data_folder"], str) or not (
            found["n_cls"] is None or (isinstance(found["n_cls"], int) and found["n_cls"] > 0)):
        raise UsageError(f"{options} does not give a dataset, data_folder and n_cls this tool can use; give "
                         "--data-folder, --dataset and --n-cls")
    return found | {"source": str(options)}


def pick_architecture(path: str, n_cls: int | None, arch: str | None, n_cls_from: str = "--n-cls"
                      ) -> tuple[str, int, list[str]]:
    """(architecture, classes, every candidate) for the checkpoint; the zoo is matched on keys and shapes."""
    matches = match_architectures(read_state_dict(path))
    if not matches:
        raise CheckpointError(f"checkpoint {path} matches no model in the zoo (keys and shapes of none of them)")
    found = ", ".join(f"{name} with {n} classes" for name, n in matches)
    fitting = [(name, n) for name, n in matches if (n_cls is None or n == n_cls) and (arch is None or name == arch)]
    if not fitting:
        asked = " and ".join(x for x in (arch and f"--arch {arch}", n_cls and f"{n_cls_from} {n_cls}") if x)
        raise CheckpointError(f"checkpoint {path} is a {found}, not what {asked} asks for")
    return fitting[0][0], fitting[0][1], [name for name, _ in fitting]


def pick_device(gpu: int | None, cpu: bool) -> torch.device:
    if cpu or (gpu is None and not torch.cuda.is_available()):  # not asked: the first GPU if there is one
        return torch.device("cpu")
    if gpu is not None and (not torch.cuda.is_available() or not 0 <= gpu < torch.cuda.device_count()):
        raise UsageError(f"--gpu {gpu}: no such CUDA device ({torch.cuda.device_count()} visible); use --cpu")
    return torch.device(f"cuda:{gpu or 0}")


def load_test_batches(dataset: str, folder: str, batch_size: int, device: torch.device, n_cls: int,
                      workers: int) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int]:
    """The test set in order, as (images, labels) batches on `device`, and its size."""
    if dataset == "imagenet":
        _, val = build_imagenet_loaders(folder, batch_size, 1, workers, device.type == "cuda")
        labels, count = len(val.dataset.classes), len(val.dataset)
        batches: Iterable = DeviceBatches(val, device, channels_last=False)
    else:
        arrays = load_cifar100(folder, download=False)
        # The labels used, not the meta file's names: a subset (e.g. 10 of 100 classes) fits a 10-class head.
        labels, count = int(arrays.test_labels.max()) + 1, int(arrays.test_labels.shape[0])
        batches = GPUTestLoader(arrays.test_images, arrays.test_labels, batch_size, device)
    if labels > n_cls:  # labels beyond the head would be an index error deep inside the loss
        raise DataError(f"{folder} has labels up to {labels - 1} but the checkpoint's head has {n_cls} classes")
    return batches, count


def run(args: argparse.Namespace) -> dict[str, Any]:
    path = args.checkpoint
    if not os.path.exists(path):  # os.path: False, not an error, for a name the file system cannot hold
        raise UsageError(f"checkpoint {path} does not exist; give a .pth file, e.g. "
                         "experiments/<experiment>/trial_1/model/best.pth")
    data = run_settings(args)
    n_cls_from = "--n-cls" if args.n_cls is not None else f"n_cls of {data['source']}"
    arch, n_cls, candidates = pick_architecture(path, data["n_cls"], args.arch, n_cls_from)
    device = pick_device(args.gpu, args.cpu)
    origin = "--data-folder" if args.data_folder is not None else \
        f"the data_folder of {data['source']}" if data["source"] else "the default"
    folder = data["data_folder"]
    if data["dataset"] == "cifar100" and not os.path.isdir(Path(folder).expanduser() / CIFAR_FOLDER):
        raise UsageError(f"CIFAR-100 not found: no {CIFAR_FOLDER}/ folder in {folder} ({origin}); give "
                         f"--data-folder the folder that holds {CIFAR_FOLDER}/")
    batches, count = load_test_batches(data["dataset"], folder, args.batch_size, device, n_cls, args.workers)
    model = load_teacher(path, arch, n_cls)
    bad = [k for k, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds weights that are not finite (NaN or infinity, in {len(bad)} "
                              f"tensor(s), first {bad[0]}): the run diverged before it was saved; evaluate an "
                              "earlier checkpoint, e.g. model/best.pth")
    scores = evaluate(model.to(device), batches)
    return {"checkpoint": str(path), "architecture": arch, "candidates": candidates, "n_cls": n_cls,
            "dataset": data["dataset"], "data_folder": folder, "options": data["source"],
            "images": count, "device": str(device), "top1": scores["top1"], "top5": scores["top5"],
            "loss": scores["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test accuracy of a checkpoint (architecture detected).")
    parser.add_argument("checkpoint", help="a .pth file")
    parser.add_argument("--data-folder", default=None,
                        help="CIFAR-100: the folder holding cifar-100-python/; ImageNet: the one holding train/, val/ "
                        "(default: the run's data_folder for a checkpoint in a trial folder, else ./data_cifar100)")
    parser.add_argument("--dataset", default=None, choices=("cifar100", "imagenet"),
                        help="default: the run's dataset, else cifar100")
    parser.add_argument("--n-cls", type=int, default=None,
                        help="classes of the head (default: the run's n_cls, else what the checkpoint holds; "
                        "given, it must match)")
    parser.add_argument("--arch", default=None, help="architecture, when several fit (default: detected)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4, help="ImageNet loader processes")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, default=None, help="CUDA device index (default: 0 if there is a GPU)")
    where.add_argument("--cpu", action="store_true", help="evaluate on the CPU")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.n_cls is not None and args.n_cls < 1):
        print("error: --batch-size and --n-cls must be positive", file=sys.stderr)
        return 2
    if args.workers < 0:  # DataLoader's ValueError, a traceback, on ImageNet
        print("error: --workers must be 0 (load in this process) or more", file=sys.stderr)
        return 2
    try:
        out = run(args)
    except (CheckpointError, DataError, UsageError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    else:
        other = f" (also fits: {', '.join(out['candidates'][1:])})" if len(out["candidates"]) > 1 else ""
        print(f"{out['architecture']}{other}  {out['dataset']} test  top-1 {out['top1']:.2f}%  "
              f"top-5 {out['top5']:.2f}%  loss {out['loss']:.4f}  {out['images']} images  ({out['device']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
