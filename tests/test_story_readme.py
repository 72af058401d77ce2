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
