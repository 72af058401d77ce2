"""``maft data prepare`` / ``maft data check`` (maft.data.prepare) on tiny fake official layouts.

Each test writes a few 8x8 files in the official folder structure, converts them, loads the result
with ``build_dataset`` and checks the contiguous ids pixel by pixel.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from maft.cli import main as cli_main
from maft.data.datasets import build_dataset
from maft.data.prepare import prepare_dataset
from maft.utils import paths

VOC_PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [7] * (256 * 3 - 9)


@pytest.fixture(autouse=True)
def no_default_roots(monkeypatch, tmp_path):
    """Only explicit roots in these tests: MAFT_DATA unset, data/ and ../shared/data point nowhere."""
    monkeypatch.delenv("MAFT_DATA", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "no-repo" / "main")


def save_jpg(path: Path, height=8, width=8, seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(array).save(path, quality=95)
    return path


def save_png(path: Path, values, palette=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.asarray(values)
    if values.max() > 255:
        image = Image.fromarray(values.astype(np.uint16))
    elif palette:  # an index image with a colour palette, like VOC's SegmentationClass
        image = Image.frombytes("P", values.shape[::-1], values.astype(np.uint8).tobytes())
        image.putpalette(palette)
    else:
        image = Image.fromarray(values.astype(np.uint8))
    image.save(path)
    return path


def label_8x8(values) -> np.ndarray:
    """8x8 label whose first row starts with ``values`` and is otherwise ``values[0]``."""
    label = np.full((8, 8), values[0], dtype=np.int64)
    label[0, : len(values)] = values
    return label


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


# -------------------------------------------------------------------------------------------- VOC


def fake_voc(src: Path) -> Path:
    voc = src / "VOCdevkit" / "VOC2012"
    for id_, seed in (("2007_000001", 1), ("2007_000002", 2), ("2008_000003", 3)):
        save_jpg(voc / "JPEGImages" / f"{id_}.jpg", seed=seed)
    save_png(voc / "SegmentationClass" / "2007_000001.png", label_8x8([0, 1, 16, 20, 255]), VOC_PALETTE)
    save_png(voc / "SegmentationClass" / "2007_000002.png", label_8x8([15, 17, 0]), VOC_PALETTE)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")
    for id_, first in (("2007_000001", [0, 1, 16, 20, 255]), ("2007_000002", [15]), ("2008_000003", [5, 19])):
        save_png(src / "SegmentationClassAug" / f"{id_}.png", label_8x8(first))  # 8-bit 'L', beside VOC2012
    return voc


def test_a_16bit_grayscale_source_image_is_scaled_not_saturated(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    voc = fake_voc(src)
    gray = np.tile(np.linspace(0, 65535, 8).astype(np.uint16), (8, 1))  # a ramp from black to white
    Image.fromarray(gray).save(voc / "JPEGImages" / "2007_000002.jpg", format="PNG")  # 16-bit, misnamed
    folder = prepare_dataset("voc20", src, dst, splits=["val"], progress=False)
    with Image.open(folder / "images" / "val" / "2007_000002.jpg") as image:
        written = np.array(image.convert("L"), dtype=np.int64)
    expected = np.rint(gray / 257.0)
    assert np.abs(written - expected).max() <= 3  # JPEG re-encoding, not 255 for every value above 255


def test_voc_conversion_pixel_by_pixel(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    voc = fake_voc(src)
    before = snapshot(src)
    folder = prepare_dataset("voc20", src, dst, progress=False)
    assert folder == dst / "voc2012" and snapshot(src) == before  # nothing written into --src
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["train", "train_aug", "val"]

    train = build_dataset("voc20", "train", root=dst)
    assert [item.id for item in train.items] == ["2007_000001"]
    label = train[0]["label"].numpy()
    assert label[0, :5].tolist() == [255, 0, 15, 19, 255] and (label[1:] == 255).all()
    # the JPEG is copied byte for byte; the palette PNG keeps its palette
    assert (folder / "images" / "train" / "2007_000001.jpg").read_bytes() == \
        (voc / "JPEGImages" / "2007_000001.jpg").read_bytes()
    with Image.open(folder / "masks" / "train" / "2007_000001.png") as mask:
        assert mask.mode == "P" and mask.getpalette()[:9] == VOC_PALETTE[:9]

    val = build_dataset("voc20", "val", root=dst)
    assert val[0]["label"][0, :3].tolist() == [14, 16, 255]
    assert build_dataset("voc20", "val", root=dst, mode="train")[0]["label"][0, :3].tolist() == [14, 255, 255]

    aug = build_dataset("voc20", "train_aug", root=dst)  # every Aug mask except the val image
    assert [item.id for item in aug.items] == ["2007_000001", "2008_000003"]
    assert aug[1]["label"][0, :2].tolist() == [4, 18]


def test_voc_split_selection_and_max_images(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_voc(src)
    prepare_dataset("voc20", src, dst, splits=["train_aug"], max_images=1, progress=False)
    assert [item.id for item in build_dataset("voc20", "train_aug", root=dst).items] == ["2007_000001"]
    with pytest.raises(FileNotFoundError, match="no split 'val'"):
        build_dataset("voc20", "val", root=dst)
    with pytest.raises(ValueError, match=r"no \['test'\] split"):
        prepare_dataset("voc20", src, tmp_path / "other", splits=["test"], progress=False)


def test_refuses_to_overwrite_or_write_into_src(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_voc(src)
    prepare_dataset("voc20", src, dst, splits=["val"], progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        prepare_dataset("voc20", src, dst, progress=False)
    prepare_dataset("voc20", src, dst, splits=["train"], overwrite=True, progress=False)
    assert sorted(p.name for p in (dst / "voc2012" / "images").iterdir()) == ["train"]  # replaced, not merged
    before = snapshot(src)
    with pytest.raises(ValueError, match="outside --src"):  # the output folder would be inside the source
        prepare_dataset("voc20", src, src / "VOCdevkit", progress=False)
    assert snapshot(src) == before
    inside = tmp_path / "data" / "voc2012" / "download"  # the source inside the folder --overwrite replaces
    fake_voc(inside)
    before = snapshot(inside)
    with pytest.raises(ValueError, match="outside --src"):
        prepare_dataset("voc20", inside, tmp_path / "data", overwrite=True, progress=False)
    assert snapshot(inside) == before


def test_bad_sources_fail_with_the_file_named(tmp_path):
    src = tmp_path / "src"
    voc = fake_voc(src)
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        prepare_dataset("voc20", voc / "ImageSets", tmp_path / "out", progress=False)
    save_png(voc / "SegmentationClass" / "2007_000002.png", label_8x8([15, 21]), VOC_PALETTE)
    with pytest.raises(ValueError, match=r"2007_000002\.png: label values \[21\]"):
        prepare_dataset("voc20", src, tmp_path / "out", splits=["val"], progress=False)
    save_png(voc / "SegmentationClass" / "2007_000002.png", np.zeros((6, 8)), VOC_PALETTE)
    with pytest.raises(ValueError, match=r"sizes differ: .*2007_000002\.jpg is 8x8 .*2007_000002\.png is 8x6"):
        prepare_dataset("voc20", src, tmp_path / "out", splits=["val"], progress=False)
    (voc / "ImageSets" / "Segmentation" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"split list not found: .*val\.txt"):
        prepare_dataset("voc20", src, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing half-written


# ------------------------------------------------------------------------------------- COCO-Stuff


def test_coco_stuff_conversion_pixel_by_pixel(tmp_path):
    src, dst = tmp_path / "coco", tmp_path / "dst"
    save_jpg(src / "images" / "val2017" / "000000000139.jpg")
    # raw = official id - 1: person 0, stop sign 12, banner 91, wood 181, unused 11 / 90, unlabeled 255
    save_png(src / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png",
             label_8x8([0, 12, 91, 181, 11, 90, 255, 20]))  # 20 = cow (official id 21)
    save_jpg(src / "images" / "train2017" / "000000000009.jpg", seed=4)
    save_png(src / "stuffthingmaps_trainval2017" / "train2017" / "000000000009.png", label_8x8([123, 168]))
    prepare_dataset("coco_stuff171", src, dst, progress=False)
    val = build_dataset("coco_stuff171", "val", root=dst)
    assert val.folder == dst / "coco_stuff171"
    assert val[0]["label"][0].tolist() == [0, 11, 80, 170, 255, 255, 255, 19]
    assert build_dataset("coco_stuff171", "val", root=dst, mode="train")[0]["label"][0, 7].item() == 255  # cow
    train = build_dataset("coco_stuff171", "train", root=dst)
    assert [train.classes[i] for i in train[0]["label"][0, :2].tolist()] == ["grass", "tree"]


def test_coco_stuff_missing_images_are_reported(tmp_path):
    src = tmp_path / "coco"
    save_png(src / "stuffthingmaps_trainval2017" / "val2017" / "000000000139.png", label_8x8([0]))
    with pytest.raises(FileNotFoundError, match="images"):
        prepare_dataset("coco_stuff171", src, tmp_path / "dst", progress=False)
    (src / "images" / "val2017").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"COCO image not found: .*000000000139\.jpg"):
        prepare_dataset("coco_stuff171", src, tmp_path / "dst", progress=False)


# --------------------------------------------------------------------------------------- ADE20K


def test_ade150_conversion_pixel_by_pixel(tmp_path):
    src, dst = tmp_path / "downloads" / "ADEChallengeData2016", tmp_path / "dst"
    save_jpg(src / "images" / "validation" / "ADE_val_00000001.jpg")
    save_png(src / "annotations" / "validation" / "ADE_val_00000001.png", label_8x8([0, 1, 150, 3]))
    prepare_dataset("ade150", src.parent, dst, progress=False)  # the parent of ADEChallengeData2016 works too
    dataset = build_dataset("ade150", "val", root=dst)
    assert dataset.folder == dst / "ade20k150" and dataset[0]["label"][0, :4].tolist() == [255, 0, 149, 2]


def ade_full_seg(class_ids: np.ndarray) -> np.ndarray:
    """An ADE20K-full *_seg.png: R = id // 256 * 10 (+ a few, as instance noise would), G = id % 256, B = instance."""
    seg = np.zeros((*class_ids.shape, 3), dtype=np.uint8)
    seg[..., 0] = class_ids // 256 * 10 + 3  # R / 10 is floored by the decoder
    seg[..., 1] = class_ids % 256
    seg[..., 2] = 17
    return seg


