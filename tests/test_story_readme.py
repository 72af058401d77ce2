"""The README's world section is generated from the reference story JSON kept in the repository."""
import json

import pytest

from maft.world import story_readme


def test_readme_world_section_equals_the_reference_story():
    story = json.loads(story_readme.REFERENCE_STORY.read_text())
    section = story_readme.readme_section(story_readme.README.read_text())
    assert section == story_readme.world_section(story), "README.md is stale: run `maft world readme`"
    # it names the proposals and the start layer behind the numbers
    assert f"label-free `{story['proposals']['test']}` proposals" in section
    for layer in story["at_start_layer"]:
        assert f"Table 4a at L = {layer}" in section
    assert f"{story['mean']['maft']['hiou']:.1f}" in section


def test_a_changed_number_is_caught(tmp_path):
    story = json.loads(story_readme.REFERENCE_STORY.read_text())
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{story_readme.BEGIN}\nold\n{story_readme.END}\nrest\n")
    path = tmp_path / "story.json"
    path.write_text(json.dumps(story))
    assert story_readme.update_readme(readme, path, check=True) is False
    story_readme.update_readme(readme, path)
    assert story_readme.update_readme(readme, path, check=True) is True
    assert readme.read_text().startswith("intro\n") and readme.read_text().endswith("\nrest\n")
    story["at_start_layer"]["8"]["mean"]["maft"]["hiou"] += 1.0  # a Table 4a number at the paper's L
    path.write_text(json.dumps(story))
    assert story_readme.update_readme(readme, path, check=True) is False
    with pytest.raises(ValueError, match="no world-story markers"):
        story_readme.readme_section("no markers here")


def test_the_world_config_uses_the_selected_start_layer():
    from maft.config import load

    story = json.loads(story_readme.REFERENCE_STORY.read_text())
    assert load("world")["model"]["start_layer"] == story["selected_start_layer"]
    if story.get("start_layer_sweep"):
        assert story["start_layer_sweep"]["selected"] == story["selected_start_layer"]
        assert story["start_layer_sweep"]["split"] == "val"


def test_below_readout_paragraph_reads_its_numbers_from_the_story():
    frozen = [{"start_layer": layer, "hiou": hiou} for layer, hiou in [(0, 36.7), (4, 36.1), (8, 35.8), (12, 3.5)]]
    sweep = {"rows": [{"start_layer": layer, "hiou": hiou} for layer, hiou in [(0, 43.0), (8, 44.0), (10, 27.0)]]}
    story = {"probe": {"class_token_reads_from": 8}, "frozen_start_layer": frozen, "start_layer_sweep": sweep,
             "at_start_layer": {"8": {"std": {"maft": {"hiou": 0.5}}}}}
    text = story_readme._below_readout_lines(story)[1]
    assert "Frozen IP-CLIP at L = 0, 4, 8: 35.8 to 36.7 hIoU" in text  # L = 12 is above the readout block
    assert "at L <= 8: 43.0 to 44.0 hIoU, a range comparable to" in text  # 1.0 <= 3 x 0.5
    sweep["rows"][0]["hiou"] = 42.4  # a range of 1.6 > 3 x 0.5
    assert "a range more than seed noise alone spans" in story_readme._below_readout_lines(story)[1]
    assert story_readme._below_readout_lines({"frozen_start_layer": frozen}) == []  # no readout block: nothing said
