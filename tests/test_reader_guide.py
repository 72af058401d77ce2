"""What a reading group gets around the notebooks: a header with measured times, a checklist of the
paper's claims, exercises, an HTML book with previous / next links, quiet runs, and parameter cells
whose defaults are the demo profile's (so "Run All" in JupyterLab runs the demo)."""
import ast
import json
import re

import nbformat
import pytest
import yaml

from maft.notebook import book, checklist, guide
from maft.notebook import series as notebooks

NOTEBOOKS = notebooks.list_notebooks()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameter_defaults_are_the_demo_profile(path):
    nb = nbformat.read(str(path), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    defaults = {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body
                if isinstance(node, ast.Assign)}
    demo = notebooks.load_profile("demo")
    differing = {k: (defaults[k], demo[k]) for k in defaults if k in demo and defaults[k] != demo[k]}
    assert not differing, f"{path.name}: defaults differ from demo.yaml (default, demo): {differing}"
    assert defaults["output_dir"] == "../outputs/demo"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_has_the_header_checklist_and_exercise_cells(path):
    nb = nbformat.read(str(path), as_version=4)
    key = path.stem[:2]
    sources = [c.source for c in nb.cells]
    assert nb.cells[1].source.endswith(f'guide.header("{key}")'), "the header is the cell after the title"
    assert any(f'checklist.record(nb.output_dir, "{key}"' in s for s in sources[-2:])
    assert sources[-1] == f'guide.exercises("{key}")'
    for cell in (nb.cells[1], nb.cells[-2], nb.cells[-1]):
        assert "remove_input" in cell.metadata["tags"], "the HTML copy shows only the guide's output"
    entry = guide.entry(path.stem)
    assert entry["paper"] and entry["needs"] and 2 <= len(entry["exercises"]) <= 4
    for exercise in entry["exercises"]:
        assert re.search(r"`[^`]+`", exercise["task"]), f"{key}: an exercise names the key or override to change"
        assert exercise["predict"]


def test_header_shows_measured_times_per_profile(tmp_path):
    timings = tmp_path / "timings.yaml"
    assert "Not measured yet" in guide.header_markdown("03", timings_path=timings)
    guide.record_timings("smoke", {"03_mask_aware_finetuning": 41.6, "04_zero_shot_evaluation": 12.2}, timings)
    guide.record_timings("demo", {"03_mask_aware_finetuning": 1234.0}, timings)
    kept = yaml.safe_load(timings.read_text())
    assert list(kept) == ["demo", "smoke"] and kept["smoke"]["03_mask_aware_finetuning"]["seconds"] == 42
    text = guide.header_markdown("03", timings_path=timings)
    assert "Sec. 4.2" in text and "| `demo` | 21 min |" in text and "| `smoke` | 42 s |" in text
    assert "12 s" not in text  # notebook 04's time is not notebook 03's
    guide.record_timings("smoke", {"04_zero_shot_evaluation": 15}, timings)  # --only 04 keeps 03's time
    assert yaml.safe_load(timings.read_text())["smoke"]["03_mask_aware_finetuning"]["seconds"] == 42


def test_exercises_fold_a_measured_outcome(tmp_path):
    guide_file = tmp_path / "guide.yaml"
    guide_file.write_text(yaml.safe_dump({"03": {"paper": "Sec. 4.2", "needs": "CPU", "exercises": [
        {"task": "Set `train.iterations=10`.", "predict": "Lower or higher?", "measured": "L_ma 0.031 -> 0.029"},
        {"task": "Set `seed: 1`.", "predict": "Same?"}]}}))
    text = guide.exercises_markdown("03", guide_file)
    assert text.startswith("## Exercises") and "1. Set `train.iterations=10`." in text
    assert "<details><summary>Measured in a reference run</summary>" in text and text.count("<details>") == 1
    with pytest.raises(KeyError, match="no entry for notebook 05"):
        guide.entry("05", guide_file)


def test_checklist_lines_carry_marks_and_numbers(tmp_path):
    rows = [{"classifier": "frozen IP-CLIP", "hiou": 25.0, "miou_unseen": 12.0, "mask_awareness": 0.53},
            {"classifier": "MAFT IP-CLIP", "hiou": 30.0, "miou_unseen": 10.0, "mask_awareness": 0.64}]
    checks = checklist.zero_shot_checks(rows)
    assert checks[0].line() == ("✓ MAFT ranks proposals by IoU better than frozen IP-CLIP: rho 0.64 > 0.53 "
                                "(MAFT vs frozen)")
    assert checks[1].passed is False and checks[1].line().startswith("✗ MAFT improves the unseen classes")
    assert checks[3].passed is None  # no crop row: not measured, neither tick nor cross
    shown = checklist.record(tmp_path, "04", checks)
    assert shown.count("\n- ") == 4
    gathered = checklist.gather(tmp_path, ["00_setup_and_data", "04_zero_shot_evaluation"])
    assert list(gathered) == ["04_zero_shot_evaluation"]
    assert checklist.summary(gathered) == "2 of 4 checks hold, 1 do not, 1 not measured."
    assert "| 04 | ✗ | MAFT improves the unseen classes (Tables 1, 2) | mIoU unseen 10.0 < 12.0" in checklist.table(gathered)
    losses = [{"step": 1, "loss_ma": 0.0346}, {"step": 2, "loss_ma": 0.0466}]
    rose = checklist.finetuning_checks(losses, {"loss_ma": 0.0466})[0]
    assert rose.passed is False and "0.0346 -> 0.0466" in rose.detail


def test_readme_checklist_is_the_kept_json():
    kept = json.loads(guide.CHECKLISTS_FILE.read_text(encoding="utf-8"))
    readme = guide.README.read_text(encoding="utf-8")
    assert guide.readme_section() in readme, "README's checklist differs from notebooks/checklists.json"
    for profile, gathered in kept.items():
        claims = [c["claim"] for checks in gathered.values() for c in checks]
        assert f"Profile `{profile}`: {checklist.summary(gathered)}" in readme and all(c in readme for c in claims)


def test_update_readme_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{guide.README_BEGIN}\nstale table\n{guide.README_END}\n\nafter\n")
    kept = tmp_path / "checklists.json"
    guide.record_checklist("smoke", {"03_x": [{"claim": "loss falls", "passed": False, "detail": "a -> b"}]}, kept)
    assert guide.update_readme(readme, kept) and not guide.update_readme(readme, kept)
    text = readme.read_text()
    assert "stale table" not in text and "before" in text and "after" in text
    assert "| 03 | ✗ | loss falls | a -> b |" in text and "Profile `smoke`: 0 of 1 checks hold, 1 do not." in text
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="no checklist block"):
        guide.update_readme(readme, kept)


