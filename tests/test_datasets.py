"""Class specs (maft.data.class_specs) and dataset loading (maft.data.datasets) on the shared real samples.

Expected numbers come from /work/shared/data/*/class_stats.md (parsed below) and from pixels read
directly with PIL; bad inputs are built in tmp_path.
"""
from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maft.data.class_specs import available_datasets, check_class_names, load_class_spec, spec_from_dict
from maft.data.datasets import DATASETS, SegDataset, build_dataset, class_image_counts, classes_per_image, read_image
from maft.predict import load_image
from maft.utils import paths

SHARED = paths.REPO_ROOT.parent / "shared" / "data"
VOC_UNSEEN = ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
COCO_UNSEEN = ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "clouds",
               "grass", "playingfield", "river", "road", "tree", "wall-concrete"]


def stats_rows(folder: str) -> list[list[str]]:
    """Table rows of ``<folder>/class_stats.md`` whose first cell is an integer index."""
    rows = []
    for line in (SHARED / folder / "class_stats.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and re.fullmatch(r"\d+", cells[0]):
            rows.append(cells)
    return rows


@pytest.fixture(autouse=True)
def shared_data_only(monkeypatch):
    """Resolve dataset roots to ../shared/data whatever MAFT_DATA or data/ hold on this machine."""
    monkeypatch.delenv("MAFT_DATA", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", SHARED.parent.parent / "repo-without-data")  # ../shared/data stays


# ------------------------------------------------------------------------------------ class specs


@pytest.mark.parametrize("name, num_classes, num_unseen, ignore_index", [
    ("voc20", 20, 5, 255), ("coco_stuff171", 171, 15, 255), ("ade150", 150, 0, 255),
    ("ade847", 847, 275, 65535), ("pc59", 59, 0, 255), ("pc459", 459, 0, 65535)])
def test_class_specs_have_the_benchmark_sizes(name, num_classes, num_unseen, ignore_index):
    spec = load_class_spec(name)
    assert spec.num_classes == num_classes and len(set(spec.classes)) == num_classes
    assert len(spec.unseen_ids) == num_unseen and len(spec.seen_ids) == num_classes - num_unseen
    assert spec.ignore_index == ignore_index
    assert spec.protocol == ("zero_shot" if num_unseen else "open_vocabulary")


def test_available_datasets_are_the_six_benchmarks():
    assert available_datasets() == sorted(DATASETS)


def test_zero_shot_splits_and_label_maps():
    voc = load_class_spec("voc20")
    assert [voc.classes[i] for i in voc.unseen_ids] == VOC_UNSEEN and voc.unseen_ids == [15, 16, 17, 18, 19]
    assert voc.label_map[0] == 255 and voc.label_map[255] == 255 and voc.label_map[1] == 0
    assert voc.label_map[20] == 19

    coco = load_class_spec("coco_stuff171")
    assert sorted(coco.unseen) == sorted(COCO_UNSEEN)
    # stuffthingmaps value = official id - 1: stop sign (id 13) -> 12, banner (92) -> 91, wood (182) -> 181
    assert coco.classes[coco.label_map[12]] == "stop sign" and coco.label_map[12] == 11
    assert coco.classes[coco.label_map[91]] == "banner" and coco.label_map[91] == 80
    assert coco.label_map[181] == 170 and coco.classes[170] == "wood"
    for unused in (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90, 255):  # unused ids and unlabeled
        assert coco.label_map[unused] == 255

    ade = load_class_spec("ade150")
    assert ade.classes[0] == "wall" and ade.classes[149] == "flag"
    assert ade.label_map[0] == 255 and ade.label_map[150] == 149

    ade847 = load_class_spec("ade847")
    assert ade847.classes[:3] == ("wall", "building, edifice", "sky")
    assert ade847.label_map[2978] == 0 and ade847.label_map[3148] == 846 and "catwalk" in ade847.unseen
    assert len(ade847.seen_ids) == 572

    pc59, pc459 = load_class_spec("pc59"), load_class_spec("pc459")
    for raw, k in pc59.label_map.items():  # each PC-59 raw id names the same class in PC-459
        if k != 255:
            expected = "table" if pc59.classes[k] == "diningtable" else pc59.classes[k]
            assert pc459.classes[pc459.label_map[raw]] == expected


def test_class_255_is_a_class_when_there_are_more_than_255():
    spec = load_class_spec("pc459")
    raw = np.array([[0, 256, 459]])
    assert spec.to_contiguous(raw).tolist() == [[65535, 255, 458]]
    ade = load_class_spec("ade847")
    # unlisted ADE20K-full ids (here 5 and 9999) are not benchmark classes -> ignore
    assert ade.to_contiguous(np.array([2978, 5, 9999, 0])).tolist() == [0, 65535, 65535, 65535]


def test_unknown_spec_names_the_available_ones():
    with pytest.raises(ValueError, match="voc20"):
        load_class_spec("voc21")
    with pytest.raises(ValueError, match="unknown dataset 'voc21'"):
        build_dataset("voc21", "val")


def _spec_dict(**changes):
    data = {"name": "toy", "classes": ["a", "b", "c"], "unseen": ["c"], "ignore_index": 255,
            "label_map": {"raw_ids": [1, 2, 3], "ignore": [0], "unlisted": "error"}, "folders": ["toy"]}
    data.update(changes)
    return data


@pytest.mark.parametrize("changes, message", [
    ({"classes": []}, "classes is empty"),
    ({"classes": ["a", "b", "a"]}, r"duplicate class names: \['a'\]"),
    ({"unseen": ["z"]}, r"unseen classes \['z'\] are not in classes"),
    ({"label_map": {"raw_ids": [1, 2]}}, "raw_ids has 2 entries for 3 classes"),
    ({"label_map": {"raw_ids": [1, 2, 3], "ignore": [3]}}, r"raw label values \[3\] are listed more than once"),
    ({"ignore_index": 2}, "ignore_index 2 collides"),
    ({"label_map": {"raw_ids": [1, 2, 3], "unlisted": "keep"}}, "unlisted must be one of"),
])
def test_bad_spec_raises_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message) as error:
        spec_from_dict(_spec_dict(**changes), source="toy.yaml")
    assert "toy.yaml" in str(error.value)


def test_toy_spec_maps_values_and_rejects_unknown_ones():
    spec = spec_from_dict(_spec_dict())
    assert spec.to_contiguous(np.array([[0, 1], [2, 3]])).tolist() == [[255, 0], [1, 2]]
    assert spec.to_contiguous(np.array([3, 1]), drop_unseen=True).tolist() == [255, 0]
    with pytest.raises(ValueError, match=r"m\.png: label values \[4, 300\]"):
        spec.to_contiguous(np.array([1, 4, 300]), source="m.png")


@pytest.mark.parametrize("names, message", [
    ([], "is empty"), (["cat", "dog", "cat"], r"duplicate class names: \['cat'\]"), ("cat", "single string"),
    (["cat", " "], "empty or non-string")])
def test_check_class_names(names, message):
    with pytest.raises(ValueError, match=message):
        check_class_names(names, "class_names")
    assert check_class_names(("cat", "dog")) == ["cat", "dog"]


def test_spec_and_dataset_pickle():
    dataset = build_dataset("voc20", "val", max_images=2)
    copy = pickle.loads(pickle.dumps(dataset))  # DataLoader workers started with spawn pickle datasets
    assert copy.spec == dataset.spec and torch.equal(copy[1]["label"], dataset[1]["label"])


# ------------------------------------------------------------------------------ shared samples


def test_voc_sample_dict_and_known_pixels():
    dataset = build_dataset("voc20", "train")
    assert (dataset.name, dataset.split, len(dataset), dataset.ignore_index) == ("voc20", "train", 330, 255)
    assert dataset.unseen == [15, 16, 17, 18, 19] and dataset.seen == list(range(15))
    sample = dataset[0]
    assert sample["id"] == "2007_000032"
    assert sample["image"].dtype == torch.uint8 and sample["image"].shape == (3, 281, 500)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == (281, 500)
    assert sample["image_path"].endswith("images/train/2007_000032.jpg")
    assert sample["label_path"].endswith("masks/train/2007_000032.png")
    rgb = np.array(Image.open(sample["image_path"]).convert("RGB"))
    assert torch.equal(sample["image"], torch.from_numpy(rgb).permute(2, 0, 1))
    label = sample["label"]
    # raw values read with PIL: (131,229)=1 aeroplane, (204,206)=15 person, (143,437)=0 bg, (131,374)=255 void
    assert [label[131, 229].item(), label[204, 206].item(), label[143, 437].item(), label[131, 374].item()] == \
        [0, 14, 255, 255]
    assert int((label == 0).sum()) == 4734 and int((label == 14).sum()) == 866

    val = {s["id"]: s for s in (build_dataset("voc20", "val")[i] for i in (0, 4))}
    assert val["2007_000033"]["label"][183, 188].item() == 0  # aeroplane
    tv = build_dataset("voc20", "train")[1]
    assert tv["id"] == "2007_000039" and tv["label"][175, 261].item() == 19  # raw 20 = tvmonitor


@pytest.mark.parametrize("split, column", [("train", 3), ("val", 5)])
def test_voc_class_image_counts_match_class_stats(split, column):
    dataset = build_dataset("voc20", split)
    present = classes_per_image(dataset, progress=False)
    counts = class_image_counts(dataset, present=present)
    expected = {row[1]: int(row[column]) for row in stats_rows("voc2012") if 1 <= int(row[0]) <= 20}
    assert counts == expected
    with_unseen = sum(bool(np.isin(ids, dataset.unseen).any()) for ids in present)
    assert with_unseen == {"train": 87, "val": 107}[split]


def test_voc_train_view_maps_exactly_the_unseen_pixels_to_ignore():
    evaluation = build_dataset("voc20", "train")
    training = build_dataset("voc20", "train", mode="train")
    changed_images = 0
    for index in range(len(training)):
        eval_label, train_label = evaluation.label_array(index), training.label_array(index)
        unseen = np.isin(eval_label, training.unseen)
        assert not np.isin(train_label, training.unseen).any()
        assert (train_label[unseen] == 255).all() and (train_label[~unseen] == eval_label[~unseen]).all()
        changed_images += bool(unseen.any())
    assert changed_images == 87
    assert class_image_counts(training, progress=False)["sheep"] == 0


def test_coco128_loads_as_coco_stuff_train_with_contiguous_ids():
    dataset = build_dataset("coco_stuff171", "train")
    assert dataset.folder.name == "coco128seg" and dataset.labels == "contiguous" and len(dataset) == 128
    sample = dataset[0]
    assert sample["id"] == "000000000009" and sample["label"].shape == (480, 640)
    label = sample["label"]
    # raw (= contiguous) values read with PIL: 45 bowl, 49 orange, 50 broccoli, 255 unlabeled
    assert [label[279, 267].item(), label[63, 428].item(), label[360, 380].item(), label[167, 29].item()] == \
        [45, 49, 50, 255]
    assert [dataset.classes[i] for i in (45, 49, 50)] == ["bowl", "orange", "broccoli"]

    present = classes_per_image(dataset, progress=False)
    counts = class_image_counts(dataset, present=present)
    expected = {row[1]: int(row[3]) for row in stats_rows("coco128seg") if int(row[0]) < 80}  # images column
    assert {k: v for k, v in counts.items() if v} == expected
    assert sum(bool(np.isin(ids, dataset.unseen).any()) for ids in present) == 18

    training = build_dataset("coco_stuff171", "train", mode="train")
    assert not any(np.isin(training.label_array(i), training.unseen).any() for i in range(len(training)))


def test_open_vocabulary_protocol_maps_no_class_to_ignore_and_zero_shot_exactly_the_unseen():
    spec = load_class_spec("coco_stuff171")
    ids = np.arange(171)
    zero_shot = build_dataset("coco_stuff171", "train", mode="train")
    open_vocabulary = build_dataset("coco_stuff171", "train", mode="train", protocol="open_vocabulary")
    # every contiguous class id through each training view's table (the shared sample stores contiguous ids)
    assert (open_vocabulary.map_labels(ids) == ids).all()
    ignored = ids[zero_shot.map_labels(ids) == 255]
    assert sorted(ignored.tolist()) == spec.unseen_ids and len(ignored) == 15
    assert [spec.classes[i] for i in ignored] == ["cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot",
                                                  "scissors", "cardboard", "clouds", "grass", "playingfield",
                                                  "river", "road", "tree", "wall-concrete"]
    assert open_vocabulary.seen == list(range(171)) and open_vocabulary.unseen == []
    assert len(zero_shot.seen) == 156 and zero_shot.unseen == spec.unseen_ids
    # on the images: 18 of the 128 hold an unseen thing; the open-vocabulary view keeps all of their pixels
    evaluation = build_dataset("coco_stuff171", "train")
    kept = 0
    for index in range(len(evaluation)):
        label = evaluation.label_array(index)
        assert (open_vocabulary.label_array(index) == label).all()
        kept += bool(np.isin(label, spec.unseen_ids).any())
    assert kept == 18
    with pytest.raises(ValueError, match="data.protocol must be one of zero_shot, open_vocabulary"):
        build_dataset("coco_stuff171", "train", protocol="openvocab")
    with pytest.raises(ValueError, match="world dataset has the zero-shot protocol only"):
        build_dataset("world", "train", protocol="open_vocabulary")


def test_prompt_names_follow_the_authors_registration_and_display_names_stay():
    voc = load_class_spec("voc20")
    assert voc.classes[15] == "pottedplant" and voc.classes[19] == "tvmonitor"       # display, metrics
    assert voc.prompt_names[15] == "potted plant" and voc.prompt_names[19] == "tv"   # text prompts
    assert voc.prompt_names[10] == "diningtable"  # ZegFormer and the authors keep it glued
    pc459 = load_class_spec("pc459")
    assert pc459.prompt_names[2] == "air conditioner" and pc459.classes[2] == "airconditioner"
    assert sum(a != b for a, b in zip(pc459.classes, pc459.prompt_names)) == 94
    ade150 = load_class_spec("ade150")
    assert ade150.prompt_names[89] == "tv" and ade150.prompt_names[8] == "window"
    assert sum(a != b for a, b in zip(ade150.classes, ade150.prompt_names)) == 42
    for name in ("coco_stuff171", "pc59", "ade847"):  # checked equal to the authors' names
        spec = load_class_spec(name)
        assert spec.prompt_names == spec.classes, name
    assert build_dataset("voc20", "val").prompts[19] == "tv"
    with pytest.raises(ValueError, match="prompts name classes that are not in classes"):
        spec_from_dict({"name": "x", "classes": ["a", "b"], "label_map": {"raw_ids": [1, 2]},
                        "prompts": {"c": "d"}})
    with pytest.raises(ValueError, match="prompt names has duplicate class names"):
        spec_from_dict({"name": "x", "classes": ["a", "b"], "label_map": {"raw_ids": [1, 2]},
                        "prompts": {"a": "b"}})


def test_grayscale_image_is_converted_to_three_channels():
    dataset = build_dataset("coco_stuff171", "train")
    index = [item.id for item in dataset.items].index("000000000086")
    image = dataset[index]["image"]
    gray = np.array(Image.open(dataset.items[index].image_path))
    assert Image.open(dataset.items[index].image_path).mode == "L"
    assert image.shape == (3, *gray.shape)
    assert all(torch.equal(image[c], torch.from_numpy(gray)) for c in range(3))


def test_ade150_sample_pixels_and_counts():
    dataset = build_dataset("ade150", "val")
    assert len(dataset) == 3 and dataset.unseen == []
    label = dataset[0]["label"]
    # raw values read with PIL: (407,141)=1 wall, (274,224)=2 building, (104,84)=3 sky, (402,576)=18 plant, (386,344)=0
    assert [label[407, 141].item(), label[274, 224].item(), label[104, 84].item(), label[402, 576].item(),
            label[386, 344].item()] == [0, 1, 2, 17, 255]
    counts = class_image_counts(dataset, progress=False)
    expected = {dataset.classes[int(row[0]) - 1]: int(row[2]) for row in stats_rows("ade20k150") if int(row[0]) > 0}
    assert {k: v for k, v in counts.items() if v} == expected
    assert torch.equal(build_dataset("ade150", "val", mode="train")[0]["label"], label)  # nothing is unseen


def test_flat_sample_has_only_its_split():
    with pytest.raises(FileNotFoundError, match="only the 'train' split; split 'val' does not exist"):
        build_dataset("coco_stuff171", "val")
    with pytest.raises(FileNotFoundError, match=r"no split 'test'; available splits: \['train', 'val'\]"):
        build_dataset("voc20", "test")


def test_max_images_and_mode_arguments():
    assert [s.id for s in build_dataset("voc20", "val", max_images=3).items] == \
        ["2007_000033", "2007_000042", "2007_000061"]
    with pytest.raises(ValueError, match="max_images"):
        build_dataset("voc20", "val", max_images=0)
    with pytest.raises(ValueError, match="mode must be one of"):
        build_dataset("voc20", "val", mode="test")


def test_world_is_built_by_maft_world():
    world = build_dataset("world", "train", max_images=2)
    assert len(world) == 2 and world[0]["label"].dtype == torch.int64


# ----------------------------------------------------------------------------------- bad inputs


def write_pair(folder: Path, split: str | None, id_: str, image, mask) -> tuple[Path, Path]:
    """Write images/<split>/<id>.jpg (``image``: HxWx3/HxW/HxWx4 array) and masks/<split>/<id>.png."""
    images = folder / "images" / (split or "")
    masks = folder / "masks" / (split or "")
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    image_path = images / f"{id_}.{'png' if np.asarray(image).ndim == 3 and np.asarray(image).shape[2] == 4 else 'jpg'}"
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(image_path)
    mask_path = masks / f"{id_}.png"
    Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(mask_path)
    return image_path, mask_path


def rgb(height=8, width=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_image_and_mask_size_mismatch_names_both_files(tmp_path):
    image, mask = write_pair(tmp_path / "voc2012", "val", "a", rgb(8, 8), np.zeros((6, 8)))
    dataset = build_dataset("voc20", "val", root=tmp_path)
    with pytest.raises(ValueError, match="sizes differ") as error:
        dataset[0]
    assert str(image) in str(error.value) and str(mask) in str(error.value)


def test_truncated_and_corrupt_images_name_the_file(tmp_path):
    image, _ = write_pair(tmp_path / "voc2012", "val", "a", rgb(64, 64), np.zeros((64, 64)))
    write_pair(tmp_path / "voc2012", "val", "b", rgb(8, 8), np.zeros((8, 8)))
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    (tmp_path / "voc2012" / "images" / "val" / "b.jpg").write_text("not an image")
    dataset = build_dataset("voc20", "val", root=tmp_path)
    with pytest.raises(ValueError, match=r"cannot read image .*a\.jpg.*truncated"):
        dataset[0]
    with pytest.raises(ValueError, match=r"cannot read image .*b\.jpg"):
        dataset[1]


def test_mask_values_outside_the_label_map_are_named(tmp_path):
    mask = np.zeros((8, 8))
    mask[0, :3] = [21, 1, 200]
    _, mask_path = write_pair(tmp_path / "voc2012", "val", "a", rgb(), mask)
    dataset = build_dataset("voc20", "val", root=tmp_path)
    with pytest.raises(ValueError, match=r"label values \[21, 200\] are not in the label map of voc20") as error:
        dataset[0]
    assert str(mask_path) in str(error.value)
    with pytest.raises(ValueError, match=str(mask_path)):
        class_image_counts(dataset, progress=False)


def test_colour_mask_is_rejected(tmp_path):
    _, mask_path = write_pair(tmp_path / "voc2012", "val", "a", rgb(), np.zeros((8, 8)))
    Image.fromarray(rgb()).save(mask_path)
    with pytest.raises(ValueError, match=r"mode 'RGB'.*single-channel"):
        build_dataset("voc20", "val", root=tmp_path)[0]


def test_rgba_image_is_converted(tmp_path):
    rgba = np.concatenate([rgb(), np.full((8, 8, 1), 7, np.uint8)], axis=2)
    write_pair(tmp_path / "voc2012", "val", "a", rgba, np.ones((8, 8)))
    sample = build_dataset("voc20", "val", root=tmp_path)[0]
    assert sample["image_path"].endswith("a.png")
    assert torch.equal(sample["image"], torch.from_numpy(rgba[..., :3]).permute(2, 0, 1))
    assert (sample["label"] == 0).all()


def test_16bit_grayscale_image_is_scaled_by_its_range(tmp_path):
    # A 16-bit grayscale PNG (PIL mode I;16): PIL's own RGB conversion makes every value above 255 white.
    values = np.array([[0, 128, 129, 257, 1000, 30000, 65279, 65535]] * 8, dtype=np.uint16)
    image_path, _ = write_pair(tmp_path / "voc2012", "val", "a", rgb(), np.zeros((8, 8)))
    image_path.unlink()
    wide = image_path.with_suffix(".png")
    Image.fromarray(values).save(wide)
    assert Image.open(wide).mode == "I;16"
    expected = torch.tensor([0, 0, 1, 1, 4, 117, 254, 255], dtype=torch.uint8)  # round(v * 255 / 65535)
    sample = build_dataset("voc20", "val", root=tmp_path)[0]
    assert sample["image"].shape == (3, 8, 8) and sample["image"].dtype == torch.uint8
    assert all(torch.equal(sample["image"][c, 0], expected) for c in range(3))
    pixels, _ = load_image(wide)  # what maft predict reads
    assert torch.equal(pixels, sample["image"])


def test_wide_integer_and_float_images(tmp_path):
    as_int = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 65535], [257, 514]], dtype=np.int32)).save(as_int)
    assert Image.open(as_int).mode == "I"
    assert read_image(as_int)[0].tolist() == [[0, 255], [1, 2]]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(as_int)
    with pytest.raises(ValueError, match=r"int32.tif is a 32-bit integer image with values in \[0, 70000\]"):
        read_image(as_int)
    as_float = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(as_float)
    assert Image.open(as_float).mode == "F"
    assert read_image(as_float)[1].tolist() == [[0, 128, 255]]
    Image.fromarray(np.array([[0.0, 2.0]], dtype=np.float32)).save(as_float)
    with pytest.raises(ValueError, match=r"float.tif is a float image with values outside \[0, 1\]"):
        read_image(as_float)


