"""The whole trainer on the default GPU path computes what the eager trainer computes.

    python bench/trainer_equivalence.py [--pair resnet56:resnet20] [--trials 1] [--no-compile]

Two runs of engine.trainer.Trainer from one initial state on the same data (random CIFAR-sized uint8 images
through the on-device loader, cast to float64): the eager path, and the default fast path (torch.compile,
channels_last, and on a GPU the CUDA graph and the side stream). Three epochs with a learning-rate decay
between the first two (the graph is captured again), a smaller last batch each epoch (run eagerly outside the
graph), evaluation after every epoch, checkpoints written to disk. Compared, trial by trial, from the files the
trainer wrote: student, heads, slow copies, BatchNorm statistics, queue and pointer, optimizer state, and every
logged number of every epoch. One JSON line. tests/test_trainer_equivalence.py runs the CPU part.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from harness import SMALL_HEADS, VARIANTS, make_methods, on_device, options, random_arrays, rel

from dataset import GPULoader, GPUTestLoader
from engine.checkpoint import Trial, TrialPaths
from engine.data import TrainBatches
from engine.machine import Speed
from engine.step import group_builder
from engine.trainer import TIMING_KEYS, RunContext, Trainer
from utils.progress import Progress
from utils.rng import TrialRNG


class Cast:
    """A loader whose float tensors are cast (the trainer in float64)."""

    def __init__(self, loader: Any, dtype: torch.dtype):
        self.loader, self.dtype = loader, dtype

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch_seed(self, seed: int) -> None:
        self.loader.set_epoch_seed(seed)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        for x, *rest in self.loader:  # rest: labels, and a training batch's indices
            yield ([v.to(self.dtype) for v in x] if isinstance(x, list) else x.to(self.dtype)), *rest


def train(speed: Speed, folder: Path, pair: str, trials: int, device: torch.device, dtype: torch.dtype,
          images: int, batch: int, epochs: int, heads: dict[str, int], seed: int = 0) -> list[TrialPaths]:
    opt = options(pair, batch, heads, epochs=epochs, lr_decay_epochs=[1], print_freq=2)
    methods = make_methods(opt, trials, device, dtype, seed)
    fmt = torch.channels_last if speed.channels_last else torch.contiguous_format
    methods = [m.to(memory_format=fmt) for m in methods]
    arrays = random_arrays(images, seed)
    first = GPULoader(arrays.train_images, arrays.train_labels, batch, 3, device, channels_last=speed.channels_last)
    loaders = [Cast(loader, dtype) for loader in [first] + [first.sibling() for _ in range(trials - 1)]]
    test = Cast(GPUTestLoader(arrays.test_images, arrays.test_labels, batch, device, channels_last=speed.channels_last),
                dtype)
    run_trials = []
    for k, method in enumerate(methods):
        trial = Trial(TrialPaths(folder / f"trial_{k + 1}"), seed + k, TrialRNG(seed + k))
        trial.paths.folder.mkdir(parents=True)  # made before training, as a run makes it (the trainer saves into it)
        trial.saved = (method.checkpoint_state(), None)
        run_trials.append(trial)
    batches = TrainBatches(loaders, arrays.train_labels)
    context = RunContext(opt, Progress(epochs, len(batches), enabled=False), min_batch=2)
    build = group_builder(methods, run_trials, opt, speed, device, batches)
    Trainer(context, run_trials, build, test).fit()
    return [t.paths for t in run_trials]


def compare(pair: str = "resnet14:resnet8", trials: int = 1, device: str = "cpu", dtype: torch.dtype = torch.float64,
            images: int = 200, batch: int = 64, epochs: int = 3, compile_: bool = True,
            heads: dict[str, int] = SMALL_HEADS) -> dict[str, Any]:
    """`heads`: the CoCoRD sizes (a queue the run's keys wrap around)."""
    device = torch.device(device)
    fast = on_device(replace(VARIANTS["fast_compile"], compile=compile_), device)  # main.py's default
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: train(speed, Path(tmp) / name, pair, trials, device, dtype, images, batch, epochs, heads)
                for name, speed in (("eager", VARIANTS["eager_gpu"]), ("fast", fast))}
        worst: dict[str, float] = {}
        for a, b in zip(runs["fast"], runs["eager"]):
            ca, cb = (torch.load(p.checkpoint, weights_only=True) for p in (a, b))
            entries = {**{f"model.{k}": (ca["model"][k], v) for k, v in cb["model"].items()},
                       **{f"method.{k}": (ca["method"][k], v) for k, v in cb["method"].items()},
                       **{f"momentum.{i}": (ca["optimizer"]["state"][i]["momentum_buffer"], s["momentum_buffer"])
                          for i, s in cb["optimizer"]["state"].items()}}
            for name, (x, y) in entries.items():
                d = rel(x, y) if y.is_floating_point() else float(not torch.equal(x, y))
                worst[name] = max(worst.get(name, 0.0), d)
            ha, hb = (json.loads(p.results.read_text())["history"] for p in (a, b))
            for ea, eb in zip(ha, hb, strict=True):
                for key, value in eb.items():
                    if isinstance(value, float) and key not in TIMING_KEYS:
                        d = abs(ea[key] - value) / max(abs(value), 1e-12)
                        worst[f"history.{key}"] = max(worst.get(f"history.{key}", 0.0), d)
    state = {k: v for k, v in worst.items() if not k.startswith(("history.", "momentum."))}
    logged = {k: v for k, v in worst.items() if k.startswith("history.")}
    top = max(state, key=state.get)
    return {"pair": pair, "trials": trials, "device": str(device), "dtype": str(dtype), "epochs": epochs,
            "images": images, "batch": batch, "fast": fast.as_options(), "max_state_rel_diff": state[top],
            "worst_entry": top, "max_momentum_rel_diff": max(v for k, v in worst.items() if k.startswith("momentum.")),
            "max_logged_rel_diff": max(logged.values()), "worst_logged": max(logged, key=logged.get),
            "finite": all(math.isfinite(v) for v in worst.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet56:resnet20")
    parser.add_argument("--trials", type=int, default=1, help="trials trained together (a group when > 1)")
    parser.add_argument("--images", type=int, default=200, help="training images (200 at batch 64: 3 + a partial)")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.allow_tf32 = False  # strict float maths: TF32 would differ by algorithm choice alone
    torch.backends.cuda.matmul.allow_tf32 = False
    result = compare(args.pair, args.trials, device, images=args.images, compile_=not args.no_compile)
    result["ok"] = result["finite"] and result["max_state_rel_diff"] < 1e-8 and result["max_logged_rel_diff"] < 1e-9
    print(json.dumps(result))


if __name__ == "__main__":
    main()
