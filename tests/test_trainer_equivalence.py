"""The whole trainer's default fast path against its eager path, on the CPU (bench/trainer_equivalence.py).

What runs here of the GPU default: torch.compile and channels_last (the CUDA graph and the side stream need a
GPU: the script checks them there), through three epochs with a learning-rate decay, a smaller last batch,
evaluation and checkpoints on disk, for one trial and for a group of two; float64, compared from the files the
trainer wrote.
"""
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from harness import SMALL_HEADS  # noqa: E402
from trainer_equivalence import compare  # noqa: E402


@pytest.mark.slow
@pytest.mark.parametrize("trials,images", [(1, 40), (2, 32)])  # one trial (its parts compiled, and a smaller
def test_compiled_trainer_equals_eager_trainer(trials, images):  # last batch), a group (its whole
    # step compiled). Batches of 16 (float64 convolutions on the CPU cost in proportion to the images), and a
    # queue of 64 keys, which the 120 (96) keys of three epochs still wrap around, as bench's 256 do at batch 64.
    result = compare("resnet8:resnet8", trials=trials, images=images, batch=16, epochs=3, compile_=True,
                     heads={**SMALL_HEADS, "key_size": 64})
    assert result["fast"]["compile"] and result["fast"]["channels_last"]
    assert result["finite"]
    assert result["max_state_rel_diff"] < 1e-10, result["worst_entry"]
    assert result["max_momentum_rel_diff"] < 1e-9
    assert result["max_logged_rel_diff"] < 1e-10, result["worst_logged"]
