"""The world CLIP kept in the repository: it is what the code would rebuild, and the rebuild is exact."""
import hashlib
import json

import pytest

from maft.world import pretrain as world_clip


def test_kept_checkpoint_matches_the_code():
    path = world_clip.kept_checkpoint_path()
    log = json.loads(path.with_name(path.name + ".json").read_text())
    rebuild = "maft world pretrain --out maft/assets/world_clip/maft-world-vit12.pt --force"
    assert log["rebuild"] == rebuild
    assert path.stat().st_size == log["bytes"] < 10 * 1024 * 1024  # the repository's limit: 10 MB
    assert hashlib.sha256(path.read_bytes()).hexdigest() == log["sha256"], "the kept file changed"
    assert log["settings"] == world_clip._settings(), f"pretraining defaults changed: run `{rebuild}`"
    current = world_clip.checkpoint_identity(world_clip._settings())
    for part in ("world", "data", "model", "tower", "model_name", "settings"):
        assert log["identity"][part] == current[part], f"{part} changed since the kept CLIP: run `{rebuild}`"
    assert world_clip.kept_checkpoint_matches()
    assert world_clip.ensure_world_clip() == path  # no pretraining: the kept file is used


@pytest.mark.slow
def test_kept_checkpoint_is_clearly_better_than_chance():
    result = world_clip.zero_shot_accuracy(world_clip.kept_checkpoint_path(), max_scenes=200)
    things, stuff = result["things"], result["stuff"]
    for accuracy in (things["accuracy_seen"], things["accuracy_unseen"]):
        assert accuracy > 4 * things["chance"], things  # chance 5 %
    assert stuff["accuracy_seen"] > 2 * stuff["chance"], stuff


def test_pretraining_is_bit_for_bit_reproducible(tmp_path):
    """Two short runs with the same settings write the same bytes (threads fixed by the settings)."""
    digests = [world_clip.pretrain_world_clip(out=tmp_path / f"run{i}.pt", steps=2, batch_size=8, warmup=1,
                                              progress=False)["sha256"] for i in range(2)]
    assert digests[0] == digests[1]
    other = world_clip.pretrain_world_clip(out=tmp_path / "other.pt", steps=2, batch_size=8, warmup=1, seed=1,
                                           progress=False)["sha256"]
    assert other != digests[0]  # and the seed matters


def test_kept_checkpoint_carries_its_probe_and_world_yaml_records_it():
    """Issue 19: the probe measured on the kept file is in its JSON, and world.yaml's targets are its values."""
    from maft.world import load_world_spec
    from maft.world.probe import TARGETS, recorded_probe

    path = world_clip.kept_checkpoint_path()
    probe = recorded_probe(path)
    assert probe is not None, "no full probe of this very file: run `maft world probe --record`"
    recorded = load_world_spec().raw["targets"]
    assert set(recorded) == set(TARGETS) == set(probe["targets"])
    for key, value in probe["targets"].items():
        assert recorded[key]["measured"] == value["measured"], key
        assert recorded[key]["target"] == value["target"] and recorded[key]["met"] == value["met"], key
