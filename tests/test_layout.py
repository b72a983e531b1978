"""The project's layout rules, checked on the tracked files (fast: no training)."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

MAX_LINES = 300
# Spelled in two halves, so that this file does not itself hold what it looks for.
FORBIDDEN_MENTIONS = ("SP" + "EC", "../" + "sha" "red")  # split: this file must not match itself
# The maintainers' CI entry point (it names the folder CI clones beside the project); not project code.
NOT_OURS = (".ci/",)


def tracked() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("not a git checkout")
    return [name for name in done.stdout.split("\0") if name and (ROOT / name).is_file()]


def text_of(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary


def offenders(pattern: str, names: list[str]) -> list[str]:
    found = []
    for name in names:
        text = text_of(name) or ""
        found += [f"{name}:{i}: {line.strip()[:80]}" for i, line in enumerate(text.splitlines(), 1)
                  if re.search(pattern, line)]
    return found


def test_the_engine_never_names_a_method_part():
    names = [n for n in tracked() if n.startswith(("engine/", "utils/")) and n.endswith(".py")]
    assert names
    found = offenders(r"queue|ctr_logits", names)
    assert not found, "\n".join(found)


def test_no_file_outside_tests_is_over_300_lines():
    long = []
    for name in tracked():
        if name.startswith("tests/") or name.startswith(NOT_OURS) or not name.endswith((".py", ".sh", ".md", ".yml")):
            continue
        text = text_of(name)
        if text is not None and len(text.splitlines()) > MAX_LINES:
            long.append(f"{name}: {len(text.splitlines())} lines")
    assert not long, "\n".join(long)


def test_no_sys_path_insert_outside_tests():
    names = [n for n in tracked() if not n.startswith("tests/")]
    found = offenders(r"sys\.path\.insert", names)
    assert not found, "\n".join(found)


def test_no_tracked_file_mentions_the_build_material():
    names = [n for n in tracked() if not n.startswith(NOT_OURS)]
    pattern = "|".join(re.escape(m) for m in FORBIDDEN_MENTIONS)
    found = offenders(pattern, names)
    assert not found, "\n".join(found)


def test_ruff_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed")
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def run_python(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_options_import_no_torch():
    done = run_python("import sys, options.schema, options.yamlfile, options.settings\n"
                      "assert 'torch' not in sys.modules, 'options imported torch'\n")
    assert done.returncode == 0, done.stderr


# main.py run in-process by a wrapper that reports, after main() returns, whether torch was imported.
MAIN_WITHOUT_TORCH = """
import sys
sys.path.insert(0, sys.argv[1])
import main
code = main.main(sys.argv[2:])
print('TORCH' if 'torch' in sys.modules else 'NO_TORCH')
sys.exit(code)
"""


@pytest.mark.parametrize("override, expected", [
    ("speed.cuda_grph=false", "did you mean 'cuda_graph'"),
    ("path.teachr=x.pth", "did you mean 'teacher'"),
    ("epochs=abc", "'epochs' must be an integer"),
    ("epohcs=3", "did you mean 'epochs'"),  # a top-level typo: it might be a method's key
])
def test_main_reports_a_typo_in_a_common_key_without_importing_torch(tmp_path, override, expected):
    opt = tmp_path / "opt.yml"
    opt.write_text("epochs: 2\n")
    done = run_python(MAIN_WITHOUT_TORCH, str(ROOT), "-opt", str(opt), "--set", override, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout.strip() == "NO_TORCH"
