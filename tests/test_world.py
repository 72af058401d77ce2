"""The offline world: scenes, labels, captions, the tiny CLIP and a reduced story."""
import json
import math
import re

import numpy as np
import pytest
import torch

from maft.world import WorldDataset, load_world_spec, render_scene, shape_mask


@pytest.fixture(scope="module")
def spec():
    return load_world_spec()


def caption_classes(spec, caption: str) -> set[int]:
    """Classes whose name occurs in a caption as whole words."""
    return {i for i, name in enumerate(spec.classes) if re.search(rf"\b{re.escape(name)}\b", caption)}


def test_spec_classes_and_split(spec):
    assert 20 <= len(spec.classes) <= 40
    assert spec.classes[0] == "red blob"  # things first: colour-major colour x pattern
    assert spec.classes[len(spec.thing_ids)] == "sky"  # then stuff
    unseen_things = [c for c in spec.unseen if c in spec.thing_ids]
    unseen_stuff = [c for c in spec.unseen if c in spec.stuff_ids]
    assert unseen_things and unseen_stuff  # like COCO-Stuff: things and stuff unseen
    # every colour and every pattern of an unseen thing also occurs in a seen thing
    for c in unseen_things:
        colour, pattern = spec.thing_parts(c)
        seen_parts = [spec.thing_parts(s) for s in spec.seen if s in spec.thing_ids]
        assert any(col == colour for col, _ in seen_parts) and any(pat == pattern for _, pat in seen_parts)


def test_scene_is_a_pure_function_of_seed_split_index(spec):
    later = render_scene(spec, "train", 7)
    for i in range(7):  # rendering others first must not matter
        render_scene(spec, "train", i)
    again = render_scene(spec, "train", 7)
    assert np.array_equal(later.image, again.image) and np.array_equal(later.label, again.label)
    assert later.caption == again.caption
    other = render_scene(spec, "val", 7)
    assert not np.array_equal(later.image, other.image)  # splits have their own streams


def test_shape_areas_match_geometry():
    # circle of radius 10: pi r^2; square of half-side 0.85 r: (1.7 r)^2; pixel-centre sampling
    circle, _, _ = shape_mask("circle", 32.0, 32.0, 10.0, 0.0)
    square, _, _ = shape_mask("square", 32.3, 32.3, 10.0, 0.0)
    assert abs(circle.sum() - math.pi * 100) / (math.pi * 100) < 0.03
    assert abs(square.sum() - 17.0 ** 2) / 17.0 ** 2 < 0.08
    star, _, _ = shape_mask("star", 32.0, 32.0, 10.0, 0.0)
    assert 0 < star.sum() < circle.sum()


def test_label_maps_are_exact(spec):
    colours = spec.raw["things"]["colours"]
    jitter = spec.raw["things"]["colour_jitter"]
    for index in range(30):
        scene = render_scene(spec, "train", index)
        present = set(np.unique(scene.label).tolist())
        assert present == {t["class_id"] for t in scene.things} | set(scene.stuff)
        (low, high), (bands_low, bands_high) = spec.scene_counts("train")
        assert scene.image.shape == (spec.canvas_size, spec.canvas_size, 3)
        assert low <= len(scene.things) <= high and 1 <= len(scene.stuff) <= bands_high
        for thing in scene.things:
            pixels = scene.image[scene.label == thing["class_id"]].astype(float)
            assert len(pixels) == thing["area"] >= spec.raw["things"]["min_pixels"]
            colour, pattern = spec.thing_parts(thing["class_id"])
            params = spec.raw["things"]["patterns"][pattern]
            base = np.array(colours[colour], float)
            second = np.array(params.get("dot_colour", base * params.get("dark", 1.0)), float)
            # each pixel: the colour or the pattern's second colour, + instance jitter (on the colour,
            # so scaled on its dark variant), lighting (<= 12) and fine noise (sigma 3), clipped to 0..255
            bound = jitter + 12 + 18

            def near(reference):
                low, high = np.clip(reference - bound, 0, 255), np.clip(reference + bound, 0, 255)
                return ((pixels >= low) & (pixels <= high)).all(1)

            on_base, on_second = near(base), near(second)
            assert (on_base | on_second).all()
            share = (~on_base).mean()  # pixels showing only the second colour
            if params["kind"] == "solid":
                assert on_base.all()
            else:
                assert 0.05 < share < 0.8, (pattern, share)  # both colours of the pattern show
    probe = render_scene(spec, "stuff_only", 3)
    assert np.unique(probe.label).tolist() == [spec.stuff_ids[3]]
    single = render_scene(spec, "single", 5)
    assert [t["class_id"] for t in single.things] == [spec.thing_ids[5]]


