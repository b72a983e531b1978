"""The project's layout rules, checked on the tracked files (fast: no training)."""
import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

MAX_LINES = 300
MAX_ENGINE_FILES = 10
MAX_ENGINE_FLOORS = 6  # modules in the longest chain of imports between engine files
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


def engine_imports() -> dict[str, dict[str, set[str]]]:
    """Each engine module -> the engine modules it imports (anywhere in its file) -> the names it takes from each."""
    names = [n for n in tracked() if n.startswith("engine/") and n.endswith(".py")]
    modules = {Path(n).stem for n in names}
    graph: dict[str, dict[str, set[str]]] = {}
    for name in names:
        found: dict[str, set[str]] = {}
        for node in ast.walk(ast.parse((ROOT / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("engine."):
                        found.setdefault(alias.name.split(".")[1], set()).add(alias.asname or "engine")
            elif isinstance(node, ast.ImportFrom):
                package = node.module if node.level == 0 else ".".join(filter(None, ["engine", node.module]))
                if package == "engine":  # `from engine import step`: a module
                    for alias in node.names:
                        if alias.name in modules:
                            found.setdefault(alias.name, set()).add(alias.asname or alias.name)
                elif package and package.startswith("engine."):
                    found.setdefault(package.split(".")[1], set()).update(a.asname or a.name for a in node.names)
        graph[Path(name).stem] = {k: v for k, v in found.items() if k != Path(name).stem}
    return graph


def longest_chain(graph: dict[str, dict[str, set[str]]]) -> list[str]:
    """The longest chain of imports, importer last (`a <- b`: b imports a); a cycle fails the test."""
    chains: dict[str, list[str]] = {}

    def chain(module: str, seen: tuple[str, ...]) -> list[str]:
        assert module not in seen, f"engine imports in a cycle: {' -> '.join([*seen, module])}"
        if module not in chains:
            below = [chain(m, (*seen, module)) for m in graph.get(module, {})]
            chains[module] = [*max(below, key=len, default=[]), module]
        return chains[module]
    return max((chain(m, ()) for m in sorted(graph)), key=len)


def test_the_engine_is_few_files_on_few_floors():
    files = [n for n in tracked() if n.startswith("engine/")]
    assert len(files) <= MAX_ENGINE_FILES, f"{len(files)} files in engine/: {', '.join(sorted(files))}"
    chain = longest_chain(engine_imports())
    assert len(chain) <= MAX_ENGINE_FLOORS, f"{len(chain)} floors: {' <- '.join(chain)}"


def runtime_names(tree: ast.AST) -> set[str]:
    """The names a module uses outside annotations."""
    annotations = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
            annotations |= {id(a.annotation) for a in every if a is not None and a.annotation is not None}
            if node.returns is not None:
                annotations.add(id(node.returns))
        elif isinstance(node, ast.AnnAssign):
            annotations.add(id(node.annotation))
    used: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if id(node) in annotations:
            continue
        if isinstance(node, ast.Name):
            used.add(node.id)
        todo.extend(ast.iter_child_nodes(node))
    return used


def test_no_engine_file_imports_another_only_for_a_type():
    found = []
    for module, imports in engine_imports().items():
        used = runtime_names(ast.parse((ROOT / "engine" / f"{module}.py").read_text(encoding="utf-8")))
        found += [f"engine/{module}.py imports engine.{other} only for {', '.join(sorted(names))}"
                  for other, names in imports.items() if not names & used]
    assert not found, "\n".join(found)


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
