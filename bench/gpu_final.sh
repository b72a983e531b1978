#!/usr/bin/env bash
# The second GPU call (short lease): the headline pair with its baseline in the same run, the default
# trainer (compile on) through main.py, then torch.compile on the two other issue pairs.
set -u
out=${1:-${OUT:-/tmp/gpu_final}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,clocks.sm --format=csv,noheader
$py bench/speed.py --pairs resnet56:resnet20 --steps 300 --warmup 30 --variants eager fast fast_compile | tee "$out/speed.jsonl"
work=$(mktemp -d)
$py - "$work" <<'PY'
import sys, torch
sys.path.insert(0, ".")
from dataset import write_demo_cifar
from models import build_model
write_demo_cifar(sys.argv[1] + "/data", num_classes=10, train_per_class=500, test_per_class=100)
torch.save({"epoch": 240, "model": build_model("resnet56").state_dict(), "best_acc": 0.0}, sys.argv[1] + "/t.pth")
PY
timeout 150 $py main.py -opt options/train_student.yml --set data_folder=$work/data path.teacher=$work/t.pth \
  experiments_dir=$work/exp epochs=2 lr_decay_epochs=[1] 2>&1 | tail -5 | tee "$out/e2e.txt"
timeout 120 $py bench/speed.py --pairs resnet32x4:resnet8x4 wrn_40_2:wrn_16_2 --steps 300 --warmup 30 \
  --variants fast fast_compile | tee -a "$out/speed.jsonl"
