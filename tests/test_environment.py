"""The environment is declared once, twice over: pyproject.toml and environment.yml must agree; the
README's two commands exist as Makefile targets and CI runs exactly the README's test command; tracked
notebooks are stored without outputs."""
from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import nbformat
import tomllib
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from maft.utils.paths import REPO_ROOT

# What issue 2 asks the environment to provide (distribution names).
REQUIRED = [
    "torch", "torchvision", "open_clip_torch", "transformers", "segment-anything", "jupyterlab",
    "papermill", "ipywidgets", "seaborn",
]
# The torch build found on local disk on this kind of machine; the declared ranges must admit it.
LOCAL_TORCH = {"torch": "2.14.1", "torchvision": "0.29.1"}


def requirement_table(lines: list[str], source: str) -> dict[str, tuple]:
    """name -> (extras, specifier set, marker), failing on a name listed twice."""
    table = {}
    for line in lines:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name not in table, f"{source} lists {requirement.name} twice"
        table[name] = (sorted(requirement.extras), requirement.specifier, str(requirement.marker or ""))
    return table


def pyproject() -> dict:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def pyproject_requirements() -> dict[str, tuple]:
    project = pyproject()["project"]
    lines = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    return requirement_table(lines, "pyproject.toml")


def environment_yml() -> dict:
    return yaml.safe_load((REPO_ROOT / "environment.yml").read_text())


def environment_pip_requirements() -> dict[str, tuple]:
    entries = environment_yml()["dependencies"]
    sections = [entry["pip"] for entry in entries if isinstance(entry, dict) and "pip" in entry]
    assert len(sections) == 1, "environment.yml needs exactly one pip section"
    # "-e ." installs the package itself; it is not a dependency to compare.
    lines = [line for line in sections[0] if not line.startswith(("-", "."))]
    return requirement_table(lines, "environment.yml")


def test_pyproject_and_environment_yml_declare_the_same_dependencies():
    ours, conda = pyproject_requirements(), environment_pip_requirements()
    only_pyproject = {n: str(v[1]) for n, v in ours.items() if n not in conda}
    only_conda = {n: str(v[1]) for n, v in conda.items() if n not in ours}
    assert not only_pyproject and not only_conda, (
        f"only in pyproject.toml: {only_pyproject}; only in environment.yml: {only_conda}"
    )
    differing = {n: (str(ours[n][1]), str(conda[n][1])) for n in ours if ours[n] != conda[n]}
    assert not differing, f"specifiers differ (pyproject, environment.yml): {differing}"


def test_environment_yml_installs_the_package_and_a_matching_python():
    pip_section = next(e["pip"] for e in environment_yml()["dependencies"] if isinstance(e, dict))
    assert "-e ." in pip_section or "." in pip_section
    pythons = [e for e in environment_yml()["dependencies"] if isinstance(e, str) and e.startswith("python")]
    assert len(pythons) == 1, "environment.yml should pin one python"
    conda_python = re.split(r"[=<>]+", pythons[0], maxsplit=1)[1].rstrip(".*")
    requires_python = Requirement(f"python{pyproject()['project']['requires-python']}").specifier
    assert requires_python.contains(Version(conda_python)), (pythons[0], str(requires_python))


def test_required_libraries_are_declared_and_admit_the_local_torch():
    declared = pyproject_requirements()
    missing = [name for name in REQUIRED if canonicalize_name(name) not in declared]
    assert not missing, f"pyproject.toml lacks {missing}"
    for name, local in LOCAL_TORCH.items():
        specifier = declared[name][1]
        assert specifier.contains(local), f"{name}{specifier} does not admit the local {local}"


def test_installed_versions_satisfy_the_declaration():
    problems = []
    for name, (_, specifier, marker) in pyproject_requirements().items():
        if marker and not Marker(marker).evaluate():
            continue  # not meant for this platform
        try:
            installed = version(name)
        except PackageNotFoundError:
            problems.append(f"{name} is not installed")
            continue
        if not specifier.contains(installed, prereleases=True):
            problems.append(f"{name} {installed} does not satisfy {specifier}")
    assert not problems, problems


# ---------------------------------------------------------------------------------------------- commands


