"""Test accuracy of any checkpoint: the architecture is read from the checkpoint itself.

    python tools/evaluate.py CHECKPOINT [--data-folder ./data_cifar100] [--dataset cifar100|imagenet]
                             [--n-cls N] [--arch NAME] [--batch-size 256] [--gpu N | --cpu] [--json]

Any checkpoint this project wrote (model/best.pth, checkpoint.pth, ckpt_epoch_*.pth), a CRD/RepDistiller or
mdistiller teacher, a published CoCoRD checkpoint or a bare state_dict. Prints one line: architecture,
top-1, top-5, loss, images. A missing file, a file that is not a checkpoint, or missing data: one line on
stderr, exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from dataset import DataError, GPUTestLoader, build_imagenet_loaders, load_cifar100
from engine.evaluation import evaluate
from models import CheckpointError, load_teacher, match_architectures, read_state_dict


class UsageError(ValueError):
    """A problem with the command line or the machine, reported as one line."""


def pick_architecture(path: str, n_cls: int | None, arch: str | None) -> tuple[str, int, list[str]]:
    """(architecture, classes, every candidate) for the checkpoint; the zoo is matched on keys and shapes."""
    matches = match_architectures(read_state_dict(path))
    if not matches:
        raise CheckpointError(f"checkpoint {path} matches no model in the zoo (keys and shapes of none of them)")
    found = ", ".join(f"{name} with {n} classes" for name, n in matches)
    fitting = [(name, n) for name, n in matches if (n_cls is None or n == n_cls) and (arch is None or name == arch)]
    if not fitting:
        asked = " and ".join(x for x in (arch and f"--arch {arch}", n_cls and f"--n-cls {n_cls}") if x)
        raise CheckpointError(f"checkpoint {path} is a {found}, not what {asked} asks for")
    return fitting[0][0], fitting[0][1], [name for name, _ in fitting]


def pick_device(gpu: int | None, cpu: bool) -> torch.device:
    if cpu:
        return torch.device("cpu")
    if gpu is None:  # not asked: the first GPU if there is one
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available() or gpu >= torch.cuda.device_count():
        raise UsageError(f"--gpu {gpu}: no such CUDA device ({torch.cuda.device_count()} visible); use --cpu")
    return torch.device(f"cuda:{gpu}")


def _on(device: torch.device, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> Iterator:
    for images, labels in batches:
        yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


def load_test_batches(dataset: str, folder: str, batch_size: int, device: torch.device, n_cls: int,
                 workers: int) -> tuple[Iterable[tuple[torch.Tensor, torch.Tensor]], int]:
    """The test set in order, as (images, labels) batches on `device`, and its size."""
    if dataset == "imagenet":
        _, val = build_imagenet_loaders(folder, batch_size, 1, workers, device.type == "cuda")
        labels, count = len(val.dataset.classes), len(val.dataset)
        batches: Iterable = _on(device, val)
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
    arch, n_cls, candidates = pick_architecture(path, args.n_cls, args.arch)
    device = pick_device(args.gpu, args.cpu)
    batches, count = load_test_batches(args.dataset, args.data_folder, args.batch_size, device, n_cls, args.workers)
    model = load_teacher(path, arch, n_cls).to(device)
    scores = evaluate(model, batches)
    return {"checkpoint": str(path), "architecture": arch, "candidates": candidates, "n_cls": n_cls,
            "dataset": args.dataset, "data_folder": args.data_folder, "images": count, "device": str(device),
            "top1": scores["top1"], "top5": scores["top5"], "loss": scores["loss"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test accuracy of a checkpoint (architecture detected).")
    parser.add_argument("checkpoint", help="a .pth file")
    parser.add_argument("--data-folder", default="./data_cifar100",
                        help="CIFAR-100: the folder holding cifar-100-python/; ImageNet: the one holding train/, val/")
    parser.add_argument("--dataset", default="cifar100", choices=("cifar100", "imagenet"))
    parser.add_argument("--n-cls", type=int, default=None,
                        help="classes of the head (default: what the checkpoint holds; given, it must match)")
    parser.add_argument("--arch", default=None, help="architecture, when several fit (default: detected)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=4, help="ImageNet loader processes")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--gpu", type=int, default=None, help="CUDA device index (default: 0 if there is a GPU)")
    where.add_argument("--cpu", action="store_true", help="evaluate on the CPU")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or (args.n_cls is not None and args.n_cls < 1):
        print("--batch-size and --n-cls must be positive", file=sys.stderr)
        return 2
    try:
        out = run(args)
    except (CheckpointError, DataError, UsageError) as err:
        print(f"evaluate: {' '.join(str(err).split())}", file=sys.stderr)
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
