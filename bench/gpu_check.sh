#!/usr/bin/env bash
# Every GPU check in one call (the device lease is short): versions, fast-vs-eager equivalence,
# the real trainer through main.py (CUDA graph, lr change, partial batch, resume), then speed.
# Usage on a GPU machine: bash bench/gpu_check.sh [OUT_DIR]
set -u
out=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

echo "== equivalence (float64, fast path vs eager)"
$py bench/equivalence.py --pair resnet56:resnet20 --batch 64 | tee "$out/equivalence.jsonl"
$py bench/equivalence.py --pair resnet32x4:resnet8x4 --batch 64 --kd 1 | tee -a "$out/equivalence.jsonl"

echo "== trainer end to end on the GPU"
work=$(mktemp -d)
$py - "$work" <<'PY'
import sys, torch
sys.path.insert(0, ".")
from dataset import write_demo_cifar
from models import build_model
write_demo_cifar(sys.argv[1] + "/data", num_classes=10, train_per_class=500, test_per_class=100)
torch.save({"epoch": 240, "model": build_model("resnet56").state_dict(), "best_acc": 0.0}, sys.argv[1] + "/t.pth")
PY
common="data_folder=$work/data path.teacher=$work/t.pth experiments_dir=$work/exp num_workers=2 print_freq=20 seed=0"
$py main.py -opt options/train_student.yml --set $common epochs=2 lr_decay_epochs=[1] 2>&1 | tail -8
echo "rc=${PIPESTATUS[0]}"
$py main.py -opt options/train_student.yml --set $common epochs=3 lr_decay_epochs=[1] --resume 2>&1 | tail -4
$py -c "import json,glob; r=json.load(open(glob.glob('$work/exp/*/trial_1/results.json')[0])); print(json.dumps({k: r[k] for k in ('finished','best_acc','last_acc','last_epoch')}), [h['epoch'] for h in r['history']], [h['images_per_s'] for h in r['history']])"

echo "== speed"
$py bench/speed.py --steps 200 --warmup 20 --variants eager eager_gpu fast_nostream fast | tee "$out/speed.jsonl"
echo "== speed with torch.compile (capped)"
timeout 150 $py bench/speed.py --pairs resnet56:resnet20 --steps 200 --warmup 20 --variants fast_compile | tee -a "$out/speed.jsonl"