def readme_commands() -> list[str]:
    """Shell commands in the README's code blocks, comments stripped, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip().lstrip("$ ").strip()
            if command:
                commands.append(command)
    return commands


def test_readme_first_command_is_the_demo_and_second_the_tests():
    commands = readme_commands()
    assert commands[:2] == ["make demo", "make test"], commands


# What .ci/run may do before the README's test command: install what the tests need and pip cannot
# give (Chromium for the explorer's browser test).
CI_SETUP_COMMANDS = ["bash .ci/install-browser"]


def test_ci_runs_exactly_the_readme_test_command():
    lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    commands = [
        line.strip()
        for line in lines
        if line.strip() and not line.lstrip().startswith("#") and not re.match(r"\s*(set|cd)\s", line)
    ]
    assert commands[-1:] == [readme_commands()[1]], commands
    assert commands[:-1] == CI_SETUP_COMMANDS[: len(commands) - 1], commands
    for command in commands[:-1]:
        assert (REPO_ROOT / command.split()[-1]).is_file(), command


def makefile_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.M))


def test_makefile_has_the_readme_targets_and_they_set_up_a_venv():
    targets = makefile_targets()
    assert {"demo", "test"} <= targets, targets
    assert "-m venv" in (REPO_ROOT / "Makefile").read_text()
    assert shutil.which("make"), "make is needed for the README commands"
    for target in ("demo", "test"):  # a dry run: make parses the file and knows how to build the target
        result = subprocess.run(["make", "-n", target], cwd=REPO_ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------- notebooks


def notebook_problems(path: Path) -> list[str]:
    """Why a notebook is not a clean source (outputs, execution counts, papermill run metadata)."""
    notebook = nbformat.read(path, as_version=4)
    problems = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"{path.name} cell {index} has outputs")
        if cell.get("execution_count") is not None:
            problems.append(f"{path.name} cell {index} has execution count {cell.execution_count}")
    if "papermill" in notebook.metadata:
        problems.append(f"{path.name} carries papermill run metadata (an executed copy?)")
    return problems


def tracked_notebooks() -> list[Path]:
    result = subprocess.run(
        ["git", "ls-files", "-z", "*.ipynb"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:  # not a git checkout (e.g. an unpacked archive): the notebook folder
        return sorted((REPO_ROOT / "notebooks").glob("**/*.ipynb"))
    return [REPO_ROOT / name for name in result.stdout.split("\0") if name]


def test_tracked_notebooks_carry_no_outputs():
    problems = [problem for path in tracked_notebooks() for problem in notebook_problems(path)]
    assert not problems, problems


def test_notebook_check_catches_outputs(tmp_path):
    clean = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("x")])
    nbformat.write(clean, tmp_path / "clean.ipynb")
    assert notebook_problems(tmp_path / "clean.ipynb") == []

    executed = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    executed.cells[0].execution_count = 1
    executed.cells[0].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"}, execution_count=1)]
    executed.metadata["papermill"] = {"duration": 1.0}
    nbformat.write(executed, tmp_path / "executed.ipynb")
    problems = notebook_problems(tmp_path / "executed.ipynb")
    assert len(problems) == 3, problems


# ---------------------------------------------------------------------------------------------- lock file


def lock_pins() -> dict[str, str]:
    """name -> exact version of requirements.lock (every line ``name==version``)."""
    pins = {}
    for line in (REPO_ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"requirements.lock: {line!r} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = specs[0].version
    return pins


def test_lock_pins_every_declared_dependency_within_its_range():
    pins = lock_pins()
    problems = []
    for name, (_, specifier, marker) in pyproject_requirements().items():
        if marker and not Marker(marker).evaluate():
            continue
        if name not in pins:
            problems.append(f"{name} is declared in pyproject.toml but not pinned in requirements.lock")
        elif not specifier.contains(pins[name], prereleases=True):
            problems.append(f"requirements.lock pins {name}=={pins[name]}, outside pyproject.toml's {specifier}")
    assert not problems, problems
    for name, local in LOCAL_TORCH.items():  # the lock admits the torch build on this kind of machine's disk
        assert pins[name] == local, f"requirements.lock pins {name}=={pins[name]}, not the local {local}"


def test_make_installs_from_the_lock():
    result = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    installs = [line for line in result.stdout.splitlines() if "pip install" in line and "-e" in line]
    assert installs and all("-c requirements.lock" in line for line in installs), installs