def test_canvas_is_larger_at_the_same_pixel_scale(spec):
    """Segmentation scenes: a larger canvas with things of the pretraining scenes' pixel size (not a
    zoom), and more of them; pretraining scenes and probes stay at the CLIP's pretraining size."""
    assert spec.scene_size("pretrain") == spec.scene_size("single") == spec.image_size == 64
    assert spec.scene_size("train") == spec.scene_size("test") == spec.canvas_size == 128
    areas = {}
    for split in ("pretrain", "test"):
        scenes = [render_scene(spec, split, i) for i in range(60)]
        assert all(s.image.shape[0] == spec.scene_size(split) for s in scenes)
        areas[split] = np.mean([t["full_area"] for s in scenes for t in s.things])
        areas[split + "_count"] = np.mean([len(s.things) for s in scenes])
    # the same radius range in pixels: mean full area within 15 % (a 2x zoom would give 4x)
    assert abs(areas["test"] / areas["pretrain"] - 1) < 0.15, areas
    assert areas["test_count"] > 1.5 * areas["pretrain_count"], areas


def test_captions_name_exactly_the_present_classes(spec):
    for split in ("pretrain", "train", "single", "stuff_only"):
        for index in range(40):
            scene = render_scene(spec, split, index)
            assert caption_classes(spec, scene.caption) == set(np.unique(scene.label).tolist()), scene.caption


def test_dataset_contract_and_train_view(spec):
    from maft.data.datasets import build_dataset

    evaluation = build_dataset("world", "train", mode="eval", max_images=12)
    training = build_dataset("world", "train", mode="train", max_images=12)
    assert isinstance(evaluation, WorldDataset) and len(evaluation) == 12
    assert evaluation.name == "world" and evaluation.ignore_index == 255
    assert sorted(evaluation.seen + evaluation.unseen) == list(range(len(evaluation.classes)))
    saw_unseen = False
    for i in range(12):
        a, b = evaluation[i], training[i]
        size = evaluation.spec.scene_size("train")
        assert a["image"].dtype == torch.uint8 and a["image"].shape == (3, size, size)
        assert a["label"].dtype == torch.int64 and a["label"].shape == (size, size)
        assert a["id"] == b["id"] and torch.equal(a["image"], b["image"])
        unseen = torch.isin(a["label"], torch.tensor(evaluation.unseen))
        saw_unseen |= bool(unseen.any())
        assert not torch.isin(b["label"], torch.tensor(training.unseen)).any()
        assert torch.equal(b["label"] == 255, unseen)
        assert torch.equal(b["label"][~unseen], a["label"][~unseen])
    assert saw_unseen


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="nope"):
        WorldDataset("nope")
    with pytest.raises(ValueError, match="mode"):
        WorldDataset("train", mode="test")
    with pytest.raises(IndexError):
        WorldDataset("val", max_images=2)[2]
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_world_spec("missing.yaml")


def test_world_clip_config_loads_through_load_clip():
    from maft.clip import load_clip
    from maft.world.pretrain import MODEL_NAME

    model, _, tokenizer = load_clip(MODEL_NAME)
    assert len(model.visual.transformer.resblocks) == 12  # the paper's depth (issue 11)
    assert model.visual.grid_size == (8, 8)

    assert tokenizer(["a photo of a red circle on the grass."]).shape[0] == 1


def test_a_few_pretraining_steps_reduce_the_contrastive_loss(tmp_path):
    from maft.clip import load_clip
    from maft.world.pretrain import MODEL_NAME, captioned_batch, contrastive_loss, pretrain_world_clip

    torch.manual_seed(0)
    log = pretrain_world_clip(out=tmp_path / "clip.pt", steps=12, batch_size=24, warmup=1, progress=False)
    images, captions = captioned_batch(WorldDataset("pretrain"), 0, 24)
    losses = {}
    for name, weights in (("before", None), ("after", tmp_path / "clip.pt")):
        torch.manual_seed(0)  # the random init the run started from
        model, _, tokenizer = load_clip(MODEL_NAME, pretrained=weights)
        with torch.no_grad():
            losses[name] = contrastive_loss(model, tokenizer, images, captions).item()
    assert losses["after"] < losses["before"] - 0.1, losses
    assert json.loads((tmp_path / "clip.pt.json").read_text())["losses"] == log["losses"]