def fake_ade_full(src: Path, size=(8, 8)) -> Path:
    ade = src / "ADE20K_2021_17_01"
    folders, names = [], []
    for split, official in (("train", "training"), ("val", "validation")):
        folder = ade / "images" / "ADE" / official / "urban" / "street"
        name = f"ADE_{split}_00000001.jpg"
        save_jpg(folder / name, *size)
        ids = np.zeros(size, dtype=np.int64)
        ids[0, :5] = [2978, 3148, 5, 0, 2420]  # wall, adding machine, an id outside the 847, unlabeled, sky
        Image.fromarray(ade_full_seg(ids)).save(folder / name.replace(".jpg", "_seg.png"))
        folders.append(f"ADE20K_2021_17_01/images/ADE/{official}/urban/street")
        names.append(name)
    with open(ade / "index_ade20k.pkl", "wb") as handle:
        pickle.dump({"folder": folders, "filename": names, "objectnames": ["-"]}, handle)
    return ade


def test_ade847_conversion_from_seg_pngs(tmp_path):
    src, dst = tmp_path / "ade", tmp_path / "dst"
    fake_ade_full(src)
    prepare_dataset("ade847", src, dst, progress=False)
    for split in ("train", "val"):
        dataset = build_dataset("ade847", split, root=dst)
        assert dataset.ignore_index == 65535
        assert dataset[0]["label"][0, :5].tolist() == [0, 846, 65535, 65535, 2]
    with Image.open(dst / "ade20k847" / "masks" / "val" / "ADE_val_00000001.png") as mask:
        assert np.array(mask)[0, :5].tolist() == [2978, 3148, 5, 0, 2420]  # raw ids kept, 16-bit
    training = build_dataset("ade847", "val", root=dst, mode="train")  # adding machine is unseen (rare)
    assert training[0]["label"][0, :2].tolist() == [0, 65535]


