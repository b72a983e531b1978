"""tools/: the paper's numbers, the generated paper options files, and the results summary."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from distiller import load_options

SUMMARIZE = ROOT / "tools" / "summarize.py"
PAPER = ROOT / "tools" / "paper_results.yml"
COCORD = "S_resnet20_T_resnet56_cifar100_cocord_ctr1.0cls1.0p4.0"


def paper_entries() -> list[dict]:
    return [e for entries in yaml.safe_load(PAPER.read_text()).values() for e in entries]


def write_run(root: Path, exp: str, trial: str, opts: dict, results: dict | str) -> Path:
    folder = root / exp / trial
    folder.mkdir(parents=True)
    (folder / "options.yml").write_text(yaml.safe_dump(opts))
    text = results if isinstance(results, str) else json.dumps(results)
    (folder / "results.json").write_text(text)
    return folder


def result(student: str, teacher: str, distill: str, best: float, last: float, teacher_acc: float | None,
           finished: bool = True, last_epoch: int = 240) -> dict:
    res = {"finished": finished, "best_acc": best, "best_epoch": 230, "last_acc": last, "last_epoch": last_epoch,
           "last_top5": 91.0, "student_model": student, "teacher_model": teacher, "distill": distill,
           "epochs": 240, "history": [{"epoch": last_epoch, "lr": 5e-5, "val_top1": last}]}
    if teacher_acc is not None:
        res["teacher_acc"] = teacher_acc
    return res


def opts(student: str, teacher: str, distill: str, loss_kd: float = 0.0) -> dict:
    return {"student_model": student, "teacher_model": teacher, "distill": distill, "loss_kd": loss_kd,
            "dataset": "cifar100", "epochs": 240, "learning_rate": 0.05, "loss_ctr": 1.0, "loss_cls": 1.0,
            "loss_pred": 4.0, "cocord": {"T": 0.1, "key_size": 2048}}


# 3 trials of resnet56 -> resnet20 (CoCoRD), chosen so the means and stds are not round numbers.
R20_BEST, R20_LAST = [71.61, 71.93, 71.20], [71.40, 71.88, 71.07]


def make_tree(tmp_path: Path) -> Path:
    root = tmp_path / "experiments"
    for i, (best, last) in enumerate(zip(R20_BEST, R20_LAST), 1):
        write_run(root, COCORD, f"trial_{i}", opts("resnet20", "resnet56", "cocord"),
                  result("resnet20", "resnet56", "cocord", best, last, 72.34))
    write_run(root, COCORD, "trial_4", opts("resnet20", "resnet56", "cocord"),
              result("resnet20", "resnet56", "cocord", 60.0, 59.0, 72.34, finished=False, last_epoch=37))
    write_run(root, COCORD, "trial_1_archived_261126-101010", opts("resnet20", "resnet56", "cocord"),
              result("resnet20", "resnet56", "cocord", 10.0, 10.0, 72.34))
    write_run(root, COCORD, "trial_5", opts("resnet20", "resnet56", "cocord"), '{"finished": true, "best_a')
    write_run(root, "S_vgg8_T_vgg13_cifar100_cocord_ctr1.0cls1.0p4.0", "trial_1", opts("vgg8", "vgg13", "cocord"),
              result("vgg8", "vgg13", "cocord", 74.10, 73.85, 74.60))
    write_run(root, COCORD + "kd1.0", "trial_1", opts("resnet20", "resnet56", "cocord", loss_kd=1.0),
              result("resnet20", "resnet56", "cocord", 72.30, 72.15, 72.34))
    write_run(root, "resnet56_cifar100_vanilla", "trial_1", opts("resnet56", "resnet56", "none"),
              result("resnet56", "resnet56", "none", 72.50, 72.41, None))
    return root


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_tree(tmp_path)


def run_tool(*args: str, columns: int = 200) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": str(columns)}  # the table fits the terminal: wide, so each row is one line
    return subprocess.run([sys.executable, str(SUMMARIZE), *args], capture_output=True, text=True, timeout=30,
                          env=env)


def table_lines(out: str) -> list[list[str]]:
    """The table's rows as cells: pair, method, trials, best, last, paper, last-paper, setting. A block starts
    with its pair's line ('pair  (teacher ...)  data: ...'); cells are split on 2+ spaces."""
    rows, pair = [], None
    for line in out.splitlines():
        if line and not line.startswith(" ") and "  data: " in line:
            pair = line.split("  ")[0]
            continue
        cells = [c.strip() for c in re.split(r" {2,}", line.strip()) if c.strip()]
        if line.startswith("  ") and not line.startswith("   ") and len(cells) >= 6 and \
                re.fullmatch(r"\d+/\d+", cells[1]):
            rows.append([pair, *cells] + (["-"] if len(cells) == 6 else []))
    return rows