def test_missing_folders_and_masks(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "voc2012")):
        build_dataset("voc20", "val", root=tmp_path)
    (tmp_path / "voc2012" / "images" / "val").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no masks/ folder"):
        build_dataset("voc20", "val", root=tmp_path)
    write_pair(tmp_path / "voc2012", "val", "a", rgb(), np.zeros((8, 8)))
    (tmp_path / "voc2012" / "masks" / "val" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"have no mask, e\.g\. .*a\.jpg -> missing .*a\.png"):
        build_dataset("voc20", "val", root=tmp_path)


def test_16bit_masks_for_pc459(tmp_path):
    folder = tmp_path / "pascal_context"
    write_pair(folder, "val", "x", rgb(2, 3), np.zeros((2, 3)))
    raw = np.array([[0, 1, 256], [397, 459, 2]], dtype=np.uint16)
    Image.fromarray(raw).save(folder / "masks" / "val" / "x.png")
    assert build_dataset("pc459", "val", root=tmp_path)[0]["label"].tolist() == [[65535, 0, 255], [396, 458, 1]]
    assert build_dataset("pc59", "val", root=tmp_path)[0]["label"].tolist() == [[255, 255, 255], [49, 255, 0]]


def test_dataset_root_resolution_order(tmp_path, monkeypatch):
    repo = tmp_path / "work" / "main"
    roots = {"explicit": tmp_path / "explicit", "env": tmp_path / "env", "data": repo / "data",
             "shared": tmp_path / "work" / "shared" / "data"}
    for source, root in roots.items():
        write_pair(root / "voc2012", "val", f"from_{source}", rgb(), np.zeros((8, 8)))
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.setenv("MAFT_DATA", str(roots["env"]))

    def first_id(**kw):
        return build_dataset("voc20", "val", **kw).items[0].id

    assert first_id(root=roots["explicit"]) == "from_explicit"
    assert first_id() == "from_env"
    monkeypatch.delenv("MAFT_DATA")
    assert first_id() == "from_data"
    shutil.rmtree(roots["data"] / "voc2012")
    assert first_id() == "from_shared"
    monkeypatch.setenv("MAFT_DATA", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="empty"):  # a named root never falls back silently
        first_id()


