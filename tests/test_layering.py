"""The package's layout and its layering rule (stated in maft/__init__.py), read from the import graph.

Every import counts, those inside functions included, so a lazy import cannot hide a layer violation.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "maft"
SUBPACKAGES = {"cli", "data", "downloads", "notebook", "proposals", "studies", "utils", "viz", "world"}
ENGINE = {"experiment", "train", "trainable", "distributed", "checkpoints", "evaluate", "predict"}
ENTRY_POINTS = {"__main__"}  # `python -m maft` runs the CLI: an entry point, not part of the pipeline


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute maft module names ``path`` imports anywhere (``from . import x`` counts as ``pkg.x``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "maft"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "maft":
                continue
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names
                      if (PACKAGE.parent / Path(*f"{target}.{alias.name}".split("."))).with_suffix(".py").exists()
                      or (PACKAGE.parent / Path(*f"{target}.{alias.name}".split(".")) / "__init__.py").exists()}
    return found


def layer(module: str) -> str:
    """``pipeline`` for a top-level module, the subpackage's name otherwise, ``root`` for ``maft`` itself."""
    parts = module.split(".")
    if len(parts) == 1:
        return "root"
    if parts[1] in SUBPACKAGES:
        return parts[1]
    return "entry" if parts[1] in ENTRY_POINTS else "pipeline"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def violations(edges: dict[str, set[str]]) -> list[str]:
    found = []
    for source, targets in edges.items():
        for target in targets:
            src, dst = layer(source), layer(target)
            if src == "pipeline" and dst in {"studies", "viz", "notebook", "cli"}:
                found.append(f"{source} -> {target}: the pipeline never imports {dst}/")
            if src in {"data", "proposals"} and dst == "pipeline" and target.split(".")[1] in ENGINE:
                found.append(f"{source} -> {target}: {src}/ never imports the training or evaluation engine")
            if src == "utils" and dst not in {"utils", "root"}:
                found.append(f"{source} -> {target}: utils/ imports nothing of maft's")
            if src == "viz" and dst in {"notebook", "studies", "cli"}:
                found.append(f"{source} -> {target}: viz/ never imports {dst}/")
    return sorted(found)


def test_the_layering_rule_holds():
    assert violations(graph()) == []


def test_the_layering_check_catches_a_violation_inside_a_function(tmp_path, monkeypatch):
    """The reader sees an import inside a function body and names the rule it breaks."""
    fake = tmp_path / "maft"
    (fake / "viz").mkdir(parents=True)
    (fake / "data").mkdir()
    for f in ("__init__.py", "viz/__init__.py", "viz/figures.py", "data/__init__.py", "train.py"):
        (fake / f).write_text("")
    (fake / "evaluate.py").write_text("def f():\n    from .viz import figures\n    return figures\n")
    (fake / "data" / "augment.py").write_text("def g():\n    from ..train import finetune\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations(graph()) == [
        "maft.data.augment -> maft.train: data/ never imports the training or evaluation engine",
        "maft.evaluate -> maft.viz.figures: the pipeline never imports viz/",
        "maft.evaluate -> maft.viz: the pipeline never imports viz/",
    ]


def test_no_import_cycle_between_modules():
    """Module-level imports only (a cycle through a function-level import cannot break loading)."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))], type_ignores=[])
        name = module_name(path)  # only the parsed top-level statements (``top``) are walked below
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(top):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                found |= {f"{target}.{a.name}" for a in node.names} | {target}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maft"):
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
        # a package's own __init__ importing its submodules is the package's definition, not a cycle
        edges[name] = {t for t in found & modules if t != name and not t.startswith(name + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_top_level_holds_the_pipeline_only():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 22, top
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == SUBPACKAGES


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_import_maft_predict_loads_no_notebook_machinery():
    """`maft predict` runs on servers: importing it must not pull IPython, Jupyter or a notebook backend."""
    code = ("import sys, maft.predict, maft.cli.predict; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'IPython', 'ipykernel', 'ipywidgets', "
            "'jupyter_client', 'matplotlib_inline', 'papermill', 'nbformat'} "
            "or m == 'matplotlib.pyplot'); print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_import_names_a_module_that_exists():
    """Imports inside functions run late: one naming a module that moved would fail only when called."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    missing = sorted(f"{source} -> {target}" for source, targets in graph().items() for target in targets
                     if target.split(".")[0] == "maft" and target not in modules)
    assert missing == []


def test_every_module_path_the_docs_and_configs_name_exists():
    """A module moved into a subpackage leaves no stale `maft/....py` path in the README, the configs, the
    world spec, the notebooks' guide or a comment of the package."""
    import re

    root = Path(__file__).resolve().parents[1]
    texts = [root / "README.md", *sorted((root / "maft").rglob("*.yaml")), *sorted((root / "notebooks").glob("*.yaml")),
             *sorted((root / "maft").rglob("*.py"))]
    named = {(path.relative_to(root).as_posix(), found) for path in texts
             for found in re.findall(r"\bmaft/[A-Za-z0-9_/]+\.py\b", path.read_text(encoding="utf-8"))}
    assert len(named) > 10  # the scan finds the paths the docs do name
    missing = sorted((where, found) for where, found in named if not (root / found).is_file())
    assert not missing, f"stale module paths (file, path): {missing}"