def test_ade847_resizes_the_shorter_side_like_the_public_conversion(tmp_path):
    src, dst = tmp_path / "ade", tmp_path / "dst"
    ade = fake_ade_full(src, size=(8, 12))
    (ade / "index_ade20k.pkl").unlink()  # without the index, the images are found by walking images/ADE
    prepare_dataset("ade847", src, dst, splits=["val"], max_size=4, progress=False)
    sample = build_dataset("ade847", "val", root=dst)[0]
    assert sample["image"].shape == (3, 4, 6) and sample["label"].shape == (4, 6)
    # nearest as OpenCV's INTER_NEAREST: row 0, columns 0, 2, 4 of the original (wall, unlisted id, sky)
    assert sample["label"][0, :3].tolist() == [0, 65535, 2]


# ------------------------------------------------------------------------------- PASCAL-Context


def fake_context(src: Path) -> Path:
    voc = src / "VOCdevkit" / "VOC2010"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "train.txt").write_text("2008_000002\n")
    (voc / "ImageSets" / "Main" / "val.txt").write_text("2008_000003\n2008_000004\n")  # 004 has no labels
    for id_, seed in (("2008_000002", 1), ("2008_000003", 2), ("2008_000004", 3)):
        save_jpg(voc / "JPEGImages" / f"{id_}.jpg", seed=seed)
    labels = np.zeros((8, 8), dtype=np.uint16)
    labels[0, :6] = [0, 2, 397, 459, 1, 259]  # unlabeled, aeroplane, table, wool, accordion, mountain
    (voc / "trainval").mkdir()
    for id_ in ("2008_000002", "2008_000003"):
        scipy.io.savemat(voc / "trainval" / f"{id_}.mat", {"LabelMap": labels})
    return voc


