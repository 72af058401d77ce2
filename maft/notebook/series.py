"""Run the numbered notebook series headlessly with papermill, one profile at a time.

A profile is a flat YAML file of notebook parameters in ``notebooks/profiles/<name>.yaml``; the same
file works with plain papermill (``papermill -f notebooks/profiles/demo.yaml ...``). The runner adds
``output_dir`` (``outputs/<profile>/``), executes the notebooks in order, stops at the first failure
naming the notebook and cell, and joins the notebooks' report sections into ``report.md``. Each executed
notebook and the report are also written as single-file HTML with their figures embedded
(``NN_name.html``, ``report.html``), for readers without Jupyter.
"""
from __future__ import annotations

import ast
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import yaml
from papermill.exceptions import PapermillExecutionError

from .prerequisites import describe_steps, fetch_profile
from .html_export import notebook_to_html, report_to_html
from ..utils.paths import REPO_ROOT, check_output_path, outputs_dir, read_yaml
from ..utils.progress import progress_bar
from .report import build_report

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"


class NotebookFailed(RuntimeError):
    """A notebook of the series raised; the message names the notebook, the cell and the error."""


@dataclass
class NotebookRun:
    notebook: str
    output: Path
    seconds: float
    html: Path | None = None


def list_notebooks(only: list[str] | None = None, notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The series in order (``NN_name.ipynb``), optionally only those whose number or name is in ``only``."""
    notebooks = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb"))
    if not only:
        return notebooks
    chosen = [p for p in notebooks if any(p.stem == key or p.stem.split("_")[0] == key for key in only)]
    missing = [key for key in only if not any(p.stem == key or p.stem.split("_")[0] == key for p in notebooks)]
    if missing:
        raise ValueError(f"--only {', '.join(missing)}: no such notebook in {notebook_dir} "
                         f"(have {', '.join(p.stem for p in notebooks)})")
    return chosen


def declared_parameters(notebook: Path) -> set[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` (read with ``ast``: papermill's own
    line parser gives up on values such as ``{"a": ["k=v"]}``)."""
    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    tree = ast.parse(cells[0].source)
    return {target.id for node in tree.body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def load_profile(profile: str) -> dict:
    """The parameters of ``notebooks/profiles/<profile>.yaml`` (or of a YAML file path)."""
    path = Path(profile) if Path(profile).suffix in (".yaml", ".yml") else PROFILE_DIR / f"{profile}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"profile {profile!r} not found at {path} (profiles: {known})")
    parameters = read_yaml(path) or {}
    if not isinstance(parameters, dict):
        raise ValueError(f"{path}: a profile must be a flat YAML mapping of notebook parameters")
    parameters.setdefault("profile", path.stem)
    return parameters


def run_series(profile: str = "demo", only: list[str] | None = None, output_dir: str | Path | None = None,
               kernel_name: str | None = None, progress: bool = True,
               notebook_dir: str | Path = NOTEBOOK_DIR) -> list[NotebookRun]:
    """Execute the series for ``profile``; executed notebooks (``.ipynb`` and ``.html``), figures,
    metrics, report.md and report.html go to ``outputs/<profile>/`` (or ``output_dir``)."""
    parameters = load_profile(profile)
    out = Path(output_dir) if output_dir else outputs_dir(parameters["profile"], create=False)
    check_output_path(out, "--output-dir" if output_dir else "the profile's output folder", directory=True)
    out.mkdir(parents=True, exist_ok=True)
    parameters["output_dir"] = str(out.resolve())
    parameters["interactive"] = False  # headless: widget cells draw their static fallback
    runs = []
    notebooks = list_notebooks(only, Path(notebook_dir))
    # a profile key is checked against the whole series, so a typo is caught with --only too
    declared = {notebook: declared_parameters(notebook) for notebook in list_notebooks(None, Path(notebook_dir))}
    unused = sorted(set(parameters) - set().union(*declared.values()) - {"profile", "interactive"})
    if unused:
        raise ValueError(f"profile {profile!r} sets {unused}, which no notebook declares in its parameters "
                         f"cell (a typo?)")
    # datasets and SAM proposals first: a missing file fails now, not in notebook 03 an hour in
    steps = fetch_profile(parameters, progress=progress)
    if steps and progress:
        print(f"profile {parameters['profile']}: data and proposals\n{describe_steps(steps)}")
    for notebook in progress_bar(notebooks, desc=f"notebooks ({parameters['profile']})", unit="nb",
                                 disable=not progress):
        executed = out / notebook.name
        start = time.perf_counter()
        try:
            mine = {k: v for k, v in parameters.items() if k in declared[notebook]}
            papermill.execute_notebook(str(notebook), str(executed), parameters=mine,
                                       kernel_name=kernel_name, cwd=str(notebook_dir),
                                       progress_bar=False)
        except PapermillExecutionError as error:
            raise NotebookFailed(
                f"{notebook.name} failed in cell In[{error.exec_count}] `{error.source.strip().splitlines()[0]}` "
                f"({error.ename}: {error.evalue}); "
                f"the executed notebook up to the failure is {executed}") from None
        seconds = time.perf_counter() - start  # the notebook's own run time, not its HTML export
        runs.append(NotebookRun(notebook.name, executed, seconds, notebook_to_html(executed)))
    report = build_report(out, f"MAFT notebook series: profile `{parameters['profile']}`",
                          preamble=_preamble(parameters, runs))
    report_to_html(report)
    return runs


def _preamble(parameters: dict, runs: list[NotebookRun]) -> str:
    lines = ["Parameters:", "", "```yaml", yaml.safe_dump(parameters, sort_keys=True).rstrip(), "```", "",
             "Executed notebooks:", ""]
    lines += [f"- [{run.notebook}]({run.notebook}) ({run.seconds:.0f} s)" for run in runs]
    return "\n".join(lines)
