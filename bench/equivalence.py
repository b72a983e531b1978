"""The fast path computes the same training as the plain eager step; so do several trials trained as one.

    python bench/equivalence.py [--pair resnet56:resnet20] [--kd 1] [--trials 3]

Step mode: two copies of one CoCoRD module take the same batches of views (made by the on-device augmentation):
one through the plain eager step, the other through the fast path (channels_last, and on a GPU the side stream
and the CUDA graph). Group mode (--trials N): N trials trained as one group (engine/replicas.py: vmap over
stacked states) against each trial trained alone on the same views; on a GPU the group runs the fast path too.
One JSON line: the largest relative difference of each loss per step and of every state entry after the last
step (optimizer state included). float64: early CoCoRD training amplifies rounding (two fp32 runs of one path
that differ only in thread count drift apart by 1e-2 within four steps), so only float64 tells a logic
difference from rounding. tests/test_speed_paths.py and tests/test_trials_equivalence.py run this on the CPU.
"""
from __future__ import annotations

import argparse
import json
from typing import Any

import torch
from harness import SMALL_HEADS, VARIANTS, copies, make_methods, make_step, on_device, options, rel

from dataset import augment


def _views(steps: int, trials: int, batch: int, n_cls: int, device: torch.device, dtype: torch.dtype, seed: int,
           channels_last: bool) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    images = torch.Generator().manual_seed(seed + 1)
    views_gen = torch.Generator(device=device).manual_seed(seed + 2)
    out = []
    for _ in range(steps):
        x = torch.randint(0, 256, (trials, batch, 3, 32, 32), dtype=torch.uint8, generator=images).to(device)
        y = torch.randint(0, n_cls, (trials, batch), generator=images).to(device)
        views = [torch.stack([augment(x[k], views_gen, channels_last=channels_last) for k in range(trials)]).to(dtype)
                 for _ in range(3)]
        out.append((views, y))
    return out


def _train(methods: list, opt: dict[str, Any], speed: Any, device: torch.device, batches: list) -> dict[str, Any]:
    replicas, optimizer, meter, step = make_step(methods, opt, speed, device)
    replicas.train()
    losses = []
    for views, y in batches:
        if len(methods) == 1:
            views, y = [v[0] for v in views], y[0]
        meter.reset()
        step(views, y)
        losses.append([{k: v for k, v in s.items() if k.startswith("loss")} for s in meter.read()])
    return {"losses": losses, "states": [replicas.trial_state(k) for k in range(len(methods))],
            "optimizers": [replicas.optimizer_state(optimizer, k) for k in range(len(methods))]}


def _worst(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Largest differences of `a` (candidate) from `b` (reference), trial by trial."""
    loss = max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12)
               for sa, sb in zip(a["losses"], b["losses"]) for x, y in zip(sa, sb) for k in y)
    first = max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12) for x, y in zip(a["losses"][0], b["losses"][0]) for k in y)
    state = {f"trial{t}.{k}": rel(sa[k], v) for t, (sa, sb) in enumerate(zip(a["states"], b["states"]))
             for k, v in sb.items() if v.is_floating_point()}
    momentum = max((rel(oa["state"][i]["momentum_buffer"], s["momentum_buffer"])
                    for oa, ob in zip(a["optimizers"], b["optimizers"]) for i, s in ob["state"].items()), default=0.0)
    worst = max(state, key=state.get)
    ptr = all(torch.equal(sa["queue_ptr"].cpu(), sb["queue_ptr"].cpu()) for sa, sb in zip(a["states"], b["states"]))
    return {"first_step_loss_rel_diff": first, "max_loss_rel_diff": loss, "max_state_rel_diff": state[worst],
            "worst_entry": worst, "max_momentum_rel_diff": momentum, "queue_ptr_equal": ptr}


def compare_group(pair: str = "resnet14:resnet8", trials: int = 3, device: str = "cpu", steps: int = 3,
                  batch: int = 16, cocord: dict | None = None, loss_kd: float = 0.0, seed: int = 0,
                  dtype: torch.dtype = torch.float64, variant: str = "eager_gpu") -> dict:
    """`trials` trials trained as one group (with `variant`) against each trained alone, eagerly, same views."""
    result = _compare(pair, trials, device, steps, batch, cocord, loss_kd, seed, dtype, variant)
    del result["losses"]
    return result


def compare_paths(pair: str = "resnet20:resnet8", device: str = "cpu", steps: int = 3, batch: int = 16,
                  cocord: dict | None = None, loss_kd: float = 0.0, seed: int = 0,
                  dtype: torch.dtype = torch.float64, variant: str = "fast") -> dict:
    """One trial: the eager step against `variant` (what of it this device runs) from one state, same views."""
    result = _compare(pair, 1, device, steps, batch, cocord, loss_kd, seed, dtype, variant)
    del result["trials"]
    return result


def _compare(pair: str, trials: int, device: str, steps: int, batch: int, cocord: dict | None, loss_kd: float,
             seed: int, dtype: torch.dtype, variant: str) -> dict:
    device = torch.device(device)
    opt = options(pair, batch, SMALL_HEADS if cocord is None else cocord, loss_kd=loss_kd)
    methods = make_methods(opt, trials, device, dtype, seed)
    alone = copies(methods)
    speed = on_device(VARIANTS[variant], device)
    batches = _views(steps, trials, batch, opt["n_cls"], device, dtype, seed, speed.channels_last)
    group = _train(methods, opt, speed, device, batches)
    singles = [_train([m], opt, VARIANTS["eager_gpu"], device, [([v[k:k + 1] for v in views], y[k:k + 1])
                                                                 for views, y in batches]) for k, m in enumerate(alone)]
    reference = {"losses": [[s["losses"][i][0] for s in singles] for i in range(steps)],
                 "states": [s["states"][0] for s in singles], "optimizers": [s["optimizers"][0] for s in singles]}
    return {"pair": pair, "trials": trials, "device": str(device), "dtype": str(dtype), "steps": steps,
            "speed": speed.as_options(), "losses": reference["losses"], **_worst(group, reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pair", default="resnet56:resnet20")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--full-size", action="store_true", help="published head sizes (2048) and key_size")
    parser.add_argument("--kd", type=float, default=0.0, help="loss_kd weight (CoCoRD+KD)")
    parser.add_argument("--trials", type=int, default=0, help="compare a group of this many trials instead")
    parser.add_argument("--variant", default=None, choices=list(VARIANTS),
                        help="the path compared (default fast; with --trials: fast_compile on a GPU)")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Strict fp32 for the comparison: TF32 would differ by algorithm choice alone.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    heads = {} if args.full_size else None
    if args.trials:
        variant = args.variant or ("fast_compile" if device == "cuda" else "eager_gpu")
        result = compare_group(args.pair, args.trials, device, batch=args.batch, cocord=heads, loss_kd=args.kd,
                               variant=variant)
    else:
        result = compare_paths(args.pair, device, batch=args.batch, cocord=heads, loss_kd=args.kd,
                               variant=args.variant or "fast")
        fp32 = compare_paths(args.pair, device, steps=1, batch=args.batch, cocord=heads, loss_kd=args.kd,
                             dtype=torch.float32, variant=args.variant or "fast")
        result["fp32_first_step_loss_rel_diff"] = fp32["first_step_loss_rel_diff"]
    result["ok"] = result["max_loss_rel_diff"] < 1e-9 and result["max_state_rel_diff"] < 1e-8 \
        and result["queue_ptr_equal"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
