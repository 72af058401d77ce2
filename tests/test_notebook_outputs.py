"""What a reader of the smoke run sees: every figure a notebook draws is in its executed copy as a PNG,
and the HTML handouts (each notebook, the report) carry every figure inside the file.

The smoke series runs once per session (the ``smoke_run`` fixture of conftest.py)."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import nbformat
import pytest

from maft.notebook import series

pytestmark = pytest.mark.slow

# Notebooks whose smoke run draws figures (07 skips its cells without SAM weights).
DRAWING = ["00", "01", "02", "03", "04", "05", "06"]


def _outputs(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") in ("display_data", "execute_result")]


def shown_figure_names(executed: Path) -> list[str]:
    """The saved figure files the executed notebook shows as PNGs (``nb.save`` tags each figure with
    its file name, which the display hook puts in the output's metadata)."""
    cells = nbformat.read(executed, as_version=4).cells
    return [o.get("metadata", {}).get("image/png", {}).get("maft_figure")
            for cell in cells for o in _outputs(cell) if "image/png" in o.get("data", {})]


def test_every_drawn_figure_is_shown_as_a_png(smoke_run):
    out, runs = smoke_run
    problems = []
    drew = set()
    for run in runs:
        cells = nbformat.read(run.output, as_version=4).cells
        for index, cell in enumerate(cells):
            for output in _outputs(cell):
                data = output.get("data", {})
                if data.get("text/plain", "").startswith("<Figure size") and "image/png" not in data:
                    problems.append(f"{run.notebook} cell {index}: a figure shown as text, no image/png")
        prefix = run.notebook.split("_")[0]
        saved = sorted(p.name for p in (out / "figures").glob(prefix + "_*.png"))
        shown = shown_figure_names(run.output)
        problems += [f"{run.notebook} saved {name} but does not show it" for name in saved if name not in shown]
        if saved:
            drew.add(prefix)
    assert not problems, "\n".join(problems)
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
    assert sorted(links) == sorted(p.stem + ".html" for p in series.list_notebooks()), links
