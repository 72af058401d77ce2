"""Inputs real users give (issue 18): phone photos, other generators' files, odd class lists, bad devices.

Every case here was silently wrong or ended in a traceback before: each test asserts the converted
result, the warning, or the one-line error that names the file or argument.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maft.data.datasets import read_image, size_mismatches

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
    from maft.data.datasets import shown_size

    with Image.open(tmp_path / "photo.png") as image:
        assert shown_size(image) == (200, 400)  # header-only size checks agree with read_image
    shown_jpeg = rotated_photo(tmp_path / "photo.jpg")
    jpeg = read_image(tmp_path / "photo.jpg").permute(1, 2, 0).numpy().astype(float)
    assert jpeg.shape == (400, 200, 3)
    # JPEG is lossy on noise, but the upright reading is far closer than the stored one would be
    assert np.abs(jpeg - shown_jpeg).mean() < 10 < np.abs(jpeg - np.rot90(shown_jpeg, 2)).mean()


def test_exif_rotated_photo_in_data_prepare(tmp_path):
    from maft.data.class_specs import load_class_spec
    from maft.data.datasets import read_label
    from maft.data.prepare import Pair, _write_pair

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
    from maft.data.datasets import build_dataset

    dataset = build_dataset(str(folder), "val")
    assert size_mismatches(dataset, progress=False) == []
    sample = dataset[0]
    np.testing.assert_array_equal(sample["image"].permute(1, 2, 0).numpy(), shown)
    assert tuple(sample["label"].shape) == (400, 200)


def test_alpha_and_frames_are_converted_with_a_warning(tmp_path):
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    with pytest.warns(UserWarning, match=r"alpha\.png has an alpha channel.*dropped") as record:
        pixels = read_image(tmp_path / "alpha.png")
    from maft.data.datasets import ImageConversionWarning

    assert record[0].category is ImageConversionWarning
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
    code, _, err = cli(["predict", str(tmp_path / "alpha.png"), "--classes", "a,b", "--proposals", "gt",
                          "--config", "voc20_tiny_cpu", "--out", str(tmp_path / "o.png")], capsys)
    # gt proposals without a label are refused, after the image was read with its warning
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("maft predict: warning: image ") and "alpha channel" in lines[0]
    assert lines[1].startswith("maft predict: error: ") and len(lines) == 2


def test_predict_on_exif_rotated_photo_writes_an_aligned_overlay(tmp_path, capsys):
    from maft.viz.figures import overlay

    shown = rotated_photo(tmp_path / "photo.png")
    label = np.zeros((400, 200), np.uint8)  # drawn on the photo as viewers show it
    label[150:300, 50:150] = 1
    Image.fromarray(label).save(tmp_path / "label.png")
    out = tmp_path / "pred" / "overlay.png"
    code, _, err = cli(["predict", str(tmp_path / "photo.png"), "--classes", "background,train",
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


# ------------------------------------------------------------------------------------ proposal files
def gt_masks(voc_pair) -> torch.Tensor:
    from maft.predict import load_image
    from maft.proposals import GTProposals

    image, _ = load_image(voc_pair[0])
    label = torch.from_numpy(np.array(Image.open(voc_pair[1]))).long()
    made = GTProposals(seed=0, per_region=1, max_proposals=4, kinds=("part", "dilated"))(
        {"image": image, "label": label, "id": IMAGE_ID})
    return made.masks


def test_logit_scores_are_refused_naming_the_file_or_softmaxed_when_asked(voc_pair, tmp_path, capsys):
    from maft.proposals import FileProposals, Proposals, save_proposals

    masks = gt_masks(voc_pair)
    logits = torch.linspace(-3.0, 2.0, len(masks) * 2).reshape(len(masks), 2)  # negative: not probabilities
    path = save_proposals(tmp_path / f"{IMAGE_ID}.npz", Proposals(masks=masks, scores=logits, classes=CLASSES))
    sample = {"id": IMAGE_ID, "image": torch.zeros(3, *masks.shape[-2:], dtype=torch.uint8)}
    with pytest.raises(ValueError, match=rf"{path}: 'scores' range over \[-3, 2\].*scores=logits"):
        FileProposals(tmp_path)(sample)
    read = FileProposals(tmp_path, scores="logits")(sample)
    torch.testing.assert_close(read.scores, logits.softmax(-1))
    # before: NaN reached every pixel and the whole image came out "background" with exit code 0
    code, _, err = cli(["predict", voc_pair[0], "--classes", "background,train", "--config", "voc20_tiny_cpu",
                        "--proposals", f"file:{tmp_path}", "--set", "eval.ensemble_lambda=0.7",
                        "--out", str(tmp_path / "out.png")], capsys)
    assert code == 2 and err.startswith(f"maft predict: error: {path}: 'scores'") and len(err.splitlines()) == 1
    infinite = logits.sigmoid()
    infinite[0, 0] = float("inf")
    save_proposals(path, Proposals(masks=masks, scores=infinite, classes=CLASSES))
    with pytest.raises(ValueError, match=rf"{path}: 'scores' holds a non-finite value \(inf\)"):
        FileProposals(tmp_path, scores="logits")(sample)
    with pytest.raises(ValueError, match="scores='odds' is not one of"):
        FileProposals(tmp_path, scores="odds")


def test_the_ensemble_refuses_scores_that_are_not_probabilities():
    from maft.inference import ensemble_scores

    clip = torch.full((2, 2), 0.5)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\].*\[-1, 0.5\]"):
        ensemble_scores(clip, torch.tensor([[-1.0, 0.5], [0.2, 0.3]]), [0, 1], 0.7)
    nan_means_unscored = torch.tensor([[0.4, float("nan")], [0.2, float("nan")]])
    assert torch.isfinite(ensemble_scores(clip, nan_means_unscored, [0], 0.7)).all()


def test_damaged_npz_files_are_named(tmp_path):
    from maft.proposals import Proposals, load_proposals, save_proposals

    good = save_proposals(tmp_path / "good.npz", Proposals(masks=torch.ones(2, 4, 5)))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_zip = tmp_path / "text.npz"
    not_zip.write_text("these are not proposals\n")
    objects = tmp_path / "objects.npz"
    with open(objects, "wb") as handle:
        np.savez(handle, masks=np.array([np.ones((4, 5)), np.ones((2, 2))], dtype=object))
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.ones((2, 4, 5), bool))
    for path, why in ((truncated, ""), (not_zip, ""), (objects, r" \(ValueError: Object arrays cannot be loaded"),
                      (single, r" \(ValueError: a single \.npy array, not an \.npz archive")):
        with pytest.raises(ValueError, match=rf"^{path}: not a readable proposals \.npz{why}"):
            load_proposals(path)
    assert zipfile.is_zipfile(good) and len(load_proposals(good)) == 2


def rle_file(path, segmentation, **record):
    path.write_text(json.dumps([{"segmentation": segmentation, **record}]))
    return path


def test_malformed_coco_rle_is_refused_naming_the_file(tmp_path):
    from pycocotools import mask as mask_utils

    from maft.proposals import load_proposals

    binary = np.zeros((6, 7, 1), np.uint8, order="F")
    binary[2:4, 1:5] = 1
    good = mask_utils.encode(binary)[0]
    counts = good["counts"].decode("ascii")
    assert load_proposals(rle_file(tmp_path / "good.json", {"size": [6, 7], "counts": counts})).masks.sum() == 8
    cases = {
        "int_counts": ({"size": [6, 7], "counts": 123}, "'counts' must be a COCO RLE string or a list"),
        "str_size": ({"size": ["366", "x"], "counts": counts}, r"'size' must be \[height, width\]"),
        "short": ({"size": [6, 7], "counts": counts[:-1]}, "RLE runs cover .* pixels but its size 6x7 has 42"),
        "short_list": ({"size": [6, 7], "counts": [3, 4]}, "RLE runs cover 7 pixels but its size 6x7 has 42"),
        "bad_chars": ({"size": [6, 7], "counts": "~~~"}, "not a COCO RLE string"),
    }
    for name, (segmentation, message) in cases.items():
        path = rle_file(tmp_path / f"{name}.json", segmentation)
        with pytest.raises(ValueError, match=rf"^{path}: record 0: .*{message}"):
            load_proposals(path)
    ragged = tmp_path / "ragged.json"
    ragged.write_text(json.dumps([{"segmentation": {"size": [6, 7], "counts": counts}, "scores": [0.5, 0.5]},
                                  {"segmentation": {"size": [6, 7], "counts": counts}, "scores": [1.0]}]))
    with pytest.raises(ValueError, match=rf"^{ragged}: record 1 has 1 'scores' but record 0 has 2"):
        load_proposals(ragged)
    words = rle_file(tmp_path / "words.json", {"size": [6, 7], "counts": counts}, scores=["high"])
    with pytest.raises(ValueError, match=rf"^{words}: record 0 'scores' must be a list of numbers"):
        load_proposals(words)


def test_no_usable_proposal_is_said(voc_pair, tmp_path, capsys):
    from maft.predict import predict
    from maft.proposals import Proposals, save_proposals

    height, width = np.array(Image.open(voc_pair[0])).shape[:2]
    save_proposals(tmp_path / f"{IMAGE_ID}.npz", Proposals(masks=torch.zeros(3, height, width)))
    with pytest.warns(UserWarning, match=r"none of its 3 proposals has a pixel on") as record:
        result = predict(voc_pair[0], CLASSES, config="voc20_tiny_cpu", proposals=f"file:{tmp_path}")
    assert (result.label_map == -1).all()
    from maft.predict import NoPredictionWarning

    assert [w.category for w in record] == [NoPredictionWarning]
    save_proposals(tmp_path / f"{IMAGE_ID}.npz", Proposals(masks=torch.zeros(0, height, width)))
    code, _, err = cli(["predict", voc_pair[0], "--classes", "background,train", "--config", "voc20_tiny_cpu",
                        "--proposals", f"file:{tmp_path}", "--out", str(tmp_path / "o.png")], capsys)
    assert code == 0
    assert err.strip() == (f"maft predict: warning: no prediction anywhere in image {IMAGE_ID!r}: the proposal "
                           "generator gave no proposals; every pixel is 'no prediction' in the outputs")


# ------------------------------------------------------------------------------------ class names
def test_class_names_are_csv_and_can_come_from_a_file(voc_pair, tmp_path, capsys):
    from maft.predict import parse_class_names

    assert parse_class_names('"hot dog, food",dog') == ["hot dog, food", "dog"]
    assert parse_class_names('cat, "hot dog, food" ,dog') == ["cat", "hot dog, food", "dog"]
    with pytest.raises(ValueError, match="not valid comma-separated values"):
        parse_class_names('"hot dog, food,dog')
    from maft.predict import read_class_names_file

    names = tmp_path / "names.txt"
    names.write_text("# my vocabulary\nbackground\n\nhot dog, food\n")
    assert read_class_names_file(names) == ["background", "hot dog, food"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="empty.txt' holds no class names"):
        read_class_names_file(tmp_path / "empty.txt")
    code, _, err = cli(["predict", voc_pair[0], "--classes-file", str(names), "--config", "voc20_tiny_cpu",
                          "--proposals", "gt", "--label", str(voc_pair[1]), "--out", str(tmp_path / "o.png")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "o.json").read_text())["classes"] == ["background", "hot dog, food"]


# ------------------------------------------------------------------------------ outputs and the CLI
def test_out_may_never_be_an_input(voc_pair, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.open(voc_pair[0]).save(photo)
    before = photo.read_bytes()
    for extra in ([], ["--overwrite"]):
        code, _, err = cli(["predict", str(photo), "--classes", "background,train", "--config", "voc20_tiny_cpu",
                            "--proposals", "gt", "--label", str(voc_pair[1]), "--out", str(photo)] + extra, capsys)
        assert code == 2 and f"is the input '{photo}'" in err
    label = tmp_path / "x_labels.png"  # --out x.png writes x_labels.png: here, the label given as input
    label.write_bytes(Path(voc_pair[1]).read_bytes())
    code, _, err = cli(["predict", str(photo), "--classes", "background,train", "--config", "voc20_tiny_cpu",
                        "--proposals", "gt", "--label", str(label), "--out", str(tmp_path / "x.png"),
                        "--overwrite"], capsys)
    assert code == 2 and f"its labels file '{label}' is the input '{label}'" in err, err  # even with --overwrite
    assert photo.read_bytes() == before and label.read_bytes() == Path(voc_pair[1]).read_bytes()


def test_size_check_turns_the_photo_by_its_exif_but_not_the_mask(tmp_path):
    """read_image applies EXIF orientation, read_label does not: the header check must judge them alike."""
    from types import SimpleNamespace

    from maft.data.datasets import size_mismatches

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (40, 20)).save(tmp_path / "photo.png", exif=exif)  # shown 20x40
    Image.new("L", (20, 40)).save(tmp_path / "fits.png", exif=exif)  # stored 20x40: fits the shown photo
    Image.new("L", (40, 20)).save(tmp_path / "stored.png", exif=exif)  # stored 40x20: does not
    dataset = SimpleNamespace(name="d", split="s", items=[SimpleNamespace(image_path=tmp_path / "photo.png",
                                                                            label_path=tmp_path / name)
                                                          for name in ("fits.png", "stored.png")])
    problems = size_mismatches(dataset, progress=False)
    assert problems == [f"{tmp_path / 'photo.png'} is 20x40 (WxH) but {tmp_path / 'stored.png'} is 40x20"]


@pytest.mark.parametrize("device", ["bogus", "cuda:7" if torch.cuda.is_available() else "cuda"])
def test_bad_devices_are_one_line_errors(voc_pair, tmp_path, capsys, device):
    for command in (["predict", voc_pair[0], "--classes", "a,b", "--proposals", "gt", "--label", str(voc_pair[1]),
                     "--config", "voc20_tiny_cpu", "--out", str(tmp_path / "o.png")],
                    ["eval", "--config", "voc20_tiny_cpu", "--out", str(tmp_path / "m.json")],
                    ["bench", "--quick", "--out", str(tmp_path / "b.json")]):
        if command[0] == "bench" and device == "bogus":
            continue  # argparse's own choices (cpu, cuda) refuse it
        code, _, err = cli(command + ["--device", device], capsys)
        assert code == 2 and err.startswith(f"maft {command[0]}: error: --device '{device}'"), err
        assert len(err.splitlines()) == 1


def test_proposal_generator_devices_are_checked():
    from maft.proposals import build_proposal_generator

    for kind in ("sam", "mask2former"):
        with pytest.raises(ValueError, match="proposals.settings.device 'bogus' is not a device name"):
            build_proposal_generator(kind, device="bogus", name_or_path="x")


def test_unknown_kernel_is_a_one_line_error(tmp_path, capsys):
    code, _, err = cli(["notebooks", "--profile", "smoke", "--kernel", "nope", "--output-dir", str(tmp_path)], capsys)
    assert code == 2 and err.startswith("maft notebooks: error: --kernel 'nope': no such Jupyter kernel")


def test_checkpoint_at_another_image_size_names_the_size_and_eval_never_overwrites_it(tmp_path, capsys):
    from maft.checkpoints import load_finetuned
    from maft.config import load_config
    from maft.experiment import build_clip
    from maft.train import finetune

    config = load_config("voc20_tiny_cpu")
    config["data"]["max_images"] = 2
    config["train"].update({"iterations": 1, "batch_size": 1, "checkpoint_every": None,
                            "out_dir": str(tmp_path / "run")})
    checkpoint = finetune(config, progress=False)["checkpoint"]
    config["model"]["image_size"] = 48
    with pytest.raises(ValueError, match=r"trained at image size 32 px, but this model runs at 48 px; "
                                         r"set model.image_size=32"):
        load_finetuned(build_clip(config)[0], checkpoint)
    before = Path(checkpoint).read_bytes()
    code, _, err = cli(["eval", "--config", "voc20_tiny_cpu", "--checkpoint", checkpoint, "--out", checkpoint,
                        "--overwrite"], capsys)
    assert code == 2 and "is the checkpoint being evaluated" in err
    assert Path(checkpoint).read_bytes() == before
