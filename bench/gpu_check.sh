#!/usr/bin/env bash
# Every GPU check, in two parts that each fit one device call (at most 10 minutes a command; a lease is 15
# minutes in all, start-up included). Each step runs under its own time limit, so that one hang cannot eat
# the rest, and prints what it measured as soon as it has it. JSON lines go to OUT_DIR and to the console.
#   bash bench/gpu_check.sh speed  [OUT_DIR]   # trials as a batch: images/s of 1, 2 and 5 trials   (~6 min)
#   bash bench/gpu_check.sh checks [OUT_DIR]   # float64 equivalences and main.py with two trials     (~5 min)
#   bash bench/gpu_check.sh methods [OUT_DIR]  # every baseline's images/s beside KD's                 (~5 min)
#   bash bench/gpu_check.sh all    [OUT_DIR]   # all three, on a machine without a per-command limit
# Run from the repository root; the project need not be installed (PYTHONPATH is set here).
set -u
part=${1:-all}
out=${2:-${OUT:-/tmp/gpu_check}}; mkdir -p "$out"
case $part in speed|checks|methods|all) ;; *) echo "usage: bash bench/gpu_check.sh speed|checks|methods|all [OUT_DIR]" >&2; exit 2;; esac
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
step() { local limit=$1 name=$2; shift 2; echo "== $name"; timeout "$limit" "$@" 2>&1 | tee "$out/$name.txt" | tail -40;
         echo "{\"step\": \"$name\", \"rc\": ${PIPESTATUS[0]}, \"at_s\": $SECONDS}" | tee -a "$out/steps.jsonl"; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

if [[ $part == speed || $part == all ]]; then
  # One trial (the single-trial fast path with compile) and groups of 2 and 5, one process, fp32, batch 64 per
  # trial; then where each one's time goes (kernels per step, the costliest kernels).
  step 290 speed_trials_r56 $py bench/speed.py --pairs resnet56:resnet20 --trials 1 2 5 --steps 200 --warmup 30 --profile 10
  step 130 speed_trials_wrn $py bench/speed.py --pairs wrn_40_2:wrn_16_2 --trials 1 5 --steps 150 --warmup 30
  step 150 speed_trials_shufflev2 $py bench/speed.py --pairs resnet32x4:ShuffleV2 --trials 1 5 --steps 150 --warmup 30
fi

if [[ $part == checks || $part == all ]]; then
  # float64: a group of three on the fast path (CUDA graph, compile, channels_last) against each trial alone
  step 200 equivalence_group $py bench/equivalence.py --pair resnet56:resnet20 --batch 64 --trials 3 --variant fast_compile
  # main.py end to end with the defaults: two trials together, two epochs (an lr decay: the graph re-captured)
  work=$(mktemp -d)
  $py - "$work" <<'PY'
import sys, torch
from dataset import write_demo_cifar
from models import build_model
write_demo_cifar(sys.argv[1] + "/data", num_classes=100, train_per_class=50, test_per_class=10)
torch.save({"epoch": 240, "model": build_model("resnet56").state_dict(), "best_acc": 0.0}, sys.argv[1] + "/t.pth")
PY
  common="data_folder=$work/data path.teacher=$work/t.pth experiments_dir=$work/exp print_freq=20 seed=0"
  step 150 main_two_trials $py main.py -opt options/train_student.yml -t 1-2 --set $common epochs=2 lr_decay_epochs=[1]
  $py -c "import glob, json, sys
for path in sorted(glob.glob(sys.argv[1] + '/exp/*/trial_*/results.json')):
    r = json.load(open(path))
    print(json.dumps({**{k: r[k] for k in ('trial', 'finished', 'best_acc', 'last_acc')},
                      **{key: [h[key] for h in r['history']] for key in ('images_per_s', 'seconds', 'test_seconds')}}))" \
      "$work" | tee -a "$out/steps.jsonl"
  # the whole default trainer (compile, graph re-captured after the lr decay, eager last batch) against eager
  step 180 trainer_equivalence $py bench/trainer_equivalence.py --pair resnet56:resnet20
fi

if [[ $part == methods || $part == all ]]; then
  # Every method's main-stage step, one trial, CUDA graph and channels_last without compile (compiling each would
  # not fit the time), beside KD's in the same process.
  methods="cocord hint attention similarity correlation vid rkd pkt abound factor fsp nst crd dkd"
  step 290 speed_methods $py bench/speed.py --pairs resnet32x4:resnet8x4 --methods $methods --group-variant fast \
    --steps 100 --warmup 20
fi
