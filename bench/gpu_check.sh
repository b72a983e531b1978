#!/usr/bin/env bash
# Every GPU check in one call (a device lease is short), each step under its own time limit so that one
# hang cannot eat the rest. JSON lines go to $OUT (default /tmp/gpu_check) and to the console.
#   bash bench/gpu_check.sh [OUT_DIR]        (on a GPU machine, from the repository root, project installed)
set -u
out=${1:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() { local limit=$1 name=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt" | tail -40;
         echo "{\"step\": \"$name\", \"rc\": ${PIPESTATUS[0]}}" | tee -a "$out/steps.jsonl"; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
# float64 equivalence: the fast step, a group of trials (fast, compiled) against each trial alone, the trainer
step 120 equivalence $py bench/equivalence.py --pair resnet56:resnet20 --batch 64
step 240 equivalence_group $py bench/equivalence.py --pair resnet56:resnet20 --batch 64 --trials 3 --variant fast_compile
step 240 trainer_equivalence $py bench/trainer_equivalence.py --pair resnet56:resnet20
# speed: one trial and groups of 2 and 5 in one process (aggregate images/s), fp32, batch 64 per trial
step 300 speed_trials_r56 $py bench/speed.py --pairs resnet56:resnet20 --trials 1 2 5 --steps 200 --warmup 30
step 240 speed_trials_more $py bench/speed.py --pairs wrn_40_2:wrn_16_2 resnet32x4:ShuffleV2 --trials 1 5 --steps 150 --warmup 30
# main.py end to end with the defaults: two trials together, two epochs, a kill and a resume
work=$(mktemp -d)
$py - "$work" <<'PY'
import sys, torch
from dataset import write_demo_cifar
from models import build_model
write_demo_cifar(sys.argv[1] + "/data", num_classes=100, train_per_class=50, test_per_class=10)
torch.save({"epoch": 240, "model": build_model("resnet56").state_dict(), "best_acc": 0.0}, sys.argv[1] + "/t.pth")
PY
common="data_folder=$work/data path.teacher=$work/t.pth experiments_dir=$work/exp print_freq=20 seed=0"
step 240 main_two_trials $py main.py -opt options/train_student.yml -t 1-2 --set $common epochs=2 lr_decay_epochs=[1]
$py -c "import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + '/exp/*/trial_*/results.json')):
    r = json.load(open(path))
    print(json.dumps({**{k: r[k] for k in ('trial', 'finished', 'best_acc', 'last_acc')},
                      'images_per_s': [h['images_per_s'] for h in r['history']]}))" "$work" | tee -a "$out/steps.jsonl"
