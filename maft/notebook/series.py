"""Run the numbered notebook series headlessly with papermill, one profile at a time.

A profile is a flat YAML file of notebook parameters in ``notebooks/profiles/<name>.yaml``; the same
file works with plain papermill (``papermill -f notebooks/profiles/demo.yaml ...``). The runner adds
``output_dir`` (``outputs/<profile>/``), executes the notebooks in order, stops at the first failure
naming the notebook and cell, and joins the notebooks' report sections into ``report.md``. Each executed
notebook and the report are also written as single-file HTML with their figures embedded
(``NN_name.html``, ``report.html``), for readers without Jupyter, linked into a book by ``index.html``
(:mod:`maft.notebook.book`). Each notebook's checklist (:mod:`maft.notebook.checklist`) is gathered into ``checklist.json``
and the report.

A run into the default folder (``outputs/<profile>/``) with the repository's notebooks also keeps its
measurements in the repository: the wall time of each notebook in ``notebooks/timings.yaml`` (which the
notebooks' headers show) and the checklist in ``notebooks/checklists.json`` (from which the README's
checklist section is regenerated).

Runs are quiet: papermill's warnings about parameter lines it cannot parse (values followed by a
comment; the runner reads parameters with ``ast`` and passes only declared names) are filtered, the
kernel talks over IPC instead of unencrypted TCP (whose warning ipykernel prints to the terminal), and
the runner prints one line per notebook with its time.
"""
from __future__ import annotations

import ast
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
import papermill
import yaml
from jupyter_client.manager import AsyncKernelManager
from papermill.exceptions import PapermillExecutionError
from traitlets import CaselessStrEnum

from ..utils.paths import REPO_ROOT, check_output_path, outputs_dir, read_yaml, write_json
from . import checklist, guide
from .book import build_book
from .guide import format_seconds
from .html_export import notebook_to_html, report_to_html
from .prerequisites import describe_steps, fetch_profile
from .report import build_report

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
PROFILE_DIR = NOTEBOOK_DIR / "profiles"


class IPCKernelManager(AsyncKernelManager):
    """A kernel reached over IPC sockets (files in Jupyter's runtime folder) instead of TCP on localhost:
    nothing listens on a port, and ipykernel has no unencrypted-TCP warning to print."""

    transport = CaselessStrEnum(["tcp", "ipc"], default_value="tcp" if os.name == "nt" else "ipc", config=True)


class _ParameterParseNoise(logging.Filter):
    """Drops papermill's "Unable to parse line" / "Passed unknown parameter" warnings: they come from its
    line parser, which gives up on a parameter line that ends in a comment, and then calls each value
    it was given unknown. The runner passes only names that ``declared_parameters`` found with ``ast``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not message.startswith(("Unable to parse line", "Passed unknown parameter"))


_QUIET = _ParameterParseNoise()


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
               notebook_dir: str | Path = NOTEBOOK_DIR, record: bool | None = None) -> list[NotebookRun]:
    """Execute the series for ``profile``; executed notebooks (``.ipynb`` and ``.html``), figures,
    metrics, checklist.json, report.md, report.html and index.html go to ``outputs/<profile>/`` (or
    ``output_dir``). ``record``: keep times and checklist in the repository (default: only for the
    repository's notebooks run into the profile's own folder)."""
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
    # installed on papermill's loggers for the whole process: a filter is a no-op when already there
    for name in ("papermill", "papermill.translators"):
        logging.getLogger(name).addFilter(_QUIET)
    for i, notebook in enumerate(notebooks, 1):
        executed = out / notebook.name
        if progress:
            print(f"[{i}/{len(notebooks)}] {notebook.stem} ...", end="", flush=True)
        start = time.perf_counter()
        try:
            mine = {k: v for k, v in parameters.items() if k in declared[notebook]}
            papermill.execute_notebook(str(notebook), str(executed), parameters=mine,
                                       kernel_name=kernel_name, cwd=str(notebook_dir),
                                       progress_bar=False, kernel_manager_class=IPCKernelManager)
        except PapermillExecutionError as error:
            if progress:
                print(f" failed after {format_seconds(time.perf_counter() - start)}", flush=True)
            raise NotebookFailed(
                f"{notebook.name} failed in cell In[{error.exec_count}] `{error.source.strip().splitlines()[0]}` "
                f"({error.ename}: {error.evalue}); "
                f"the executed notebook up to the failure is {executed}") from None
        seconds = time.perf_counter() - start  # the notebook's own run time, not its HTML export
        if progress:
            print(f" {format_seconds(seconds)}", flush=True)
        runs.append(NotebookRun(notebook.name, executed, seconds, notebook_to_html(executed)))
    series = [p.stem for p in list_notebooks(None, Path(notebook_dir))]
    gathered = checklist.gather(out, series)
    write_json({"profile": parameters["profile"], "notebooks": gathered}, out / "checklist.json", ensure_ascii=False)
    if record is None:  # the canonical run: the repository's notebooks into the profile's own folder
        record = output_dir is None and Path(notebook_dir).resolve() == NOTEBOOK_DIR.resolve()
    if record:
        guide.record_timings(parameters["profile"], {Path(r.notebook).stem: r.seconds for r in runs})
        guide.record_checklist(parameters["profile"], gathered)
        guide.update_readme()
    report = build_report(out, f"MAFT notebook series: profile `{parameters['profile']}`",
                          preamble=_preamble(parameters, runs, gathered))
    report_to_html(report)
    build_book(out, series, parameters["profile"], checklist.summary(gathered) if gathered else None)
    if progress and record:
        print(f"recorded times in {guide.TIMINGS_FILE.relative_to(REPO_ROOT)} and the checklist in "
              f"{guide.CHECKLISTS_FILE.relative_to(REPO_ROOT)} (README section updated)", file=sys.stderr)
    return runs


def _preamble(parameters: dict, runs: list[NotebookRun], gathered: dict | None = None) -> str:
    lines = []
    if gathered:
        lines += ["## What you should see", "", "The paper's claims each notebook tests, checked on this run's "
                  f"numbers (a cross is reported, never fatal): {checklist.summary(gathered)}", "",
                  checklist.table(gathered), ""]
    lines += ["Parameters:", "", "```yaml", yaml.safe_dump(parameters, sort_keys=True).rstrip(), "```", "",
              "Executed notebooks:", ""]
    lines += [f"- [{run.notebook}]({run.notebook}) ({run.seconds:.0f} s)" for run in runs]
    return "\n".join(lines)
