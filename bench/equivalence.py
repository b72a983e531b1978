"""The fast path computes the same training as the plain eager step.

Two copies of one CoCoRD module take the same three batches of views (made by the GPU augmentation
code): one through the plain eager step (contiguous tensors, one stream), the other through the fast
path (channels_last, side stream and CUDA graph where there is a GPU). Prints, as one JSON line, the
largest relative difference of each loss per step and of every state entry after the last step.

    python bench/equivalence.py [--pair resnet56:resnet20]

tests/test_speed_paths.py runs the same comparison on the CPU.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dataset import augment  # noqa: E402
from distiller import CoCoRD  # noqa: E402
from engine.config import build_options  # noqa: E402
from engine.step import GraphedStep, build_optimizer, train_step  # noqa: E402
from models import build_model  # noqa: E402
from utils.meter import DeviceMeter  # noqa: E402

SMALL_HEADS = {"key_size": 256, "hidden_dim": 128, "embedding_dim": 64, "pred_dim": 32}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def compare_paths(pair: str = "resnet20:resnet8", device: str = "cpu", steps: int = 3, batch: int = 16,
                  cocord: dict | None = None, loss_kd: float = 0.0, seed: int = 0,
                  dtype: torch.dtype = torch.float64) -> dict:
    """Both paths from one initial state on the same views; their largest relative differences.

    float64 by default: early CoCoRD training amplifies rounding (two fp32 runs of one path that
    differ only in thread count drift apart by 1e-2 within four steps), so only float64 can tell a
    logic difference from rounding; fp32 agreement is reported for the first step."""
    device = torch.device(device)
    teacher_name, student_name = pair.split(":")
    torch.manual_seed(seed)
    opt = build_options({"student_model": student_name, "teacher_model": teacher_name, "batch_size": batch,
                         "cocord": SMALL_HEADS if cocord is None else cocord, "loss_kd": loss_kd})
    reference = CoCoRD(build_model(student_name), build_model(teacher_name), opt).to(device=device, dtype=dtype)
    fast = copy.deepcopy(reference).to(memory_format=torch.channels_last)
    gpu = device.type == "cuda"
    if gpu:
        fast.side_stream = torch.cuda.Stream(device)
    runs = {}
    for name, method in (("reference", reference), ("fast", fast)):
        optimizer = build_optimizer(method.trainable_parameters(), opt)
        meter = DeviceMeter(method.accuracy_outputs, device)
        step = lambda v, y, m=method, o=optimizer, me=meter: train_step(m, o, v, y, me)  # noqa: E731
        if gpu and name == "fast":
            step = GraphedStep(step, batch, warmup_steps=1)  # step 1 warm-up, 2 capture + replay, 3 replay
        method.train()
        images = torch.Generator().manual_seed(seed + 1)
        views_gen = torch.Generator(device=device).manual_seed(seed + 2)
        per_step = []
        for _ in range(steps):
            x = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=images).to(device)
            y = torch.randint(0, opt["n_cls"], (batch,), generator=images).to(device)
            views = [augment(x, views_gen, channels_last=name == "fast").to(dtype) for _ in range(3)]
            meter.reset()
            step(views, y)
            per_step.append({k: v for k, v in meter.read().items() if k.startswith("loss")})
        runs[name] = (per_step, method.state_dict())
    (ref_steps, ref_state), (fast_steps, fast_state) = runs["reference"], runs["fast"]
    loss_diff = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(fast_steps, ref_steps) for k in a)
    state_diff = {k: rel(fast_state[k], v) for k, v in ref_state.items() if v.is_floating_point()}
    worst = max(state_diff, key=state_diff.get)
    return {"pair": pair, "device": str(device), "dtype": str(dtype), "steps": steps, "graph": gpu,
            "losses": ref_steps, "first_step_loss_rel_diff": max(
                abs(fast_steps[0][k] - ref_steps[0][k]) / max(abs(ref_steps[0][k]), 1e-12) for k in ref_steps[0]),
            "max_loss_rel_diff": loss_diff, "max_state_rel_diff": state_diff[worst], "worst_entry": worst,
            "queue_ptr_equal": bool(torch.equal(fast_state["queue_ptr"].cpu(), ref_state["queue_ptr"].cpu()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet56:resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--full-size", action="store_true", help="published head sizes (2048) and key_size")
    parser.add_argument("--kd", type=float, default=0.0, help="loss_kd weight (CoCoRD+KD)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Strict fp32 for the comparison: TF32 convolutions would differ by algorithm choice alone.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    heads = {} if args.full_size else None
    result = compare_paths(args.pair, device, batch=args.batch, cocord=heads, loss_kd=args.kd)
    result["ok"] = result["max_loss_rel_diff"] < 1e-9 and result["max_state_rel_diff"] < 1e-8 \
        and result["queue_ptr_equal"]
    fp32 = compare_paths(args.pair, device, steps=1, batch=args.batch, cocord=heads, loss_kd=args.kd,
                         dtype=torch.float32)
    result["fp32_first_step_loss_rel_diff"] = fp32["first_step_loss_rel_diff"]
    result["fp32_first_step_state_rel_diff"] = fp32["max_state_rel_diff"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
