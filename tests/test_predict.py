"""Single-image prediction (API and ``maft predict``), its bad inputs, and the pictures of maft.viz.figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from maft.inference import NO_PREDICTION, ensemble_scores
from maft.predict import load_image as read_image
from maft.predict import parse_class_names, predict
from maft.viz.figures import (
    figure_to_array,
    legend_entries,
    overlay,
    overlay_figure,
    palette,
    plot_proposals_topk,
    top_k,
)

VOC = "/work/shared/data/voc2012"
IMAGE_ID = "2007_000042"  # a train (VOC raw id 19) on background
CLASSES = ["background", "train"]


@pytest.fixture(scope="module")
def config():
    from maft.config import load_config

    return load_config("voc20_tiny_cpu")


# ------------------------------------------------------------------------------------------ inputs
def test_class_names_are_checked():
    assert parse_class_names(" cat, dog ,grass") == ["cat", "dog", "grass"]
    assert parse_class_names(["a", "b"]) == ["a", "b"]
    with pytest.raises(ValueError, match="empty"):
        parse_class_names("")
    with pytest.raises(ValueError, match="empty name"):
        parse_class_names("cat,,dog")
    with pytest.raises(ValueError, match="more than once"):
        parse_class_names("cat,dog,Cat")


def test_images_are_read_or_named_in_the_error(tmp_path):
    image, image_id = read_image(f"{VOC}/images/val/{IMAGE_ID}.jpg")
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and image_id == IMAGE_ID
    hwc = image.permute(1, 2, 0).numpy()
    assert torch.equal(read_image(hwc)[0], image) and torch.equal(read_image(image)[0], image)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        read_image(tmp_path / "nowhere.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match="broken.jpg"):
        read_image(broken)
    with pytest.raises(ValueError, match="uint8"):
        read_image(hwc.astype(np.float32))


# ------------------------------------------------------------------------------------------ API
def test_predict_with_gt_proposals(voc_pair, config):
    image_path, label_path = voc_pair
    result = predict(image_path, CLASSES, config=config, proposals="gt", label=label_path)
    height, width = Image.open(image_path).size[::-1]
    assert result.label_map.shape == (height, width) and result.label_map.dtype == torch.int64
    coloured = overlay(read_image(image_path)[0], result.label_map, result.classes)
    assert coloured.shape == (height, width, 3) and coloured.dtype == np.uint8
    assert result.probs.shape == (len(result.proposals), 2)
    assert torch.allclose(result.probs.sum(1), torch.ones(len(result.proposals)))
    values = set(result.label_map.unique().tolist())
    assert values <= {0, 1, NO_PREDICTION} and values & {0, 1}
    # the same image given as an array gives the same answer
    array = np.array(Image.open(image_path).convert("RGB"))
    again = predict(array, ",".join(CLASSES), config=config, proposals="gt", label=np.array(Image.open(label_path)))
    assert torch.equal(again.label_map, result.label_map)


def test_predict_bad_inputs(voc_pair, config, tmp_path):
    image_path, label_path = voc_pair
    with pytest.raises(ValueError, match="label"):
        predict(image_path, CLASSES, config=config, proposals="gt")
    with pytest.raises(ValueError, match="omits classes"):  # label holds index 1, one class given
        predict(image_path, ["background"], config=config, proposals="gt", label=label_path)
    with pytest.raises(ValueError, match="differ|but the image is"):
        predict(image_path, CLASSES, config=config, proposals="gt", label=np.zeros((4, 4), np.uint8))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        predict(tmp_path / "missing.png", CLASSES, config=config, proposals="gt", label=label_path)
    with pytest.raises(ValueError, match="more than once"):
        predict(image_path, ["train", "train"], config=config, proposals="gt", label=label_path)


def test_predict_with_file_proposals_and_ensemble(voc_pair, config, tmp_path):
    from maft.inference import align_generator_scores
    from maft.proposals import GTProposals, Proposals, save_proposals

    image_path, label_path = voc_pair
    image, _ = read_image(image_path)
    label = torch.from_numpy(np.array(Image.open(label_path))).long()
    made = GTProposals(seed=0, per_region=1, max_proposals=6, kinds=("part", "dilated"))({"image": image,
                                                                                          "label": label, "id": IMAGE_ID})
    # a generator that scores only "background" (its seen class)
    gen_scores = torch.linspace(0.2, 0.9, len(made))[:, None]
    save_proposals(tmp_path / f"{IMAGE_ID}.npz", Proposals(masks=made.masks, scores=gen_scores, classes=["background"]))
    result = predict(image_path, CLASSES, config=config, proposals=f"file:{tmp_path}", ensemble_lambda=0.7)
    aligned = align_generator_scores(gen_scores, ["background"], CLASSES)
    torch.testing.assert_close(result.probs, ensemble_scores(result.clip_probs, aligned, [0], 0.7))
    plain = predict(image_path, CLASSES, config=config, proposals=f"file:{tmp_path}", ensemble_lambda=None)
    torch.testing.assert_close(plain.probs, plain.clip_probs)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_predict_writes_overlay_legend_and_labels(voc_pair, tmp_path, capsys):
    from maft.cli import main

    image_path, label_path = voc_pair
    out = tmp_path / "pred" / "overlay.png"
    args = ["predict", image_path, "--classes", "background,train", "--config", "voc20_tiny_cpu",
            "--proposals", "gt", "--label", str(label_path), "--out", str(out)]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    written = np.array(Image.open(out))
    assert written.shape == np.array(Image.open(image_path)).shape
    labels = np.array(Image.open(tmp_path / "pred" / "overlay_labels.png"))
    assert set(np.unique(labels).tolist()) <= {0, 1, 255}
    assert (tmp_path / "pred" / "overlay_legend.png").stat().st_size > 0
    summary = json.loads((tmp_path / "pred" / "overlay.json").read_text())
    assert summary["classes"] == CLASSES and summary["legend"]
    assert "wrote" in capsys.readouterr().out
    before = out.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before
    with pytest.raises(SystemExit):
        main(args + ["--overwrite"])


# ------------------------------------------------------------------------------------------ viz
def test_palette_and_overlay():
    colours = palette(30)
    assert colours.shape == (30, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 30
    assert np.array_equal(palette(30), colours)
    image = np.full((2, 3, 3), 100, dtype=np.uint8)
    label = np.array([[0, 1, NO_PREDICTION], [255, 1, 0]])
    out = overlay(image, label, ["a", "b"], alpha=0.5)
    expected = np.round(0.5 * 100 + 0.5 * colours[1].astype(float)).astype(np.uint8)
    assert np.array_equal(out[0, 1], expected)
    assert np.array_equal(out[0, 2], image[0, 2]) and np.array_equal(out[1, 0], image[1, 0])  # not coloured
    entries = legend_entries(label, ["a", "b"])
    assert [name for name, _, _ in entries] == ["a", "b"] and entries[0][2] == pytest.approx(2 / 6)


def test_figures_render_headless():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 20, 30), dtype=torch.uint8)
    masks = torch.zeros(3, 20, 30)
    masks[0, :10] = 1
    masks[1, :, :15] = 1
    masks[2, 5:15, 5:25] = 1
    before, after = torch.rand(3, 6).softmax(1), torch.rand(3, 6).softmax(1)
    classes = [f"class {i}" for i in range(6)]
    fig = plot_proposals_topk(image, masks, before, after, classes, k=3, true_class=[0, 1, None])
    assert len(fig.axes) == 9
    assert figure_to_array(fig).ndim == 3
    ids, values = top_k(before[0], 3)
    assert list(values) == sorted(values, reverse=True) and values[0] == before[0].max().item()
    label = masks.argmax(0)
    assert figure_to_array(overlay_figure(image, label, classes[:3])).shape[-1] == 3