def _page(title, sections):
    body = f"<h1>{title}</h1>" + "".join(f'<h2 id="s{i}">{s}</h2><p>text</p>' for i, s in enumerate(sections))
    return f"<!DOCTYPE html><html><head></head><body>{body}</body></html>"


def test_book_links_pages_in_order_and_rebuilds_without_doubling(tmp_path):
    stems = ["00_setup_and_data", "01_frozen_clip_insensitivity", "03_mask_aware_finetuning"]
    for stem in stems[:2] + stems[2:]:
        (tmp_path / f"{stem}.html").write_text(_page(stem.upper(), ["Alpha", "Beta"]))
    (tmp_path / "report.html").write_text("<html><body><h1>Report</h1><h2>What you should see</h2></body></html>")
    index = book.build_book(tmp_path, stems + ["02_missing"], "smoke", "3 of 4 checks hold, 1 do not.")
    links = re.findall(r'<h2><a href="([^"]+)">', index.read_text())
    assert links == [f"{s}.html" for s in stems] + ["report.html"]
    assert "Sec. 4.2" in index.read_text() and "3 of 4 checks hold" in index.read_text()
    book.build_book(tmp_path, stems, "smoke")  # a second build (after --only) replaces the navigation
    middle = (tmp_path / "01_frozen_clip_insensitivity.html").read_text()
    assert middle.count('class="maft-book-nav"') == 2  # top and bottom, once each
    assert re.findall(r'maft-book-prev" href="([^"]+)"', middle) == ["00_setup_and_data.html"] * 2
    assert re.findall(r'maft-book-next" href="([^"]+)"', middle) == ["03_mask_aware_finetuning.html"] * 2
    assert 'href="#s0">Alpha</a>' in middle and 'href="#s1">Beta</a>' in middle
    report = (tmp_path / "report.html").read_text()
    assert 'maft-book-next' not in report and 'id="What-you-should-see"' in report
    assert 'href="#What-you-should-see">' in report
    first = (tmp_path / "00_setup_and_data.html").read_text()
    assert re.findall(r'maft-book-prev" href="([^"]+)"', first)[0] == "index.html"


def _write_notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell("value = 1            # a comment papermill's line parser gives up on\n"
                                       "overrides = []       # e.g. \"train.lr=1e-4\"\noutput_dir = '.'")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(source)]
    nbformat.write(nb, path)


def test_a_run_is_quiet_one_line_per_notebook(tmp_path, capfd):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    _write_notebook(nb_dir / "00_first.ipynb", "assert value == 2 and overrides == ['a=1']")
    _write_notebook(nb_dir / "01_second.ipynb", "print(value)")
    profile = tmp_path / "p.yaml"
    profile.write_text("value: 2\noverrides: [a=1]\n")
    notebooks.run_series(str(profile), output_dir=tmp_path / "out", notebook_dir=nb_dir, progress=True)
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if line.strip()]
    assert len(lines) == 2, lines
    assert re.fullmatch(r"\[1/2\] 00_first \.\.\. \d+ s", lines[0]) and lines[1].startswith("[2/2] 01_second ... ")
    assert (tmp_path / "out" / "index.html").is_file() and (tmp_path / "out" / "checklist.json").is_file()


def test_a_skipped_sam_notebook_lists_its_claim_as_not_measured():
    check, = checklist.sam_checks(None, "SAM checkpoint not found")
    assert check.passed is None and check.line() == ("– MAFT helps on SAM's proposals too (Table 5): not measured: "
                                                     "SAM checkpoint not found")
    rows = {"rows": [{"classifier": "SAM + frozen IP-CLIP", "hiou": 30.0}, {"classifier": "SAM + MAFT", "hiou": 28.0}]}
    assert checklist.sam_checks(rows)[0].passed is False


def test_a_comparison_never_prints_two_equal_numbers_with_a_strict_sign():
    rows = [{"classifier": "frozen IP-CLIP", "mask_awareness": 0.3921, "miou_unseen": 40.0, "hiou": 36.0},
            {"classifier": "MAFT IP-CLIP", "mask_awareness": 0.3864, "miou_unseen": 40.0, "hiou": 40.94}]
    ranks = checklist.zero_shot_checks(rows)[0]
    assert ranks.passed is False and ranks.detail.startswith("rho 0.386 < 0.392 (MAFT vs frozen)")
    assert checklist.zero_shot_checks(rows)[1].detail.startswith("mIoU unseen 40.0 = 40.0")
