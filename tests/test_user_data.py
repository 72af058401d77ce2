"""Your own dataset: a folder with images/, masks/ and classes.yaml, built here, through build_dataset,
`maft data check`, `maft eval`, fine-tuning and notebook 00."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from maft.data.datasets import build_dataset
from maft.data.prepare import check_report
from maft.data.user_folder import class_file_spec, resolve_spec

CLASSES = ["floor", "cup", "plate", "knife"]
# per split: image id -> the classes painted into its mask (besides floor, which is everywhere)
LAYOUT = {"train": {"t0": ["cup"], "t1": ["cup", "plate"], "t2": ["knife"]},
          "val": {"v0": ["plate", "knife"], "v1": ["cup"]}}


def _write_pair(folder, split, image_id, painted, size=(40, 48), rng=None, value_of=None):
    """A random RGB image and a mask: floor (0) everywhere, one block per painted class, a 255 border."""
    height, width = size
    mask = np.zeros(size, dtype=np.uint8)
    for index, name in enumerate(painted):
        top = 4 + 14 * index
        mask[top:top + 12, 6:30] = value_of(name) if value_of else CLASSES.index(name)
    mask[:2, :] = 255
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    sub = f"{split}/" if split else ""
    (folder / "images" / sub).mkdir(parents=True, exist_ok=True)
    (folder / "masks" / sub).mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / sub / f"{image_id}.png")
    Image.fromarray(mask).save(folder / "masks" / sub / f"{image_id}.png")


def _kitchen(folder, classes_yaml=None):
    rng = np.random.default_rng(0)
    for split, images in LAYOUT.items():
        for image_id, painted in images.items():
            _write_pair(folder, split, image_id, painted, rng=rng)
    (folder / "classes.yaml").write_text(classes_yaml if classes_yaml is not None else
                                         "classes: [floor, cup, plate, knife]\nunseen: [knife]\nignore_value: 255\n")
    return folder


@pytest.fixture(scope="module")
def kitchen(tmp_path_factory):
    return _kitchen(tmp_path_factory.mktemp("data") / "kitchen")


def test_a_folder_with_a_class_file_is_a_dataset(kitchen):
    val = build_dataset(str(kitchen), "val")
    assert (val.name, val.classes, val.unseen, val.seen) == ("kitchen", CLASSES, [3], [0, 1, 2])
    assert [item.id for item in val.items] == ["v0", "v1"] and val.folder == kitchen
    sample = val[0]
    raw = np.array(Image.open(kitchen / "masks" / "val" / "v0.png"))
    assert np.array_equal(sample["label"].numpy(), raw.astype(np.int64))  # values 0..3 are the class ids
    assert sample["image"].shape == (3, 40, 48)
    training = build_dataset(kitchen, "train", mode="train")  # unseen knife -> ignore in the training view
    label = training[2]["label"].numpy()
    assert (label == 3).sum() == 0 and (label == 255).sum() == 2 * 48 + 12 * 24
    # the class file itself, and a class-spec YAML in the shipped format, name the same dataset
    assert [i.id for i in build_dataset(str(kitchen / "classes.yaml"), "train").items] == ["t0", "t1", "t2"]


def test_a_class_spec_yaml_is_searched_under_the_data_roots(kitchen, tmp_path):
    spec = {"name": "kitchen_spec", "classes": CLASSES, "unseen": ["knife"], "ignore_index": 255,
            "label_map": {"raw_ids": [0, 1, 2, 3], "ignore": [255], "unlisted": "error"},
            "folders": [{"name": "kitchen", "labels": "raw"}]}
    path = tmp_path / "kitchen_spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    dataset = build_dataset(str(path), "val", root=kitchen.parent)
    assert dataset.name == "kitchen_spec" and dataset.folder == kitchen and dataset.unseen == [3]


def test_mask_values_and_a_flat_folder(tmp_path):
    folder = tmp_path / "flat"
    rng = np.random.default_rng(1)
    values = {"floor": 10, "cup": 20, "plate": 30, "knife": 40}
    _write_pair(folder, None, "a", ["cup", "knife"], rng=rng, value_of=values.get)
    (folder / "classes.yaml").write_text("name: tableware\nclasses: [floor, cup, plate, knife]\n"
                                         "mask_values: [10, 20, 30, 40]\nignore_value: [255, 0]\n")
    dataset = build_dataset(folder, "val")  # a flat folder holds the class file's split, default val
    label = dataset[0]["label"].numpy()
    # raw 20 -> cup (1), 40 -> knife (3); the unpainted 0 and the 255 border are both ignore values
    assert dataset.name == "tableware" and sorted(np.unique(label)) == [1, 3, 255]
    assert dataset.spec.protocol == "open_vocabulary" and dataset.unseen == []  # no unseen classes
    with pytest.raises(FileNotFoundError, match="flat sample folder holding only the 'val' split"):
        build_dataset(folder, "train")


@pytest.mark.parametrize("text, error", [
    ("classes: [floor, cup]\nunseen: [spoon]\n", r"unseen classes \['spoon'\] are not in classes"),
    ("classes: [floor, cup, cup]\n", "duplicate class names"),
    ("clases: [floor, cup]\n", r"unknown keys \['clases'\]"),
    ("unseen: [cup]\n", "missing 'classes'"),
    ("classes: [floor, cup]\nmask_values: [0]\n", "mask_values has 1 values for 2 classes"),
    ("classes: [floor, cup]\nignore_value: 1\n", r"ignore_value \[1\] is also the mask value of a class: 1 \('cup'\)"),
    ("classes: [floor, cup]\nsplit: 3\n", "split must be a split name"),
])
def test_bad_class_files_name_the_file_and_the_field(tmp_path, text, error):
    (tmp_path / "classes.yaml").write_text(text)
    with pytest.raises(ValueError, match=error) as caught:
        class_file_spec(tmp_path / "classes.yaml")
    assert str(tmp_path / "classes.yaml") in str(caught.value)


def test_bad_dataset_names_are_clear(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no class file .*classes\.yaml"):
        resolve_spec(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_spec(tmp_path / "nowhere.yaml")
    with pytest.raises(FileNotFoundError, match="neither a dataset folder"):
        resolve_spec(str(tmp_path / "no" / "such"))
    with pytest.raises(ValueError, match=r"unknown dataset 'voc21'; available: ade150, .*world, or a folder"):
        build_dataset("voc21", "val")


def test_check_counts_classes_and_lists_every_bad_mask(kitchen, tmp_path):
    report = check_report(str(kitchen))
    assert "kitchen: kitchen (your dataset)" in report and "4 classes, 1 unseen" in report
    val_block = report.split("split val")[1]  # splits are printed in order: train, then val
    rows = {line.split()[1]: line.split()[2:] for line in val_block.splitlines() if line[:5].strip().isdigit()}
    assert rows == {"floor": ["2"], "cup": ["1"], "plate": ["1"], "knife": ["1", "yes"]}
    train_block = report.split("split train")[1].split("split val")[0]
    assert "3 images, 1 with an unseen class, 4/4 classes present" in train_block

    broken = _kitchen(tmp_path / "broken")
    for image_id, value in (("v0", 7), ("v1", 9)):
        mask = np.array(Image.open(broken / "masks" / "val" / f"{image_id}.png"))
        mask[20, 20] = value
        Image.fromarray(mask).save(broken / "masks" / "val" / f"{image_id}.png")
    with pytest.raises(ValueError, match=r"2 problem\(s\)") as caught:
        check_report(str(broken), split="val")
    message = str(caught.value)
    assert "v0.png: label values [7]" in message and "v1.png: label values [9]" in message
    with pytest.raises(ValueError, match=r"v0\.png: label values \[7\] are not in the label map of broken"):
        build_dataset(broken, "val")[0]


def test_eval_and_finetune_on_your_dataset(kitchen, tmp_path):
    from maft.cli import main
    from maft.config import load_config
    from maft.train import finetune

    out = tmp_path / "eval.json"
    with pytest.raises(SystemExit) as done:
        main(["eval", "--config", "voc20_tiny_cpu", "--set", f"data.dataset={kitchen}", "--set", "data.max_images=null",
              "--out", str(out), "--no-progress"])
    assert done.value.code == 0
    metrics = json.loads(out.read_text())
    assert metrics["n_images"] == 2 and metrics["dataset"] == str(kitchen)
    assert list(metrics["per_class_iou"]) == CLASSES
    assert metrics["miou_unseen"] == pytest.approx(metrics["per_class_iou"]["knife"])

    config = load_config("voc20_tiny_cpu", [f"data.dataset={kitchen}", "train.iterations=2", "train.batch_size=2",
                                            "train.checkpoint_every=0", f"train.out_dir={tmp_path / 'run'}"])
    summary = finetune(config, progress=False)
    assert summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2]
    with pytest.raises(SystemExit) as done:
        main(["eval", "--config", "voc20_tiny_cpu", "--set", f"data.dataset={kitchen}", "--checkpoint",
              summary["checkpoint"], "--out", str(tmp_path / "tuned.json"), "--no-progress"])
    assert done.value.code == 0 and json.loads((tmp_path / "tuned.json").read_text())["n_images"] == 2


@pytest.mark.slow
def test_notebook_00_on_your_dataset(kitchen, tmp_path):
    from maft.notebook import series

    profile = tmp_path / "kitchen.yaml"
    profile.write_text(yaml.safe_dump({"config": "voc20_tiny_cpu", "overrides": [f"data.dataset={kitchen}"],
                                       "n_show": 2}))
    series.run_series(str(profile), only=["00"], output_dir=tmp_path / "out", progress=False)
    metrics = json.loads((tmp_path / "out" / "metrics" / "00.json").read_text())
    assert metrics["dataset"] == "kitchen" and metrics["unseen"] == ["knife"]
    assert (metrics["eval_images"], metrics["train_images"]) == (2, 3)
    assert metrics["images_per_class"] == {"floor": 2, "cup": 1, "plate": 1, "knife": 1}
