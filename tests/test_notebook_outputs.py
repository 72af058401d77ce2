"""What a reader of the smoke run sees: every figure a notebook draws is in its executed copy as a PNG,
and the HTML handouts (each notebook, the report) carry every figure inside the file.

The smoke series runs once per session (the ``smoke_run`` fixture of conftest.py)."""
from __future__ import annotations

import base64
import re
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from maft import series as notebooks

pytestmark = pytest.mark.slow

# Notebooks whose smoke run draws figures (07 skips its cells without SAM weights).
DRAWING = ["00", "01", "02", "03", "04", "05", "06"]


def _outputs(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]


def _cell_window(cell) -> tuple[float, float] | None:
    meta = cell.get("metadata", {}).get("papermill", {})
    if not meta.get("start_time") or not meta.get("end_time"):
        return None
    return (datetime.fromisoformat(meta["start_time"]).timestamp(),
            datetime.fromisoformat(meta["end_time"]).timestamp())


def figures_saved_per_cell(executed: Path, figures: Path) -> dict[int, list[str]]:
    """Cell index -> the figure files (in ``figures``) whose modification time falls inside that cell's
    run (papermill records each cell's start and end): the cells that drew a figure."""
    cells = nbformat.read(executed, as_version=4).cells
    windows = {i: w for i, c in enumerate(cells) if c.cell_type == "code" and (w := _cell_window(c))}
    prefix = executed.name.split("_")[0] + "_"
    saved: dict[int, list[str]] = {}
    for png in sorted(figures.glob(prefix + "*.png")):
        mtime = png.stat().st_mtime
        # one cell ends as the next starts: the owner is the cell whose run holds the file's time (a
        # little slack for the file system's clock), the latest-starting one if two touch
        inside = [i for i, (start, end) in windows.items() if start <= mtime <= end + 0.05]
        near = inside or [i for i, (start, end) in windows.items() if start - 0.05 <= mtime <= end + 0.05]
        assert near, f"{png.name} (mtime {mtime}) lies outside every cell's run"
        owner = max(near, key=lambda i: windows[i][0])
        saved.setdefault(owner, []).append(png.name)
    return saved


def test_every_drawn_figure_is_shown_as_a_png(smoke_run):
    out, runs = smoke_run
    problems = []
    for run in runs:
        cells = nbformat.read(run.output, as_version=4).cells
        for index, cell in enumerate(cells):
            for output in _outputs(cell):
                data = output.get("data", {})
                if data.get("text/plain", "").startswith("<Figure size") and "image/png" not in data:
                    problems.append(f"{run.notebook} cell {index}: a figure shown as text, no image/png")
        for index, names in figures_saved_per_cell(run.output, out / "figures").items():
            shown = sum("image/png" in o.get("data", {}) for o in _outputs(cells[index]))
            if shown < len(names):
                problems.append(f"{run.notebook} cell {index} saved {names} but shows {shown} PNG(s)")
    assert not problems, "\n".join(problems)
    drew = {run.notebook.split("_")[0] for run in runs if figures_saved_per_cell(run.output, out / "figures")}
    assert drew == set(DRAWING), f"notebooks that drew figures: {sorted(drew)}"


def _png_outputs(executed: Path) -> list[str]:
    cells = nbformat.read(executed, as_version=4).cells
    return [o["data"]["image/png"].replace("\n", "") for cell in cells for o in _outputs(cell)
            if "image/png" in o.get("data", {})]


def test_each_executed_notebook_is_also_a_self_contained_html_file(smoke_run):
    out, runs = smoke_run
    for run in runs:
        html_path = out / (Path(run.notebook).stem + ".html")
        assert run.html == html_path and html_path.is_file(), html_path
        page = html_path.read_text(encoding="utf-8")
        pngs = _png_outputs(run.output)
        if run.notebook.split("_")[0] in DRAWING:
            assert pngs, f"{run.notebook} has no PNG output"
        for png in pngs:  # the very image of each output, inline
            assert f"data:image/png;base64,{png}" in page, f"{html_path.name} lacks one of its figures"
        assert page.count("<img") >= len(pngs)
        # nothing refers to a file next to it: one file is the whole notebook
        assert not re.search(r'<img[^>]+src="(?!data:)', page), f"{html_path.name} links an image file"


def test_the_report_is_html_with_every_figure_embedded(smoke_run):
    out, _ = smoke_run
    markdown = (out / "report.md").read_text()
    page = (out / "report.html").read_text(encoding="utf-8")
    referenced = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(referenced) >= 10, referenced  # 00-06 leave at least 13 figures in the report
    for figure in referenced:
        encoded = base64.b64encode((out / figure).read_bytes()).decode("ascii")
        assert f'src="data:image/png;base64,{encoded}"' in page, f"report.html does not embed {figure}"
    assert page.count("<img") == len(referenced)
    assert "figure not found" not in page.split("</style>", 1)[1]
    assert "<table>" in page and "04 · Zero-shot" in page
    # the list of executed notebooks links their HTML copies, which exist beside the report
    links = re.findall(r'<a href="([^"]+)"', page)
    assert sorted(links) == sorted(p.stem + ".html" for p in notebooks.list_notebooks()), links
