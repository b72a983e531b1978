"""Several trials trained as one group compute what each computes alone (float64, CPU).

Three trials of a pair, stacked and run through one vmap of the method's own step (engine/replicas.py), against
each trial trained alone on the same views: three steps, the third wrapping the queue around. Grouped
convolutions add up in another order than three separate ones, and early CoCoRD training amplifies rounding,
so equal here means 1e-10 relative in float64; a mistake in the step shows as 1e-3 or more.
"""
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from equivalence import compare_group  # noqa: E402

HEADS = {"key_size": 30, "hidden_dim": 32, "embedding_dim": 16, "pred_dim": 8}  # batch 12: 0, 12, 24 -> wraps


@pytest.mark.parametrize("student", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV2"])
def test_each_trial_of_a_group_equals_its_single_run(student):
    result = compare_group(f"resnet8:{student}", trials=3, steps=3, batch=12, cocord=HEADS, loss_kd=1.0)
    assert result["queue_ptr_equal"]
    assert result["max_loss_rel_diff"] < 1e-10
    # weights, BatchNorm statistics, heads, slow copies and queue of every trial
    assert result["max_state_rel_diff"] < 1e-10, result["worst_entry"]
    # SGD's momentum holds raw gradients, whose near-cancelling entries (a bias before a BatchNorm) carry more
    # rounding than any weight.
    assert result["max_momentum_rel_diff"] < 1e-9