def table_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(pair, method) -> the row's other cells (one row per pair and method expected)."""
    rows = {(cells[0], cells[1]): cells[2:] for cells in table_lines(out)}
    assert len(rows) == len(table_lines(out)), out
    return rows


def mean_sd(cell: str) -> tuple[float, float | None]:
    """'71.58 +- 0.37' -> (71.58, 0.37); '71.58' -> (71.58, None)."""
    mean, _, sd = cell.partition(" +- ")
    return float(mean), float(sd) if sd else None


def close(cell: str, value: float) -> bool:
    return math.isclose(float(cell), value, abs_tol=0.0051)


def sample_std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def test_summary_table(tree: Path) -> None:
    proc = run_tool(str(tree))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    rows = table_rows(out)
    assert set(rows) == {("resnet56 -> resnet20", "cocord"), ("resnet56 -> resnet20", "cocord+kd"),
                         ("vgg13 -> vgg8", "cocord"), ("resnet56", "vanilla")}, out
    assert "best: a trial's highest test top-1" in out and "last: its test top-1 after the last epoch" in out

    trials, best, last, paper, diff, setting = rows[("resnet56 -> resnet20", "cocord")]
    assert (setting, trials) == ("-", "3/4")  # 3 finished of 4; the archived and damaged trials are not counted
    assert all(close(str(a), b) for a, b in zip(mean_sd(best), (sum(R20_BEST) / 3, sample_std(R20_BEST))))
    assert all(close(str(a), b) for a, b in zip(mean_sd(last), (sum(R20_LAST) / 3, sample_std(R20_LAST))))
    assert paper == "71.74" and close(diff, sum(R20_LAST) / 3 - 71.74)
    assert "resnet56 -> resnet20  (teacher 72.34 measured)  data: CIFAR-100" in out

    trials, best, last, paper, diff, _ = rows[("vgg13 -> vgg8", "cocord")]
    assert trials == "1/1" and mean_sd(best)[1] is None and mean_sd(last) == (73.85, None) and paper == "73.99"
    assert close(diff, 73.85 - 73.99)
    assert rows[("resnet56 -> resnet20", "cocord+kd")][3] == "72.09"  # the paper's cocord_kd
    vanilla = rows[("resnet56", "vanilla")]
    assert vanilla[3] == "72.34" and close(vanilla[4], 72.41 - 72.34)  # a network alone: the paper's teacher_acc
    assert {cells[-1] for cells in rows.values()} == {"-"}  # all at the published options

    unfinished = out.split("Unfinished trials")[1].split("Damaged trials")[0]
    assert f"{COCORD}/trial_4: epoch 37/240" in unfinished
    damaged = out.split("Damaged trials")[1].strip().splitlines()
    assert len(damaged) == 2 and damaged[1].startswith(f"  {COCORD}/trial_5: results.json is not valid JSON")
    assert "1 archived trial folder(s) skipped" in out