def test_segdataset_accepts_a_spec_object(tmp_path):
    write_pair(tmp_path / "toy", "train", "a", rgb(), np.array([[0, 1, 2, 3] * 2] * 8))
    spec = spec_from_dict(_spec_dict())
    dataset = SegDataset(spec, "train", root=tmp_path, mode="train")
    assert dataset[0]["label"][0, :4].tolist() == [255, 0, 1, 255]  # 'c' (raw 3) is unseen


def test_text_classifier_of_a_dataset_prompts_with_the_prompt_names():
    from maft.config import load
    from maft.experiment import build_experiment
    from maft.text import text_classifier

    experiment = build_experiment(load("voc20_tiny_cpu"), split="eval")
    assert experiment.classes[19] == "tvmonitor"  # display name kept
    model, tokenizer = experiment.model, experiment.tokenizer
    prompted = text_classifier(model, tokenizer, ["tv", "potted plant"], templates="single", cache=False)
    torch.testing.assert_close(experiment.text[[19, 15]], prompted)
    plain = text_classifier(model, tokenizer, ["tvmonitor"], templates="single", cache=False)
    assert not torch.allclose(experiment.text[19], plain[0])
    # the training view's text rows are the seen classes, prompted the same way
    training = build_experiment(load("voc20_tiny_cpu"), split="train", text_classes="seen",
                                model=(model, None, tokenizer))
    assert training.classes == [experiment.classes[i] for i in training.dataset.seen]
    torch.testing.assert_close(training.text, experiment.text[training.dataset.seen])
