"""The notebook series: every notebook runs headlessly with the smoke profile, reruns reproduce the
metrics JSON byte for byte, and each notebook is thin (one parameters cell, no long functions)."""
import ast
import json

import nbformat
import pytest

from maft.notebook import series

pytestmark = pytest.mark.slow


def test_every_notebook_runs_with_the_smoke_profile(smoke_run):
    out, runs = smoke_run
    assert [r.notebook for r in runs] == [p.name for p in series.list_notebooks()]
    assert len(runs) == 8
    report = (out / "report.md").read_text()
    for key in ("00 · Setup", "01 · Frozen CLIP", "02 · IP-CLIP", "03 · Mask-aware", "04 · Zero-shot",
                "05 · Ablations", "06 · Visualisations", "07 · SAM"):
        assert key in report
    for figure in ("00_samples.png", "01_score_vs_iou.png", "02_attention_masks.png", "03_training_curves.png",
                   "04_clip_only.png", "05_story.png", "06_explorer_static.png"):
        assert (out / "figures" / figure).stat().st_size > 1000, figure
    zero_shot = json.loads((out / "metrics" / "04.json").read_text())
    assert [r["classifier"] for r in zero_shot["clip_only"]][:3] == [
        "frozen CLIP, mask & crop", "frozen IP-CLIP", "MAFT IP-CLIP"]
    story = json.loads((out / "metrics" / "05.json").read_text())  # the smoke profile runs the quick story
    assert story["proposals"]["test"] == "segments" and {"crop", "frozen", "ma_only", "maft"} <= set(story["mean"])


def test_rerun_reproduces_the_metrics(smoke_run, tmp_path):
    out, _ = smoke_run
    again = tmp_path / "again"
    series.run_series("smoke", only=["01", "03", "04"], output_dir=again, progress=False)
    for key in ("01", "03", "04"):
        assert (again / "metrics" / f"{key}.json").read_bytes() == (out / "metrics" / f"{key}.json").read_bytes(), key


@pytest.mark.parametrize("path", series.list_notebooks(), ids=lambda p: p.stem)
def test_notebooks_are_thin_and_parameterised(path):
    nb = nbformat.read(str(path), as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert {"profile", "output_dir"} <= series.declared_parameters(path)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None
        for node in ast.walk(ast.parse(cell.source)):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                assert node.end_lineno - node.lineno < 5, f"{path.name}: long definition {node.name}; move it to maft/"


def test_profiles_only_set_declared_parameters():
    declared = set().union(*(series.declared_parameters(p) for p in series.list_notebooks()))
    for profile in sorted(series.PROFILE_DIR.glob("*.yaml")):
        unknown = set(series.load_profile(str(profile))) - declared - {"profile"}
        assert not unknown, f"{profile.name} sets {sorted(unknown)}"


def test_a_profile_with_ablations_runs_them_in_notebook_05():
    """The parameter cells' defaults are the demo's (its story); a profile that lists ablations must say
    `study: variants`, or notebook 05 would tell the world's story instead of running them."""
    for profile in sorted(series.PROFILE_DIR.glob("*.yaml")):
        parameters = series.load_profile(str(profile))
        if parameters.get("ablations"):
            assert parameters.get("study") == "variants", profile.name
