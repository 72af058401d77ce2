"""Evaluation: oracle mIoU, hand-computed upper bound (paper Table 7), mask-awareness (Spearman), errors,
and an end-to-end run on the shared VOC sample with a tiny random CLIP (API and ``maft eval``)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maft.evaluate import evaluate, evaluate_config, mask_awareness, region_correlations
from maft.inference import NO_PREDICTION
from maft.proposals import GTProposals, Proposals
from maft.proposals.quality import region_ious, upper_bound_map

# ------------------------------------------------------------------------------------------ a tiny world
# Three classes painted in pure colours; a stand-in classifier that embeds a proposal by its mean colour
# is then an oracle (text = colour directions): its A^c puts almost all mass on the true class.
COLOURS = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=torch.uint8)
LABEL = torch.tensor([
    [0, 0, 1, 1],
    [0, 0, 1, 1],
    [2, 2, 2, 2],
    [255, 255, 2, 2],
])


def paint(label):
    image = torch.zeros(3, *label.shape, dtype=torch.uint8)
    for k, colour in enumerate(COLOURS):
        image[:, label == k] = colour[:, None]
    return image


class ColourWorld:
    name = "colours"
    classes = ["red", "green", "blue"]
    seen = [0, 1]
    unseen = [2]
    ignore_index = 255

    def __init__(self, labels=(LABEL,)):
        self.labels = list(labels)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        label = self.labels[i]
        return {"image": paint(label), "label": label, "id": f"img{i}", "image_path": "-", "label_path": f"lab{i}.png"}


class MeanColourClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images, masks):
        weights = F.interpolate(masks[0][:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0]
        area = weights.flatten(1).sum(1, keepdim=True).clamp(min=1)
        return [weights.flatten(1) @ images[0].flatten(1).T / area]


TEXT = torch.eye(3)


class FixedGenerator:
    def __init__(self, masks):
        self.masks = masks

    def __call__(self, sample):
        return Proposals(masks=self.masks)


def hand_proposals():
    """P0: left half (red + 2 blue + 2 ignore pixels), P1: exactly green, P2: bottom-right 2 blue pixels.
    Pixels (2,2), (2,3) are covered by no proposal."""
    masks = torch.zeros(3, 4, 4)
    masks[0, :, :2] = 1
    masks[1, :2, 2:] = 1
    masks[2, 3, 2:] = 1
    return masks


# ------------------------------------------------------------------------------------------ oracle and bound
def test_oracle_classifier_with_exact_proposals_scores_100():
    generator = GTProposals(kinds=(), include_whole=True, min_area=1)
    metrics = evaluate(MeanColourClassifier(), generator, ColourWorld(), TEXT, image_size=4, progress=False)
    for key in ("miou", "miou_seen", "miou_unseen", "hiou", "pixel_acc"):
        assert metrics[key] == pytest.approx(100.0), key
        assert metrics["upper_bound"][key] == pytest.approx(100.0), key
    assert metrics["per_class_iou"] == pytest.approx({"red": 100.0, "green": 100.0, "blue": 100.0})
    assert metrics["n_images"] == 1 and metrics["n_proposals"] == 3
    assert metrics["uncovered_fraction"] == 0.0


def test_upper_bound_hand_computed():
    # IoU (target = label == k, ignored pixels count as "not k"): P0 with red 4/8, with blue 2/12;
    # P1 with green 1; P2 with blue 2/6.
    ious = region_ious(hand_proposals(), LABEL, torch.tensor([0, 1, 2]))
    torch.testing.assert_close(ious, torch.tensor([[4 / 8, 0, 0], [0, 1, 0], [2 / 12, 0, 2 / 6]]),
                               atol=1e-6, rtol=0)
    # S_IoU map: left half -> red (also the 2 blue pixels of row 2), green block -> green, (3,2),(3,3) ->
    # blue, (2,2),(2,3) -> no prediction (a miss of blue).
    bound = upper_bound_map(hand_proposals(), LABEL, 3)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, NO_PREDICTION, NO_PREDICTION], [0, 0, 2, 2]])
    assert torch.equal(bound, expected)

    metrics = evaluate(MeanColourClassifier(), FixedGenerator(hand_proposals()), ColourWorld(), TEXT,
                       image_size=4, progress=False)
    ub = metrics["upper_bound"]
    # red: tp 4, gt 4, pred 6 -> 4/6; green 1; blue: tp 2, gt 6, pred 2 -> 2/6
    assert ub["per_class_iou"] == pytest.approx({"red": 400 / 6, "green": 100.0, "blue": 200 / 6})
    assert ub["miou"] == pytest.approx(200 / 3)
    assert ub["miou_seen"] == pytest.approx(250 / 3)
    assert ub["miou_unseen"] == pytest.approx(100 / 3)
    assert ub["hiou"] == pytest.approx(2 * (250 / 3) * (100 / 3) / (350 / 3))
    assert ub["pixel_acc"] == pytest.approx(100 * 10 / 14)
    # the classifier's own map has the same uncovered pixels: 2 of 14 evaluated pixels
    assert metrics["uncovered_fraction"] == pytest.approx(2 / 14)


def test_all_empty_or_no_proposals_is_defined():
    for masks in (torch.zeros(3, 4, 4), torch.zeros(0, 4, 4)):
        metrics = evaluate(MeanColourClassifier(), FixedGenerator(masks), ColourWorld(), TEXT, image_size=4,
                           progress=False)
        assert metrics["miou"] == 0.0 and metrics["upper_bound"]["miou"] == 0.0
        assert metrics["pixel_acc"] == 0.0
        assert metrics["uncovered_fraction"] == 1.0
        assert metrics["mask_awareness"]["n_regions"] == 0
        assert metrics["mask_awareness"]["n_skipped"] == 3
        assert metrics["mask_awareness"]["mean"] is None


# ------------------------------------------------------------------------------------------ mask-awareness
# One row of 12 pixels: class 0 on columns 0-4, class 1 on 5-9, class 2 on 10-11.
ROW = torch.tensor([[0] * 5 + [1] * 5 + [2] * 2])
# Proposal i covers columns 0..i (i = 0..7): never class 2.
GROWING = torch.stack([(torch.arange(12) <= i).float()[None] for i in range(8)])
IOU_0 = torch.tensor([0.2, 0.4, 0.6, 0.8, 1.0, 5 / 6, 5 / 7, 5 / 8])
IOU_1 = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.3])


def scores(col0, col1):
    return torch.stack([col0, col1, torch.linspace(0.1, 0.2, 8)], dim=1)


def test_mask_awareness_oracle_is_one_and_reversed_is_minus_one():
    oracle = mask_awareness(scores(IOU_0, IOU_1), GROWING, ROW)
    assert oracle["mean"] == pytest.approx(1.0) and oracle["std"] == pytest.approx(0.0)
    # class 2 is never touched: its IoUs are all 0 -> no ranking, skipped and counted
    assert oracle["n_regions"] == 2 and oracle["n_skipped"] == 1
    reverse = mask_awareness(scores(1 - IOU_0, 1 - IOU_1), GROWING, ROW)
    assert reverse["mean"] == pytest.approx(-1.0)


def test_mask_awareness_hand_computed_spearman():
    # Scores that just prefer bigger proposals: ranks 1..8. IoU ranks with class 0: 1,2,3,6,8,7,5,4,
    # d = 0,0,0,2,3,1,-2,-4, sum d^2 = 34, rho = 1 - 6*34 / (8*63) = 0.595238...
    found, skipped = region_correlations(scores(torch.arange(8.0), IOU_1), GROWING, ROW)
    rho = dict(found)
    assert rho[0] == pytest.approx(1 - 6 * 34 / (8 * 63))
    assert rho[1] == pytest.approx(1.0) and skipped == 1
    # constant scores are skipped too; several images are pooled; seen/unseen means reported
    both = mask_awareness([scores(IOU_0, torch.full((8,), 0.5)), scores(1 - IOU_0, IOU_1)], [GROWING, GROWING],
                          [ROW, ROW], seen=[0], unseen=[1, 2])
    assert both["n_regions"] == 3 and both["n_skipped"] == 3
    assert both["mean"] == pytest.approx(1 / 3)  # (1 - 1 + 1) / 3
    assert both["mean_seen"] == pytest.approx(0.0) and both["mean_unseen"] == pytest.approx(1.0)


def test_mask_awareness_refuses_labels_outside_the_class_list():
    with pytest.raises(ValueError, match="omits classes"):
        mask_awareness(scores(IOU_0, IOU_1)[:, :2], GROWING, ROW)


# ------------------------------------------------------------------------------------------ errors
def test_class_list_that_omits_ground_truth_classes_is_an_error():
    world = ColourWorld()
    world.classes = ["red", "green"]
    world.unseen = []
    with pytest.raises(ValueError, match=r"img0.*lab0\.png.*\[2\].*omits classes"):
        evaluate(MeanColourClassifier(), FixedGenerator(hand_proposals()), world, TEXT[:2], 4, progress=False)
    with pytest.raises(ValueError, match="text classifier"):
        evaluate(MeanColourClassifier(), FixedGenerator(hand_proposals()), ColourWorld(), TEXT[:2], 4,
                 progress=False)


# ------------------------------------------------------------------------------------------ end to end (VOC)
KEYS = {"miou", "miou_seen", "miou_unseen", "hiou", "per_class_iou", "pixel_acc", "mask_awareness",
        "upper_bound", "n_images"}


def test_end_to_end_on_voc_with_tiny_clip(tiny_clip):
    from maft.data.datasets import build_dataset
    from maft.ipclip import IPCLIP
    from maft.text import text_classifier

    model, _, tokenizer = tiny_clip
    dataset = build_dataset("voc20", "val", max_images=4)
    text = text_classifier(model, tokenizer, dataset.classes, templates="single")
    generator = GTProposals(seed=0, per_region=1, max_proposals=12, kinds=("part", "background", "dilated"))
    metrics = evaluate(IPCLIP(model.visual), generator, dataset, text, image_size=32, max_images=3,
                       progress=False)
    assert KEYS <= set(metrics)
    assert metrics["n_images"] == 3
    assert set(metrics["per_class_iou"]) == set(dataset.classes)
    assert 0 <= metrics["miou"] <= 100
    assert metrics["mask_awareness"]["n_regions"] + metrics["mask_awareness"]["n_skipped"] == 3  # 1 class each
    assert -1 <= metrics["mask_awareness"]["mean"] <= 1
    # whole ground-truth regions are among the proposals: S_IoU recovers almost everything
    assert metrics["upper_bound"]["miou"] > 90
    json.dumps(metrics, allow_nan=False)  # JSON-ready (None instead of NaN)


def tiny_config(tmp_path, **eval_settings):
    from maft.config import load_config

    config = load_config("voc20_tiny_cpu", ["data.max_images=2", f"train.out_dir={tmp_path / 'train'}"])
    config["eval"] = {**config.get("eval", {}), **eval_settings}
    return config


def test_evaluate_config_with_checkpoint_and_frozen_clip(tmp_path, monkeypatch):
    from maft.train import finetune

    monkeypatch.setenv("MAFT_OUTPUTS", str(tmp_path / "outputs"))
    config = tiny_config(tmp_path)
    config["train"].update(iterations=2, batch_size=2, checkpoint_every=0, log_every=1)
    summary = finetune(config, progress=False)

    plain = evaluate_config(config, progress=False)
    assert plain["path"] == str(tmp_path / "outputs" / "eval" / "voc20_tiny_cpu.json")
    tuned = evaluate_config(config, checkpoint=summary["checkpoint"], out=tmp_path / "tuned.json", progress=False)
    written = json.loads((tmp_path / "tuned.json").read_text())
    assert KEYS <= set(written) and written["checkpoint"] == summary["checkpoint"]
    # the fine-tuned weights change the proposal scores (mask-awareness is computed from A^c)
    assert tuned["mask_awareness"]["mean"] != plain["mask_awareness"]["mean"]
    # never replace a file silently
    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate_config(config, progress=False)
    frozen = evaluate_config(tiny_config(tmp_path, classifier="frozen"), out=tmp_path / "frozen.json",
                             progress=False)
    assert frozen["classifier"] == "frozen" and KEYS <= set(frozen)
    with pytest.raises(ValueError, match="frozen takes none"):
        evaluate_config(tiny_config(tmp_path, classifier="frozen"), checkpoint=summary["checkpoint"],
                        out=tmp_path / "x.json", progress=False)
    with pytest.raises(ValueError, match="config key eval.lamda: unknown key in section 'eval'"):
        evaluate_config(tiny_config(tmp_path, lamda=0.5), out=tmp_path / "y.json", progress=False)


def test_cli_eval_writes_metrics(tmp_path, capsys):
    from maft.cli import main

    out = tmp_path / "metrics.json"
    args = ["eval", "--config", "voc20_tiny_cpu", "--set", "data.max_images=2", "--set",
            "eval.ensemble_lambda=null", "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    written = json.loads(out.read_text())
    assert KEYS <= set(written) and written["n_images"] == 2 and written["name"] == "voc20_tiny_cpu"
    assert "mIoU" in capsys.readouterr().out
    # a user error is one line and exit code 2, as argparse reports bad arguments; --debug shows the traceback
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("maft eval: error: ") and "exists" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileExistsError):
        main(["--debug"] + args)
    with pytest.raises(SystemExit):
        main(args + ["--overwrite"])
