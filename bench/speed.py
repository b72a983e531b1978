"""Training speed of CoCoRD, images per second: the published-style eager step against the fast path.

    python bench/speed.py                          # the three issue pairs, on the GPU if there is one
    python bench/speed.py --pairs resnet56:resnet20 --steps 300 --variants eager fast fast_compile

Every variant runs in this one process, on the same card, after warm-up, with a random teacher (speed
does not depend on the weights) on a random uint8 dataset of CIFAR's size. Variants:
  eager         torchvision loader (CPU augmentation, worker processes), plain eager step: the published path
  eager_gpu     the GPU loader, plain eager step (what the loader alone gives)
  fast          GPU loader + channels_last + side stream + one CUDA graph per step (our default)
  fast_nostream the same without the side stream
  fast_compile  fast + torch.compile of every module
One JSON line per pair: images/s of each variant, the speed-up of `fast` over `eager`, peak GPU memory,
and the 240-epoch estimate. On a CPU it runs as a smoke test (few steps, small dataset).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset import GPULoader  # noqa: E402
from dataset.cifar import CifarArrays  # noqa: E402
from distiller import CoCoRD  # noqa: E402
from engine.config import build_options  # noqa: E402
from engine.data import DeviceBatches, GPUBatches  # noqa: E402
from engine.step import GraphedStep, build_optimizer, compile_method, train_step  # noqa: E402
from models import build_model  # noqa: E402

DEFAULT_PAIRS = ["resnet56:resnet20", "resnet32x4:resnet8x4", "wrn_40_2:wrn_16_2"]
VARIANTS = {  # name -> (gpu loader, channels_last, side stream, cuda graph, compile)
    "eager": (False, False, False, False, False),
    "eager_gpu": (True, False, False, False, False),
    "fast": (True, True, True, True, False),
    "fast_nostream": (True, True, False, True, False),
    "fast_compile": (True, True, True, True, True),
}


def make_method(teacher: str, student: str, device: torch.device, channels_last: bool, seed: int = 0) -> CoCoRD:
    torch.manual_seed(seed)
    opt = build_options({"student_model": student, "teacher_model": teacher})
    method = CoCoRD(build_model(student), build_model(teacher).eval(), opt)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return method.to(device=device, memory_format=fmt).train()


def random_arrays(n: int, seed: int = 0) -> CifarArrays:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (n,), generator=g)
    return CifarArrays(images, labels, images[: n // 5], labels[: n // 5], [str(i) for i in range(100)])


def batches_for(variant: tuple, arrays: CifarArrays, device: torch.device, batch: int, workers: int):
    gpu_loader, channels_last = variant[0], variant[1]
    if gpu_loader:
        return GPUBatches(GPULoader(arrays.train_images, arrays.train_labels, batch, 3, device,
                                    channels_last=channels_last))
    from dataset import build_torchvision_loaders
    train, _ = build_torchvision_loaders(arrays, batch, 3, workers, pin_memory=device.type == "cuda")
    return DeviceBatches(train, device, channels_last)


def measure(pair: str, name: str, arrays: CifarArrays, device: torch.device, steps: int, warmup: int,
            batch: int, workers: int) -> dict:
    teacher, student = pair.split(":")
    variant = VARIANTS[name]
    _, channels_last, streams, graph, compiled = variant
    method = make_method(teacher, student, device, channels_last)
    optimizer = build_optimizer(method, {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 5e-4})
    if compiled:
        compile_method(method)
    if streams:
        method.side_stream = torch.cuda.Stream(device)
    step = lambda views, labels: train_step(method, optimizer, views, labels)  # noqa: E731
    if graph:
        step = GraphedStep(step, batch)
    batches = batches_for(variant, arrays, device, batch, workers)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    done, t0, t_compile = 0, None, time.perf_counter()
    while done < warmup + steps:
        batches.set_epoch(0)
        for views, labels in batches:
            if labels.shape[0] != batch:
                continue  # full batches only: the measured rate is the steady state
            step(views, labels)
            done += 1
            if done == warmup:
                sync()
                t0 = time.perf_counter()
                t_compile = t0 - t_compile
            if done == warmup + steps:
                break
    sync()
    seconds = time.perf_counter() - t0
    result = {"images_per_s": round(steps * batch / seconds, 1), "warmup_s": round(t_compile, 1)}
    if device.type == "cuda":
        result["peak_mem_MB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="teacher:student pairs")
    parser.add_argument("--variants", nargs="+", default=["eager", "fast"], choices=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 300 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 30 GPU, 2 CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=None, help="dataset size (default 50000 GPU, 512 CPU)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps, warmup = args.steps or (300 if gpu else 5), args.warmup or (30 if gpu else 2)
    arrays = random_arrays(args.images or (50000 if gpu else 512))
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    for pair in args.pairs:
        line = {"pair": pair, "device": name, "batch": args.batch, "steps": steps, "torch": torch.__version__}
        for variant in args.variants:
            if not gpu and VARIANTS[variant][3]:
                continue  # CUDA graphs need a GPU
            try:
                line[variant] = measure(pair, variant, arrays, device, steps, warmup, args.batch, args.workers)
            except Exception as err:  # noqa: BLE001 - report and go on to the next variant
                line[variant] = {"error": f"{type(err).__name__}: {err}"[:300]}
        rates = {v: line[v]["images_per_s"] for v in args.variants if "images_per_s" in line.get(v, {})}
        if "eager" in rates and len(rates) > 1:
            best = max(rates, key=rates.get)
            line["fastest"] = best
            line["speedup_vs_eager"] = round(rates[best] / rates["eager"], 2)
            line["minutes_240_epochs_fastest"] = round(240 * 50000 / rates[best] / 60, 1)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