def test_summary_json(tree: Path) -> None:
    proc = run_tool(str(tree), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["archived_skipped"] == 1
    assert [Path(r["path"]).name for r in data["unfinished"]] == ["trial_4"]
    assert [Path(r["path"]).name for r in data["damaged"]] == ["trial_5"]
    group = next(g for g in data["groups"] if g["method"] == "cocord" and g["student"] == "resnet20")
    assert (group["n"], group["n_unfinished"]) == (3, 1) and math.isclose(group["last_std"], sample_std(R20_LAST))
    assert [Path(p).name for p in group["unfinished_trials"]] == ["trial_4"]


def test_importable_without_torch(tree: Path) -> None:
    code = ("import sys; sys.path.insert(0, 'tools'); import summarize, runs; "
            f"found, notes = runs.collect_runs({str(tree)!r}); assert 'torch' not in sys.modules; "
            "print(len(found), summarize.summarize.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "9"


@pytest.mark.parametrize("make", [False, True])
def test_empty_folder_exits_2(tmp_path: Path, make: bool) -> None:
    root = tmp_path / "experiments"
    if make:
        root.mkdir()
    proc = run_tool(str(root))
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("error: ") and ("no runs found" if make else "not found") in proc.stderr


def test_paper_results_hold_both_tables() -> None:
    tables = yaml.safe_load(PAPER.read_text())
    assert [len(rows) for rows in tables.values()] == [7, 6]
    columns = {"teacher", "student", "teacher_acc", "student_acc", "kd", "crd", "cocord", "cocord_kd"}
    assert all(set(row) == columns for rows in tables.values() for row in rows)
    row = next(r for r in tables["same_style"] if (r["teacher"], r["student"]) == ("resnet56", "resnet20"))
    assert (row["cocord"], row["cocord_kd"], row["crd"]) == (71.74, 72.09, 71.16)


# CRD's train_student.py trains exactly these students at lr 0.01; the paper's baseline columns are CRD's.
LOW_LR_STUDENTS = {"MobileNetV2", "ShuffleV1", "ShuffleV2"}


def test_paper_options_files() -> None:
    entries = {(e["teacher"], e["student"]): e for e in paper_entries()}
    assert len(entries) == 13
    files = sorted((ROOT / "options" / "paper").glob("*.yml"))
    assert {f.name for f in files} == {f"{t}_{s}.yml" for t, s in entries}
    for path in files:
        opt = load_options(path)
        pair = (opt["teacher_model"], opt["student_model"])
        assert pair in entries, path
        assert opt["path"]["teacher"] == f"./t_model/{pair[0]}/ckpt_epoch_240.pth"
        assert opt["distill"] == "cocord" and opt["loss_kd"] == 0.0
        e = entries[pair]
        assert f"CoCoRD {e['cocord']:.2f}" in path.read_text().splitlines()[0]
        assert f"CoCoRD+KD {e['cocord_kd']:.2f}" in path.read_text().splitlines()[0]
    # CRD's learning rate for its small students, said where it is set; 0.05 (the template's) for the rest.
    base = load_options(ROOT / "options" / "train_student.yml")
    assert base["learning_rate"] == 0.05
    low = [p for p in files if load_options(p)["student_model"] in LOW_LR_STUDENTS]
    assert len(low) == 5
    for path in files:
        opt = load_options(path)
        expected = 0.01 if opt["student_model"] in LOW_LR_STUDENTS else 0.05
        assert opt["learning_rate"] == expected, path
        if path in low:
            lines = path.read_text().splitlines()
            at = next(i for i, line in enumerate(lines) if line.startswith("learning_rate:"))
            assert "CRD's train_student.py" in " ".join(lines[at - 2:at]), path
    # Everything else is the published template, unchanged.
    resume = base["path"]["resume"]
    for path in files:
        opt = load_options(path)
        assert opt["path"]["resume"] == resume, path
        for key in ("student_model", "teacher_model", "path", "learning_rate"):
            opt.pop(key), base.pop(key, None)
        assert opt == base, path


def test_paper_options_up_to_date() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_paper_options.py"), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout


def test_paper_options_of_every_baseline() -> None:
    """options/paper/<method>/<pair>.yml: each baseline's defaults on every pair of the paper's tables it can be
    built for, the low learning rate where CRD uses it, mdistiller's per-pair DKD beta, the paper's KD/CRD number."""
    from distiller import METHODS
    entries = {(e["teacher"], e["student"]): e for e in paper_entries()}
    folders = sorted(p for p in (ROOT / "options" / "paper").iterdir() if p.is_dir())
    assert {f.name for f in folders} >= set(METHODS) - {"cocord", "none"} | {"crd_kd"}
    for folder in folders:
        files = sorted(folder.glob("*.yml"))
        assert len(files) == (6 if folder.name == "fsp" else 13), folder  # FSP: only where the channels agree
        template = load_options(ROOT / "options" / f"train_{folder.name}.yml")
        for path in files:
            opt = load_options(path)
            pair = (opt["teacher_model"], opt["student_model"])
            assert pair in entries and path.name == f"{pair[0]}_{pair[1]}.yml", path
            assert opt["distill"] == template["distill"] and opt.get("loss_kd") == template.get("loss_kd"), path
            assert opt["learning_rate"] == (0.01 if pair[1] in LOW_LR_STUDENTS else 0.05), path
            if folder.name in ("kd", "crd"):
                assert f"{entries[pair][folder.name]:.2f}" in path.read_text().splitlines()[0], path
    dkd = ROOT / "options" / "paper" / "dkd"
    assert load_options(dkd / "resnet56_resnet20.yml")["dkd"]["beta"] == 2.0  # mdistiller's per-pair beta
    assert load_options(dkd / "vgg13_vgg8.yml")["dkd"]["beta"] == 6.0
    assert load_options(dkd / "resnet32x4_ShuffleV1.yml")["dkd"]["beta"] == 8.0
