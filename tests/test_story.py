"""maft.world.story: the paper's Table 4 in the world, on label-free test proposals (a reduced run)."""
import json

import numpy as np
import pytest

from maft.config import load
from maft.world.story import ROWS, format_story, run_story

SELECTED = load("world")["model"]["start_layer"]  # the world config's L (selected on val, issue 19)


@pytest.fixture(scope="module")
def quick_story(tmp_path_factory):
    out = tmp_path_factory.mktemp("story") / "story.json"
    run_story(seeds=2, out=out, quick=True, progress=False)
    return out, json.loads(out.read_text())


def test_the_story_json_has_the_interface_other_checks_read(quick_story):
    _, story = quick_story
    assert story["proposals"]["train"] == "gt" and story["proposals"]["test"] == "segments"
    for summary in (story["mean"], story["std"]):
        for row in ("crop", "frozen", "ma_only", "maft"):
            assert {"miou_seen", "miou_unseen", "hiou", "mask_awareness", "gflops"} <= set(summary[row])
        assert [set(p) for p in summary["iterations"]] == [{"iterations", "miou_seen", "miou_unseen", "hiou"}] * 2
        assert {p["start_layer"] for p in summary["start_layer"]} == {0, SELECTED}
        assert all({"start_layer", "miou_seen", "miou_unseen", "hiou"} <= set(p) for p in summary["start_layer"])
    assert set(story["per_seed"]) == {"0", "1"}


def test_means_and_stds_are_over_the_seeds(quick_story):
    _, story = quick_story
    for row in ROWS:
        for key in ("hiou", "mask_awareness"):
            values = [story["per_seed"][s][row][key] for s in ("0", "1")]
            assert story["mean"][row][key] == pytest.approx(np.mean(values))
            assert story["std"][row][key] == pytest.approx(np.std(values, ddof=1))


def test_frozen_rows_are_segmented_once_and_the_default_layer_is_the_maft_run(quick_story):
    out, story = quick_story
    seeds = story["per_seed"]
    for row in ("crop", "frozen"):  # no randomness left on label-free proposals: the same numbers
        assert seeds["0"][row]["hiou"] == seeds["1"][row]["hiou"] and story["std"][row]["hiou"] == 0
    for seed, entries in seeds.items():
        at_default = next(p for p in entries["start_layer"] if p["start_layer"] == SELECTED)
        assert at_default["hiou"] == entries["maft"]["hiou"]
        assert entries["iterations"][-1]["hiou"] == entries["maft"]["hiou"]  # the last point is the final model
        written = json.loads((out.parent / "story_runs" / f"seed{seed}" / "maft.json").read_text())
        assert written["hiou"] == entries["maft"]["hiou"] and written["proposals"] == "segments"
        assert json.loads((out.parent / "story_runs" / f"seed{seed}" / "maft_gt.json").read_text())["proposals"] == "gt"
    # crop-and-classify runs the tower once per proposal: dearer than IP-CLIP's single pass
    assert story["mean"]["crop"]["gflops"] > story["mean"]["frozen"]["gflops"] == story["mean"]["maft"]["gflops"]


def test_the_paper_numbers_ride_along_and_the_text_table_prints(quick_story):
    _, story = quick_story
    assert story["paper"]["table_4a"]["maft"]["hiou"] == 44.4 and story["paper"]["table_4a"]["crop"]["gflops"] == 1127.0
    assert [p["start_layer"] for p in story["paper"]["start_layer"]] == [0, 2, 4, 6, 8, 10]
    assert {p["start_layer"] for p in story["context"]} >= {0, SELECTED, 12}
    assert story["selected_start_layer"] == SELECTED and set(story["at_start_layer"]) == {str(SELECTED)}
    text = format_story(story)
    assert text.splitlines()[1].startswith("crop") and "start layer L" in text


def test_rows_are_told_at_the_selected_and_at_the_papers_start_layer(tmp_path):
    """Issue 19: a config whose L is not the paper's 8 tells the Table 4a rows at both."""
    out = tmp_path / "story.json"
    sweep = {"split": "val", "selected": 10, "rows": []}
    story = run_story(seeds=1, out=out, quick=True, progress=False, overrides=["model.start_layer=10"],
                      start_layers=(), frozen_start_layers=(12,), points=1, sweep=sweep, paper_start_layer=8)
    assert story["selected_start_layer"] == 10 and story["paper_start_layer"] == 8
    assert set(story["at_start_layer"]) == {"10", "8"} and story["start_layer_sweep"] == sweep
    for layer, told in story["at_start_layer"].items():
        assert set(ROWS) <= set(told["mean"]) and set(ROWS) <= set(told["std"])
        assert [p["start_layer"] for p in told["mean"]["start_layer"]] == [int(layer)]
        assert told["mean"]["iterations"][-1]["hiou"] == told["mean"]["maft"]["hiou"]
    at_10, at_8 = story["at_start_layer"]["10"], story["at_start_layer"]["8"]
    assert at_10["mean"]["maft"] == story["mean"]["maft"]  # the top-level rows are the selected L's
    assert at_8["mean"]["crop"]["hiou"] == at_10["mean"]["crop"]["hiou"]  # crop has no start layer
    assert at_8["mean"]["frozen"]["hiou"] != at_10["mean"]["frozen"]["hiou"] or at_8["mean"]["maft"] != at_10["mean"]["maft"]
    assert (tmp_path / "story_runs" / "L8_seed0" / "maft.json").is_file()