@pytest.mark.parametrize("name, expected", [
    ("pc459", [65535, 1, 396, 458, 0, 258]), ("pc59", [255, 0, 49, 255, 255, 34])])
def test_pascal_context_conversion_pixel_by_pixel(tmp_path, name, expected):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_context(src)
    prepare_dataset(name, src, dst, progress=False)
    for split in ("train", "val"):
        dataset = build_dataset(name, split, root=dst)
        assert dataset.folder == dst / "pascal_context" and len(dataset) == 1
        assert dataset[0]["label"][0, :6].tolist() == expected
    assert build_dataset("pc59", "val", root=dst).classes[34] == "mountain"


# ---------------------------------------------------------------------------------------- CLI


def test_cli_prepare_then_check(tmp_path, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_voc(src)
    with pytest.raises(SystemExit) as stop:
        cli_main(["data", "prepare", "voc20", "--src", str(src), "--dst", str(dst)])
    assert stop.value.code == 0
    assert f"wrote {dst / 'voc2012'}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as stop:
        cli_main(["data", "check", "voc20", "--root", str(dst)])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "split train (eval view): 1 images, 1 with an unseen class, 3/20 classes present" in out
    assert "split train_aug (eval view): 2 images" in out
    assert "split val (eval view): 1 images, 1 with an unseen class, 2/20 classes present" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("16 ")]
    assert ["16", "sheep", "1", "yes"] in rows  # val: the sheep image


def test_cli_check_rejects_an_image_and_mask_of_different_sizes(tmp_path, capsys):
    root = tmp_path / "data"
    for id_, (height, width) in (("a", (8, 8)), ("b", (8, 6))):
        save_jpg(root / "voc2012" / "images" / "val" / f"{id_}.jpg", seed=1)
        save_png(root / "voc2012" / "masks" / "val" / f"{id_}.png", np.zeros((height, width), dtype=np.int64))
    with pytest.raises(SystemExit) as stop:
        cli_main(["data", "check", "voc20", "--root", str(root)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after the progress bar's last redraw
    assert err.startswith("maft data: error: voc20 split val: 1 of 2 image/mask pairs differ in size: ")
    assert f"{root}/voc2012/images/val/b.jpg is 8x8 (WxH) but {root}/voc2012/masks/val/b.png is 6x8" in err
    with pytest.raises(ValueError, match="sizes differ"):  # the pair maft eval rejects
        build_dataset("voc20", "val", root=root)[1]
    save_png(root / "voc2012" / "masks" / "val" / "b.png", np.zeros((8, 8), dtype=np.int64))
    with pytest.raises(SystemExit) as stop:
        cli_main(["data", "check", "voc20", "--root", str(root)])
    assert stop.value.code == 0 and "split val (eval view): 2 images" in capsys.readouterr().out


def test_cli_check_reports_missing_dataset(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "check", "pc59", "--root", str(tmp_path)])
    assert exit_info.value.code == 2 and str(tmp_path / "pascal_context") in capsys.readouterr().err
    monkeypatch.setenv("MAFT_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "pascal_context")):
        cli_main(["data", "check", "pc59", "--root", str(tmp_path)])
    with pytest.raises(SystemExit):
        cli_main(["data", "prepare", "voc21", "--src", str(tmp_path), "--dst", str(tmp_path)])


def test_cli_list_shows_where_datasets_resolve(tmp_path, monkeypatch, capsys):
    src, dst = tmp_path / "src", tmp_path / "dst"
    fake_voc(src)
    prepare_dataset("voc20", src, dst, splits=["val"], progress=False)
    monkeypatch.setenv("MAFT_DATA", str(dst))
    with pytest.raises(SystemExit):
        cli_main(["data", "list"])
    out = capsys.readouterr().out
    assert f"voc20          {dst / 'voc2012'} (splits: val)" in out and "ade847         not found" in out
    assert os.environ["MAFT_DATA"] == str(dst)
