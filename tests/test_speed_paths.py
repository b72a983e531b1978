"""The fast path's pieces that run on a CPU compute what the plain eager step computes.

bench/equivalence.py feeds both paths the same views made by the on-device augmentation code; on the
CPU the fast path is channels_last tensors and the foreach moving averages (the CUDA graph and the
side stream need a GPU: the same script checks them there, see bench/results/). float64, because fp32
training of a few steps amplifies rounding beyond any useful tolerance (see compare_paths).
"""
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from equivalence import compare_paths  # noqa: E402


@pytest.mark.parametrize("pair,loss_kd", [("resnet14:resnet8", 0.0), ("resnet8x4:resnet8", 1.0),
                                          ("wrn_16_2:wrn_16_1", 0.0)])
def test_fast_path_matches_eager(pair, loss_kd):
    result = compare_paths(pair, device="cpu", steps=3, batch=8, loss_kd=loss_kd)
    assert result["max_loss_rel_diff"] < 1e-12
    assert result["max_state_rel_diff"] < 1e-10, result["worst_entry"]
    assert result["queue_ptr_equal"]


def speed_bench(*args: str) -> list[dict]:
    """bench/speed.py on the CPU with tiny settings: its JSON lines."""
    import json
    import subprocess
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "speed.py"), "--pairs", "resnet8:resnet8", *args,
                           "--warmup", "1", "--batch", "8", "--images", "64", "--workers", "0"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]


def test_speed_bench_runs_on_the_cpu():
    """bench/speed.py end to end as a smoke test: one JSON line per pair, with images/s per variant."""
    line = speed_bench("--variants", "eager", "eager_gpu", "--steps", "2")[-1]
    assert line["pair"] == "resnet8:resnet8"
    assert line["eager"]["images_per_s"] > 0 and line["eager_gpu"]["images_per_s"] > 0


def test_speed_bench_trials_and_profile():
    """`--trials 1 2 --profile 1`: a line per measurement as soon as it is done, then the pair's line with the
    group's images/s relative to one trial, and where each step's time went."""
    lines = speed_bench("--trials", "1", "2", "--profile", "1", "--steps", "2")
    # each run's timing, then its profile, as soon as each is known; the pair's line last
    assert [(x.get("run"), "profile" in x) for x in lines] == [("trials_1", False), ("trials_1", True),
                                                               ("trials_2", False), ("trials_2", True), (None, False)]
    pair = lines[-1]
    assert set(pair["trials_speedup_vs_1"]) == {"trials_1", "trials_2"}
    for key in ("trials_1", "trials_2"):
        profile = pair[key]["profile"]
        assert profile["ops_per_step"] > 0 and profile["ms_per_step"] > 0
        assert len(profile["top"]) > 0 and all(len(row) == 3 for row in profile["top"])


def test_speed_bench_measures_methods_beside_kd():
    """`--methods`: each method measured in the same run as KD, with its ratio to KD's images/s."""
    line = speed_bench("--methods", "crd", "hint", "--steps", "1")[-1]
    assert set(line["methods_vs_kd"]) == {"kd", "crd", "hint"} and line["methods_vs_kd"]["kd"] == 1.0
    assert all(line[f"method_{m}"]["images_per_s"] > 0 for m in ("kd", "crd", "hint"))
