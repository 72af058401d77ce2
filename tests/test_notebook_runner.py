"""The papermill runner: parameters reach the notebook, failures name notebook and cell, report is built."""
import json

import nbformat
import pytest

from maft.notebook import series as runner


def _write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("value = 1\noutput_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params] + [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


@pytest.fixture()
def series(tmp_path):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _write_notebook(nb_dir / "00_first.ipynb", [
        "from maft.notebook.report import write_metrics, write_section",
        "write_metrics(output_dir, '00', {'value': value})\nwrite_section(output_dir, '00', 'First', f'value={value}')",
    ])
    _write_notebook(nb_dir / "01_second.ipynb", ["assert value == 2, 'value must be 2'"])
    profile = tmp_path / "p.yaml"
    profile.write_text("value: 2\n")
    return nb_dir, profile


def test_series_runs_in_order_with_profile_parameters(series, tmp_path):
    nb_dir, profile = series
    out = tmp_path / "out"
    runs = runner.run_series(str(profile), output_dir=out, notebook_dir=nb_dir, progress=False)
    assert [r.notebook for r in runs] == ["00_first.ipynb", "01_second.ipynb"]
    assert json.loads((out / "metrics" / "00.json").read_text()) == {"value": 2}
    report = (out / "report.md").read_text()
    assert "value=2" in report and "profile `p`" in report


def test_failure_names_notebook_and_cell(series, tmp_path):
    nb_dir, profile = series
    profile.write_text("value: 3\n")
    failure = (r"01_second.ipynb failed in cell In\[3\] `assert value == 2, 'value must be 2'` "
               r"\(AssertionError: value must be 2\)")
    with pytest.raises(runner.NotebookFailed, match=failure):
        runner.run_series(str(profile), output_dir=tmp_path / "out", notebook_dir=nb_dir, progress=False)


def test_only_and_unknown_profile(series, tmp_path):
    nb_dir, _ = series
    assert [p.name for p in runner.list_notebooks(["01"], nb_dir)] == ["01_second.ipynb"]
    with pytest.raises(ValueError, match="--only 09"):
        runner.list_notebooks(["09"], nb_dir)
    with pytest.raises(FileNotFoundError, match="no_such_profile"):
        runner.load_profile("no_such_profile")


def test_profile_key_no_notebook_declares_is_an_error(series, tmp_path):
    nb_dir, profile = series
    profile.write_text("value: 2\nvalu: 3\n")
    with pytest.raises(ValueError, match=r"\['valu'\]"):
        runner.run_series(str(profile), output_dir=tmp_path / "out", notebook_dir=nb_dir, progress=False)
