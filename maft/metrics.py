"""Semantic-segmentation metrics of the zero-shot protocol (ZegFormer / ZSSeg / MAFT).

One confusion matrix over all evaluated pixels (rows: ground truth, columns: prediction; the ignore
label is skipped). From it, per class ``IoU = tp / (gt + pred - tp)``; mIoU averages the classes that
occur in the ground truth or the prediction (a class absent from both has no IoU and is left out,
as in detectron2's SemSegEvaluator); mIoU-seen / mIoU-unseen average the two class subsets and hIoU
is their harmonic mean. All reported numbers are percentages (0-100), as papers print them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data.class_specs import check_class_names

__all__ = ["ConfusionMatrix", "add_image", "confusion_metrics", "harmonic_mean", "new_confusion", "present_classes",
           "segmentation_metrics"]


def _as_tensor(values, argument: str) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"{argument} must be a torch tensor or numpy array, got {type(values).__name__}")
    if values.dtype.is_floating_point or values.dtype.is_complex:
        raise ValueError(f"{argument} must hold integer class ids, got dtype {values.dtype}")
    return values.long()


class ConfusionMatrix:
    """Accumulates a ``[C, C]`` int64 confusion matrix (rows: ground truth, columns: prediction).

    ``update(pred, gt)`` takes label maps of equal shape (torch or numpy, any leading dims) with
    integer class ids; pixels whose ground truth is ``ignore_index`` are skipped, whatever is
    predicted there. Every other ground-truth and predicted value must lie in ``[0, C)``.
    ``merge(other)`` adds another matrix (e.g. from another process before reporting).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred, gt) -> "ConfusionMatrix":
        pred = _as_tensor(pred, "pred")
        gt = _as_tensor(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred and gt shapes differ: {tuple(pred.shape)} vs {tuple(gt.shape)}")
        gt = gt.to(pred.device)
        count = self.num_classes
        valid = gt != self.ignore_index
        # torch.where instead of boolean indexing: several times faster on large label maps.
        gt = torch.where(valid, gt, 0)
        pred = torch.where(valid, pred, 0)
        if gt.numel() and (gt.min() < 0 or gt.max() >= count):
            bad = gt[(gt < 0) | (gt >= count)].unique()[:10].tolist()
            raise ValueError(
                f"gt holds class ids {bad} outside [0, {count}) that are not the ignore label {self.ignore_index}"
            )
        if pred.numel() and (pred.min() < 0 or pred.max() >= count):
            bad = pred[(pred < 0) | (pred >= count)].unique()[:10].tolist()
            raise ValueError(f"pred holds class ids {bad} outside [0, {count}) on evaluated pixels")
        # Ignored pixels go to one extra bin that is dropped.
        cells = torch.where(valid, gt * count + pred, count * count)
        counts = torch.bincount(cells.reshape(-1), minlength=count * count + 1)[: count * count]
        self.matrix += counts.view(count, count).cpu()
        return self

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if not isinstance(other, ConfusionMatrix):
            raise ValueError(f"can only merge another ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def iou(self) -> torch.Tensor:
        """Per-class IoU as float64 fractions in [0, 1]; NaN for classes absent from gt and prediction."""
        matrix = self.matrix.double()
        tp = matrix.diagonal()
        union = matrix.sum(1) + matrix.sum(0) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def pixel_accuracy(self) -> float | None:
        """Fraction of evaluated pixels predicted correctly, or None before any pixel was counted."""
        total = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / total if total else None

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_classes={self.num_classes}, pixels={int(self.matrix.sum())})"


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """hIoU: ``2ab / (a + b)``; 0 if either is 0; None if either is missing."""
    if a is None or b is None:
        return None
    if a == 0 or b == 0:
        return 0.0
    return 2 * a * b / (a + b)


def _check_subset(indices: Sequence[int], num_classes: int, argument: str) -> list[int]:
    indices = [int(i) for i in indices]
    outside = [i for i in indices if not 0 <= i < num_classes]
    if outside:
        raise ValueError(f"{argument} holds class indices {outside} outside [0, {num_classes})")
    if len(set(indices)) != len(indices):
        raise ValueError(f"{argument} repeats class indices")
    return indices


def _mean_percent(iou: torch.Tensor, indices: list[int]) -> float | None:
    """Mean over ``indices`` of the classes that have an IoU, in percent; None if none has."""
    values = iou[indices] if indices else iou[:0]
    values = values[~values.isnan()]
    return float(values.mean()) * 100 if values.numel() else None


def segmentation_metrics(
    confusion: ConfusionMatrix | torch.Tensor | np.ndarray,
    classes: Sequence[str],
    seen: Sequence[int] = (),
    unseen: Sequence[int] = (),
) -> dict:
    """mIoU, mIoU-seen, mIoU-unseen, hIoU, per-class IoU and pixel accuracy, all in percent.

    Args:
        confusion: a :class:`ConfusionMatrix` or a ``[C, C]`` matrix (rows gt, columns prediction).
        classes: the C class names (keys of ``per_class_iou``).
        seen, unseen: class indices of the two zero-shot subsets (disjoint; may be empty).

    Returns a dict: ``miou``, ``miou_seen``, ``miou_unseen``, ``hiou``, ``pixel_acc`` (floats in
    percent, or None when there is nothing to average: no pixel, an empty subset, or a subset none of
    whose classes occurs) and ``per_class_iou`` ``{name: percent or None}`` (None: the class is in
    neither the ground truth nor the prediction, so it is not averaged).
    """
    if isinstance(confusion, ConfusionMatrix):
        matrix = confusion
    else:
        values = _as_tensor(confusion, "confusion")
        if values.ndim != 2 or values.shape[0] != values.shape[1]:
            raise ValueError(f"confusion must be a square [C, C] matrix, got shape {tuple(values.shape)}")
        matrix = ConfusionMatrix(values.shape[0])
        matrix.matrix = values.cpu().clone()
    count = matrix.num_classes
    classes = list(classes)
    if len(classes) != count:
        raise ValueError(f"classes has {len(classes)} names but the confusion matrix has {count} classes")
    check_class_names(classes, "classes")
    seen = _check_subset(seen, count, "seen")
    unseen = _check_subset(unseen, count, "unseen")
    overlap = sorted(set(seen) & set(unseen))
    if overlap:
        raise ValueError(f"classes {[classes[i] for i in overlap]} are in both seen and unseen")

    iou = matrix.iou()
    miou_seen = _mean_percent(iou, seen)
    miou_unseen = _mean_percent(iou, unseen)
    accuracy = matrix.pixel_accuracy()
    return {
        "miou": _mean_percent(iou, list(range(count))),
        "miou_seen": miou_seen,
        "miou_unseen": miou_unseen,
        "hiou": harmonic_mean(miou_seen, miou_unseen),
        "per_class_iou": {name: (None if value.isnan() else float(value) * 100) for name, value in zip(classes, iou)},
        "pixel_acc": None if accuracy is None else accuracy * 100,
    }


# --------------------------------------------------------------------------------------------------
# Images without a prediction everywhere, and the classes an image holds
# --------------------------------------------------------------------------------------------------
def present_classes(label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Sorted class ids occurring in ``label`` (ignore excluded)."""
    values = torch.unique(label)
    return values[values != ignore_index]


NO_PREDICTION = -1  # label of pixels no proposal covers; never a class id
NO_PREDICTION_NAME = "<no prediction>"


def new_confusion(num_classes: int, ignore_index: int = 255):
    """A confusion matrix with one extra prediction column, index C, for pixels without prediction.

    Ground truth is never C, so such a pixel adds to its class's ground-truth count (a miss) and to no
    real class's prediction count: it lowers recall without inventing a false positive.
    """
    return ConfusionMatrix(num_classes + 1, ignore_index=ignore_index)


def add_image(confusion, pred: torch.Tensor, gt: torch.Tensor) -> None:
    """Add one image to a :func:`new_confusion` matrix (``pred`` may hold NO_PREDICTION)."""
    unpredicted = confusion.num_classes - 1
    pred = pred.cpu()
    confusion.update(torch.where(pred == NO_PREDICTION, unpredicted, pred), gt.cpu())


def confusion_metrics(confusion, classes: Sequence[str], seen: Sequence[int], unseen: Sequence[int]) -> dict:
    """:func:`segmentation_metrics` of a :func:`new_confusion` matrix.

    The "no prediction" column is a pseudo class: it is dropped from ``per_class_iou`` and mIoU is the
    mean over the real classes that have an IoU (seen/unseen/hIoU never include it).
    """
    metrics = dict(segmentation_metrics(confusion, list(classes) + [NO_PREDICTION_NAME], seen, unseen))
    metrics["per_class_iou"].pop(NO_PREDICTION_NAME)
    values = [v for v in metrics["per_class_iou"].values() if v is not None]
    metrics["miou"] = float(np.mean(values)) if values else None
    return metrics
