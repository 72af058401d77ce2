"""Inputs real users give (issue 18): phone photos, other generators' files, odd class lists, bad devices.

Every case here was silently wrong or ended in a traceback before: each test asserts the converted
result, the warning, or the one-line error that names the file or argument.
"""
from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from maft.datasets import ImageConversionWarning, read_image, shown_size, size_mismatches

VOC = "/work/shared/data/voc2012"
IMAGE_ID = "2007_000042"  # a train (VOC raw id 19) on background
CLASSES = ["background", "train"]


def rotated_photo(path, seed: int = 0) -> np.ndarray:
    """Write a 400x200 (WxH) random photo with EXIF orientation 6 (shown rotated 90 degrees clockwise,
    200x400) to ``path``; returns the pixels as viewers show them."""
    blocks = np.random.default_rng(seed).integers(0, 256, (4, 8, 3), dtype=np.uint8)
    stored = np.repeat(np.repeat(blocks, 50, axis=0), 50, axis=1)  # 50-px blocks: JPEG keeps them
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(path, exif=exif, **({"quality": 95} if str(path).endswith(".jpg") else {}))
    return np.ascontiguousarray(np.rot90(stored, k=-1))  # clockwise: the stored left column is the top row


def cli(args, capsys):
    from maft.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# --------------------------------------------------------------------------------------------- images
def test_exif_orientation_is_applied_where_images_are_read(tmp_path):
    shown = rotated_photo(tmp_path / "photo.png")
    pixels = read_image(tmp_path / "photo.png")
    assert tuple(pixels.shape) == (3, 400, 200)
    np.testing.assert_array_equal(pixels.permute(1, 2, 0).numpy(), shown)
    with Image.open(tmp_path / "photo.png") as image:
        assert shown_size(image) == (200, 400)  # header-only size checks agree with read_image
    shown_jpeg = rotated_photo(tmp_path / "photo.jpg")
    jpeg = read_image(tmp_path / "photo.jpg").permute(1, 2, 0).numpy().astype(float)
    assert jpeg.shape == (400, 200, 3)
    # JPEG is lossy on noise, but the upright reading is far closer than the stored one would be
    assert np.abs(jpeg - shown_jpeg).mean() < 10 < np.abs(jpeg - np.rot90(shown_jpeg, 2)).mean()


def test_exif_rotated_photo_in_data_prepare(tmp_path):
    from maft.classes import load_class_spec
    from maft.datasets import read_label
    from maft.prepare import Pair, _write_pair

    for suffix in (".png", ".jpg"):
        shown = rotated_photo(tmp_path / f"src{suffix}")
        label = np.zeros((400, 200), np.uint8)  # VOC raw ids, drawn on the photo as shown
        label[:100] = 15
        Image.fromarray(label).save(tmp_path / "label.png")
        out = tmp_path / f"out{suffix}"
        _write_pair(Pair("val", "a", tmp_path / f"src{suffix}", tmp_path / "label.png", read_label), out,
                    load_class_spec("voc20"), resize_to=0)
        written = out / "images" / "val" / "a.jpg"
        with Image.open(written) as image:  # written upright: no orientation left for viewers to apply
            assert image.size == (200, 400) and image.getexif().get(0x0112) in (None, 1)
        assert np.abs(read_image(written).permute(1, 2, 0).numpy().astype(float) - shown).mean() < 10


def test_exif_rotated_photo_in_your_own_folder(tmp_path):
    folder = tmp_path / "kitchen"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    shown = rotated_photo(folder / "images" / "0001.png")
    label = np.zeros((400, 200), np.uint8)  # drawn on the photo as shown: 200 wide, 400 high
    label[:100] = 1
    Image.fromarray(label).save(folder / "masks" / "0001.png")
    (folder / "classes.yaml").write_text("classes: [table, cup]\nunseen: [cup]\n")
    from maft.datasets import build_dataset

    dataset = build_dataset(str(folder), "val")
    assert size_mismatches(dataset, progress=False) == []
    sample = dataset[0]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), shown)
    assert tuple(sample["label"].shape) == (400, 200)


def test_alpha_and_frames_are_converted_with_a_warning(tmp_path):
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.warns(ImageConversionWarning, match=r"alpha\.png has an alpha channel.*dropped"):
        pixels = read_image(tmp_path / "alpha.png")
    assert pixels[:, 0, 0].tolist() == [200, 0, 0]
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.warns(ImageConversionWarning, match=r"anim\.gif has 3 frames .*first frame"):
        pixels = read_image(tmp_path / "anim.gif")
    assert pixels[:, 0, 0].tolist() == [255, 0, 0]
    Image.new("RGB", (8, 8), "red").save(tmp_path / "plain.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(tmp_path / "plain.png")  # an ordinary image: no warning


def test_cli_warning_is_one_line(tmp_path, capsys):
    Image.fromarray(np.zeros((6, 5, 4), np.uint8)).save(tmp_path / "alpha.png")
    code, out, err = cli(["predict", str(tmp_path / "alpha.png"), "--classes", "a,b", "--proposals", "gt",
                          "--config", "voc20_tiny_cpu", "--out", str(tmp_path / "o.png")], capsys)
    # gt proposals without a label are refused, after the image was read with its warning
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("maft predict: warning: image ") and "alpha channel" in lines[0]
    assert lines[1].startswith("maft predict: error: ") and len(lines) == 2


def test_predict_on_exif_rotated_photo_writes_an_aligned_overlay(tmp_path, capsys):
    from maft.viz import overlay

    shown = rotated_photo(tmp_path / "photo.png")
    label = np.zeros((400, 200), np.uint8)  # drawn on the photo as viewers show it
    label[150:300, 50:150] = 1
    Image.fromarray(label).save(tmp_path / "label.png")
    out = tmp_path / "pred" / "overlay.png"
    code, out_text, err = cli(["predict", str(tmp_path / "photo.png"), "--classes", "background,train",
                               "--config", "voc20_tiny_cpu", "--proposals", "gt", "--label",
                               str(tmp_path / "label.png"), "--out", str(out)], capsys)
    assert code == 0, err
    written = np.array(Image.open(out))
    assert written.shape == (400, 200, 3)
    labels = np.array(Image.open(tmp_path / "pred" / "overlay_labels.png")).astype(np.int64)
    labels[labels == 255] = -1
    # the overlay is the upright photo blended with the predicted classes, pixel for pixel
    np.testing.assert_array_equal(written, overlay(torch.from_numpy(shown).permute(2, 0, 1),
                                                   torch.from_numpy(labels), CLASSES))
