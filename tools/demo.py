"""The offline demo: make a learnable dataset in the real cifar-100-python format, train a small teacher,
then distil a student from it with CoCoRD (both plain `main.py` runs on the CPU), then summarise the two runs
and draw their figures into figs/.

    python tools/demo.py          (or: make demo)
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from dataset import write_demo_cifar
from distiller import load_options, method_class
from engine.checkpoint import experiment_folder

ROOT = Path(__file__).resolve().parents[1]

STEPS = [("teacher", "options/demo_teacher.yml"), ("student (CoCoRD)", "options/demo_student.yml")]


def main() -> int:
    start = time.perf_counter()
    data = ROOT / "data_demo"
    if not (data / "cifar-100-python").is_dir():
        write_demo_cifar(str(data), num_classes=10, train_per_class=300, test_per_class=100, seed=0)
        print(f"generated the demo dataset in {data}/cifar-100-python (10 classes, 3000 + 1000 images)")
    rows = []
    for role, options in STEPS:
        print(f"\n== {role}: python main.py -opt {options}", flush=True)
        done = subprocess.run([sys.executable, "main.py", "-opt", options], cwd=ROOT)
        if done.returncode != 0:
            print(f"demo stopped: the {role} run failed (exit status {done.returncode})", file=sys.stderr)
            return done.returncode
        opt = load_options(ROOT / options)
        folder = ROOT / experiment_folder(opt, method_class(opt["distill"]).folder_name(opt)) / "trial_1"
        results = json.loads((folder / "results.json").read_text())
        rows.append((role, opt["student_model"], results))
    print(f"\n{'':18}{'model':10}{'best top-1':>12}{'last top-1':>12}   (chance: 10%)")
    for role, model, r in rows:
        print(f"{role:18}{model:10}{r['best_acc']:>11.2f}%{r['last_acc']:>11.2f}%")
    for tool in ("summarize.py", "plot.py"):
        print(f"\n== python tools/{tool} experiments/demo", flush=True)
        subprocess.run([sys.executable, f"tools/{tool}", "experiments/demo"], cwd=ROOT)
    tensorboard = Path(sys.executable).parent / "tensorboard"
    print(f"\ndone in {time.perf_counter() - start:.0f} s. TensorBoard: {tensorboard} --logdir experiments/demo")
    print(NEXT)
    return 0


NEXT = """
What the demo made: data_demo/ (the dataset, in CIFAR-100's own file format), experiments/demo/ (the two runs:
options, logs, TensorBoard events, checkpoints, results.json), figs/ (the figures). Its options files are
options/demo_teacher.yml and options/demo_student.yml. Next, on the same data (CPU, under a minute each):
  python main.py -opt options/demo_student.yml -t 2-3                           # two more trials, together
  python main.py -opt options/demo_student.yml --resume --set epochs=6          # trial 1 on to 6 epochs
  python main.py -opt options/demo_student.yml --set distill=kd loss_cls=0.1 loss_kd=0.9   # the KD baseline
  python main.py -opt options/demo_student.yml --set epochs=1 cocord.key_size=256         # a smaller run
  python tools/summarize.py experiments/demo                                    # the table, trials pooled
(source .venv/bin/activate first.) The real runs: README.md, "The real run"."""


if __name__ == "__main__":
    sys.exit(main())
