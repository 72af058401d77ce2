"""maft.metrics: confusion matrix, mIoU / seen / unseen / hIoU, against hand computations and a slow loop."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maft.metrics import ConfusionMatrix, harmonic_mean, segmentation_metrics

# Pascal VOC 2012 class order (official devkit), background excluded as in the zero-shot protocol.
VOC20 = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
VOC_UNSEEN = [VOC20.index(n) for n in ("pottedplant", "sheep", "sofa", "train", "tvmonitor")]
VOC_SEEN = [i for i in range(20) if i not in VOC_UNSEEN]


def test_hand_computed_three_classes():
    gt = torch.tensor([[0, 0, 1], [1, 2, 255]])
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])  # the 0 on the ignore pixel does not count
    confusion = ConfusionMatrix(3).update(pred, gt)
    assert confusion.matrix.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert torch.allclose(confusion.iou(), torch.tensor([1 / 2, 1 / 3, 1 / 2], dtype=torch.float64))

    metrics = segmentation_metrics(confusion, ["a", "b", "c"], seen=[0, 1], unseen=[2])
    assert metrics["miou"] == pytest.approx(100 * 4 / 9)
    assert metrics["miou_seen"] == pytest.approx(100 * 5 / 12)
    assert metrics["miou_unseen"] == pytest.approx(50.0)
    assert metrics["hiou"] == pytest.approx(100 * 5 / 11)  # 2 * (5/12) * (1/2) / (5/12 + 1/2)
    assert metrics["pixel_acc"] == pytest.approx(60.0)
    assert metrics["per_class_iou"] == pytest.approx({"a": 50.0, "b": 100 / 3, "c": 50.0})
    json.dumps(metrics)  # plain floats / None, ready for the metrics JSON


def test_absent_classes_are_not_averaged_but_false_positives_are():
    gt = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 2])  # class 2 predicted but absent from gt: IoU 0, counted
    metrics = segmentation_metrics(ConfusionMatrix(4).update(pred, gt), ["a", "b", "c", "d"], [0, 1], [2, 3])
    assert metrics["per_class_iou"] == {"a": 100.0, "b": 50.0, "c": 0.0, "d": None}  # d: nowhere
    assert metrics["miou"] == pytest.approx(50.0)  # (100 + 50 + 0) / 3
    assert metrics["miou_seen"] == pytest.approx(75.0)
    assert metrics["miou_unseen"] == 0.0
    assert metrics["hiou"] == 0.0


def test_empty_subsets_and_empty_matrix_give_none():
    confusion = ConfusionMatrix(2).update(np.array([0, 1]), np.array([0, 1]))
    metrics = segmentation_metrics(confusion, ["a", "b"], seen=[0, 1], unseen=[])
    assert metrics["miou_seen"] == 100.0 and metrics["miou_unseen"] is None and metrics["hiou"] is None
    nothing = segmentation_metrics(ConfusionMatrix(2), ["a", "b"], [0], [1])
    assert nothing["miou"] is None and nothing["pixel_acc"] is None and nothing["hiou"] is None
    assert harmonic_mean(40.0, 60.0) == pytest.approx(48.0)


def slow_metrics(preds, gts, num_classes, seen, unseen, ignore=255):
    """Per class, count pixels with explicit loops over the images: an independent computation."""
    ious = {}
    correct = total = 0
    for c in range(num_classes):
        tp = fp = fn = 0
        for pred, gt in zip(preds, gts):
            valid = gt != ignore
            tp += int(np.sum((pred == c) & (gt == c) & valid))
            fp += int(np.sum((pred == c) & (gt != c) & valid))
            fn += int(np.sum((pred != c) & (gt == c) & valid))
        ious[c] = tp / (tp + fp + fn) * 100 if tp + fp + fn else None
    for pred, gt in zip(preds, gts):
        valid = gt != ignore
        correct += int(np.sum((pred == gt) & valid))
        total += int(np.sum(valid))

    def mean(indices):
        values = [ious[i] for i in indices if ious[i] is not None]
        return sum(values) / len(values) if values else None

    return ious, mean(range(num_classes)), mean(seen), mean(unseen), correct / total * 100


def test_random_label_maps_match_a_slow_per_class_computation():
    rng = np.random.default_rng(0)
    num_classes, seen, unseen = 12, list(range(8)), list(range(8, 12))
    preds, gts = [], []
    for _ in range(5):
        shape = tuple(rng.integers(20, 40, size=2))
        # Classes 10 and 11 never occur in gt; 11 is never predicted either (its IoU is undefined).
        gt = rng.integers(0, 10, size=shape)
        gt[rng.random(shape) < 0.1] = 255
        pred = np.where(rng.random(shape) < 0.6, gt, rng.integers(0, 11, size=shape))
        pred[gt == 255] = rng.integers(0, 255, size=int((gt == 255).sum()))  # anything on ignore pixels
        preds.append(pred)
        gts.append(gt)
    confusion = ConfusionMatrix(num_classes)
    for pred, gt in zip(preds, gts):
        confusion.update(pred.astype(np.uint8), torch.from_numpy(gt))
    names = [f"class{i}" for i in range(num_classes)]
    metrics = segmentation_metrics(confusion, names, seen, unseen)

    ious, miou, miou_seen, miou_unseen, accuracy = slow_metrics(preds, gts, num_classes, seen, unseen)
    assert ious[11] is None and ious[10] == 0.0
    assert metrics["per_class_iou"] == pytest.approx({names[c]: v for c, v in ious.items()})
    assert metrics["miou"] == pytest.approx(miou)
    assert metrics["miou_seen"] == pytest.approx(miou_seen)
    assert metrics["miou_unseen"] == pytest.approx(miou_unseen)
    assert metrics["hiou"] == pytest.approx(2 * miou_seen * miou_unseen / (miou_seen + miou_unseen))
    assert metrics["pixel_acc"] == pytest.approx(accuracy)


def test_merge_equals_one_pass_and_batches_equal_single_images():
    rng = np.random.default_rng(1)
    gts = torch.from_numpy(rng.integers(0, 5, size=(4, 16, 16)))
    preds = torch.from_numpy(rng.integers(0, 5, size=(4, 16, 16)))
    whole = ConfusionMatrix(5).update(preds, gts)
    first, second = ConfusionMatrix(5), ConfusionMatrix(5)
    for i in range(2):
        first.update(preds[i], gts[i])
        second.update(preds[i + 2].numpy(), gts[i + 2].numpy())
    assert torch.equal(first.merge(second).matrix, whole.matrix)
    assert int(whole.matrix.sum()) == 4 * 16 * 16
    with pytest.raises(ValueError, match="cannot merge a 6-class"):
        whole.merge(ConfusionMatrix(6))
    whole.reset()
    assert int(whole.matrix.sum()) == 0


def test_voc_zero_shot_protocol_ignores_background():
    # Raw VOC labels: 0 background, 1..20 classes, 255 void. The zero-shot protocol evaluates the 20
    # object classes only, so background joins the ignore label (what the voc20 dataset does).
    raw = np.array([[0, 0, 15, 15], [0, 0, 15, 15], [17, 17, 17, 17], [255, 255, 255, 255]])
    gt = np.where(raw == 0, 255, np.where(raw == 255, 255, raw - 1))
    person, sheep = VOC20.index("person"), VOC20.index("sheep")
    pred = np.array([[sheep, sheep, person, person]] * 2 + [[sheep, sheep, person, person], [0, 0, 0, 0]])
    metrics = segmentation_metrics(ConfusionMatrix(20).update(pred, gt), VOC20, VOC_SEEN, VOC_UNSEEN)
    # person: tp 4, gt 4, pred 6 -> 4/6. sheep: tp 2, gt 4, pred 2 (its background hits are ignored) -> 2/4.
    assert metrics["per_class_iou"]["person"] == pytest.approx(100 * 4 / 6)
    assert metrics["per_class_iou"]["sheep"] == pytest.approx(50.0)
    assert sum(v is not None for v in metrics["per_class_iou"].values()) == 2
    assert metrics["miou"] == pytest.approx((100 * 4 / 6 + 50) / 2)
    assert metrics["miou_seen"] == pytest.approx(100 * 4 / 6)
    assert metrics["miou_unseen"] == pytest.approx(50.0)
    assert metrics["hiou"] == pytest.approx(100 * 4 / 7)
    assert metrics["pixel_acc"] == pytest.approx(100 * 6 / 8)


@pytest.mark.parametrize(
    "pred, gt, message",
    [
        (torch.tensor([0, 5]), torch.tensor([0, 1]), "pred holds class ids \\[5\\]"),
        (torch.tensor([0, 255]), torch.tensor([0, 1]), "pred holds class ids \\[255\\]"),
        (torch.tensor([-1, 0]), torch.tensor([0, 1]), "pred holds class ids \\[-1\\]"),
        (torch.tensor([0, 1]), torch.tensor([0, 7]), "gt holds class ids \\[7\\]"),
        (torch.tensor([0, 1, 1]), torch.tensor([0, 1]), "shapes differ"),
        (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), "integer class ids"),
        ([0, 1], torch.tensor([0, 1]), "torch tensor or numpy array"),
    ],
)
def test_update_rejects_bad_labels(pred, gt, message):
    with pytest.raises(ValueError, match=message):
        ConfusionMatrix(3).update(pred, gt)


def test_out_of_range_predictions_on_ignored_pixels_are_fine():
    confusion = ConfusionMatrix(3).update(torch.tensor([0, 99]), torch.tensor([0, 255]))
    assert int(confusion.matrix.sum()) == 1


def test_segmentation_metrics_rejects_bad_arguments():
    confusion = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="3 classes"):
        segmentation_metrics(confusion, ["a", "b"])
    with pytest.raises(ValueError, match="both seen and unseen"):
        segmentation_metrics(confusion, ["a", "b", "c"], [0, 1], [1, 2])
    with pytest.raises(ValueError, match="unseen holds class indices \\[3\\]"):
        segmentation_metrics(confusion, ["a", "b", "c"], [0], [3])
    with pytest.raises(ValueError, match=r"classes has duplicate class names: \['A', 'a'\]"):
        segmentation_metrics(confusion, ["a", "b", "A"])  # case and spacing ignored, as everywhere
    with pytest.raises(ValueError, match="square"):
        segmentation_metrics(torch.zeros(2, 3, dtype=torch.long), ["a", "b"])


def test_a_plain_matrix_is_accepted():
    matrix = np.array([[3, 1], [0, 4]])
    metrics = segmentation_metrics(matrix, ["a", "b"], [0], [1])
    assert metrics["per_class_iou"] == pytest.approx({"a": 75.0, "b": 80.0})
