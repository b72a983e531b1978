"""Training speed of CoCoRD in images per second: the published-style eager step against the fast path, and
several trials trained together against one.

    python bench/speed.py                                   # the three issue pairs, on the GPU if there is one
    python bench/speed.py --pairs resnet56:resnet20 --variants eager fast fast_compile
    python bench/speed.py --pairs resnet56:resnet20 --trials 1 2 5   # trials as a batch, fast_compile
    python bench/speed.py --pairs resnet56:resnet20 --trials 1 5 --profile 10   # and where a step's time goes
    python bench/speed.py --pairs resnet32x4:resnet8x4 --methods hint crd dkd   # each method beside KD

Every measurement runs in this one process, on the same card, after warm-up, with a random teacher (speed does
not depend on the weights) on random uint8 data of CIFAR's size, through the trainer's own step (engine.step:
statistics included). Variants (bench/harness.py):
  eager          torchvision loader (CPU augmentation, worker processes), plain eager step: the published path
  eager_gpu      the GPU loader, plain eager step
  fast           GPU loader + channels_last + side stream + one CUDA graph per step
  fast_nostream  the same without the side stream
  fast_compile   fast + torch.compile of every module (main.py's default on a GPU)
With --trials, each N is trained as one group (trials stacked, engine/replicas.py) with --group-variant, beside
one trial of that variant: aggregate images/s (N trials x batch per step), its ratio to one trial, peak memory.
With --methods, each method (its defaults, one trial, --group-variant) is measured beside KD in the same run:
its images/s and its ratio to KD's (the init stage of a two-stage method is not timed: its main stage is).
With --profile N, N more steps of each run go through torch.profiler: operators per step and the costliest ones.
A JSON line per measurement as soon as it is done, then one per pair. On a CPU it is a smoke test (few steps,
small data).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator
from itertools import islice

import torch
from harness import VARIANTS, make_batches, make_methods, make_step, on_device, options, random_arrays

from dataset.cifar import CifarArrays
from engine.data import TrainBatches
from engine.step import Step

DEFAULT_PAIRS = ["resnet56:resnet20", "resnet32x4:resnet8x4", "wrn_40_2:wrn_16_2"]
Stream = Iterator[tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]]  # one training step's batch each


def measure(pair: str, variant: str, trials: int, arrays: CifarArrays, device: torch.device, steps: int,
            warmup: int, batch: int, workers: int, profile: int = 0,
            report: Callable[[dict], None] = lambda part: None, method: str = "cocord") -> dict:
    """images/s of `trials` trials of `variant` after warm-up; `report` gets the timing as soon as it is done,
    then (with `profile` steps) where a step's time goes: a profiler that hangs cannot take the timing with it."""
    speed = on_device(VARIANTS[variant], device)
    opt = options(pair, batch, distill=method)
    methods = make_methods(opt, trials, device, train_labels=arrays.train_labels)
    _, _, _, step = make_step(methods, opt, speed, device)
    batches = make_batches(arrays, trials, speed, device, batch, workers, type(methods[0]).n_views)
    with_index = type(methods[0]).needs_index
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stream = full_batches(batches, batch, trials, with_index)
    t_start = time.perf_counter()
    for views, labels, index in islice(stream, warmup):
        step(views, labels, index)
    sync()
    t0 = time.perf_counter()
    for views, labels, index in islice(stream, steps):
        step(views, labels, index)
    sync()
    seconds = time.perf_counter() - t0
    result = {"images_per_s": round(trials * steps * batch / seconds, 1), "warmup_s": round(t0 - t_start, 1)}
    if device.type == "cuda":
        result["peak_mem_MB"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    report(result)
    if profile:
        try:
            result["profile"] = profile_steps(step, stream, profile, device)
        except Exception as err:  # noqa: BLE001 - the timing stands without it
            result["profile"] = {"error": f"{type(err).__name__}: {err}"[:300]}
        report({"profile": result["profile"]})
    return result


def full_batches(batches: TrainBatches, batch: int, trials: int, with_index: bool = False) -> Stream:
    """Full batches only (the measured rate is the steady state), epoch after epoch, without end; the samples'
    indices only for a method that takes them."""
    done = 0
    while True:
        batches.set_epoch([done + k for k in range(trials)])
        for views, labels, index in batches:
            if labels.shape[-1] == batch:
                done += 1
                yield views, labels, index if with_index else None


def profile_steps(step: Step, stream: Stream, steps: int, device: torch.device, top: int = 12) -> dict:
    """Where a step's time goes (after the timed run), per step: `ops_per_step` (on a GPU the kernels, CUDA graph
    replays included; on a CPU the aten operators, nested ones too) and the costliest of them by their own time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with torch_profile(activities=activities) as prof:
        for views, labels, index in islice(stream, steps):
            step(views, labels, index)
        if gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    if gpu:  # the kernels themselves (an operator's own device time would count its kernels a second time)
        timed = [e for e in events if e.device_type.name == "CUDA"]
        own = {e.key: e.self_device_time_total for e in timed}
        kernels = sum(e.count for e in timed)
    else:
        own = {e.key: e.self_cpu_time_total for e in events if e.self_cpu_time_total > 0}
        kernels = sum(e.count for e in events if e.key.startswith("aten::"))
    count = {e.key: e.count for e in events}
    ranked = sorted(own, key=own.get, reverse=True)[:top]
    return {"steps": steps, "ops_per_step": round(kernels / steps, 1),
            "ms_per_step": round(sum(own.values()) / steps / 1000, 3),
            "top": [[key[:90], round(own[key] / steps / 1000, 4), round(count[key] / steps, 1)] for key in ranked]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=DEFAULT_PAIRS, help="teacher:student pairs")
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="default: eager fast (none with --trials)")
    parser.add_argument("--trials", nargs="+", type=int, default=[], help="group sizes, e.g. 1 2 5")
    parser.add_argument("--group-variant", default=None, choices=list(VARIANTS),
                        help="variant of the --trials runs (default fast_compile on a GPU, eager_gpu on a CPU)")
    parser.add_argument("--methods", nargs="+", default=[], metavar="DISTILL",
                        help="methods to measure beside KD (their defaults, one trial, --group-variant)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 300 on GPU, 5 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 30 GPU, 2 CPU)")
    parser.add_argument("--batch", type=int, default=64, help="images per step and trial")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--images", type=int, default=None, help="dataset size (default 50000 GPU, 512 CPU)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after each timed run, profile this many steps: kernels per step, costliest kernels")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    steps, warmup = args.steps or (300 if gpu else 5), args.warmup or (30 if gpu else 2)
    variants = args.variants if args.variants is not None else ([] if args.trials or args.methods else
                                                                 ["eager", "fast"])
    group_variant = args.group_variant or ("fast_compile" if gpu else "eager_gpu")
    arrays = random_arrays(args.images or (50000 if gpu else 512))
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    runs = [(v, v, 1, "cocord") for v in variants] + [(f"trials_{n}", group_variant, n, "cocord")
                                                         for n in args.trials]
    runs += [(f"method_{m}", group_variant, 1, m) for m in dict.fromkeys(["kd", *args.methods] if args.methods else [])]
    for pair in args.pairs:
        line = {"pair": pair, "device": name, "batch": args.batch, "steps": steps, "torch": torch.__version__}
        if args.trials or args.methods:
            line["group_variant"] = group_variant
        for key, variant, trials, method in runs:
            # each measurement as soon as it is done: a run stopped by a time limit keeps what it measured
            def report(part: dict, key: str = key, pair: str = pair) -> None:
                print(json.dumps({"pair": pair, "run": key, **part}), flush=True)
            try:
                line[key] = measure(pair, variant, trials, arrays, device, steps, warmup, args.batch, args.workers,
                                    args.profile, report, method)
            except Exception as err:  # noqa: BLE001 - report and go on to the next measurement
                line[key] = {"error": f"{type(err).__name__}: {err}"[:300]}
                report(line[key])
        rates = {k: line[k]["images_per_s"] for k, *_ in runs if "images_per_s" in line.get(k, {})}
        if "eager" in rates and len(rates) > 1:
            best = max((k for k in rates if not k.startswith(("trials_", "method_"))), key=rates.get)
            line["fastest"], line["speedup_vs_eager"] = best, round(rates[best] / rates["eager"], 2)
            line["minutes_240_epochs_fastest"] = round(240 * 50000 / rates[best] / 60, 1)
        if "method_kd" in rates:
            line["methods_vs_kd"] = {k.removeprefix("method_"): round(rates[k] / rates["method_kd"], 2) for k in rates
                                     if k.startswith("method_")}
        if "trials_1" in rates:
            line["trials_speedup_vs_1"] = {k: round(rates[k] / rates["trials_1"], 2) for k in rates
                                           if k.startswith("trials_")}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
