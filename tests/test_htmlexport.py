"""HTML handouts: Markdown with its figures embedded, notebooks through nbconvert, the runner writing both."""
from __future__ import annotations

import base64

import nbformat
import pytest

from maft.notebook import html_export, series

PNG = base64.b64decode(  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


def test_markdown_figures_are_embedded_and_notebook_links_point_at_html(tmp_path):
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(PNG)
    (tmp_path / "01_x.html").write_text("<html></html>")
    markdown = ("# Run `smoke`\n\n| k | v |\n|---|---|\n| a | 1 |\n\n![a](figures/a.png)\n\n![gone](figures/gone.png)\n\n"
                "- [01_x.ipynb](01_x.ipynb)\n- [02_y.ipynb](02_y.ipynb)\n- [site](https://example.org/a.ipynb)\n")
    page = html_export.markdown_to_html(markdown, tmp_path)
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in page
    assert 'class="missing-figure">figure not found: figures/gone.png' in page and 'src="figures/' not in page
    assert 'href="01_x.html"' in page            # its HTML copy exists
    assert 'href="02_y.ipynb"' in page           # none: the link stays
    assert 'href="https://example.org/a.ipynb"' in page
    assert "<title>Run smoke</title>" in page and "<table>" in page
    with pytest.raises(ValueError, match="not an image"):
        html_export.data_uri(tmp_path / "01_x.html")


def test_a_notebook_with_an_image_output_becomes_one_html_file(tmp_path):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("fig")
    cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(PNG).decode(),
                                                                 "text/plain": "<Figure size 1x1>"})]
    nb.cells = [nbformat.v4.new_markdown_cell("# A notebook"), cell]
    nbformat.write(nb, tmp_path / "n.ipynb")
    page = html_export.notebook_to_html(tmp_path / "n.ipynb").read_text()
    assert f"data:image/png;base64,{base64.b64encode(PNG).decode()}" in page and "A notebook" in page


def test_the_runner_writes_html_beside_each_notebook_and_the_report(tmp_path):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("output_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(
        "from maft.notebook.report import write_section\nwrite_section(output_dir, '00', 'First', 'body text')")]
    nbformat.write(nb, nb_dir / "00_first.ipynb")
    profile = tmp_path / "p.yaml"
    profile.write_text("{}\n")
    out = tmp_path / "out"
    runs = series.run_series(str(profile), output_dir=out, notebook_dir=nb_dir, progress=False)
    assert runs[0].html == out / "00_first.html" and "write_section" in runs[0].html.read_text()
    report = (out / "report.html").read_text()
    assert "body text" in report and 'href="00_first.html"' in report
