"""How good are a generator's proposals? Best IoU per ground-truth region, and the Table 7 upper bound.

For every ground-truth region (the map of one class in one image, as the mask-aware loss and the
evaluation define regions) the best hard IoU over the image's proposals says whether some proposal
covers it: mean best IoU and recall at IoU 0.5 / 0.75, over seen and unseen classes apart (a
generator that never saw a label should not be better on one than on the other). The upper bound
(paper Table 7, Appendix C.1) replaces the classifier's scores by each proposal's true IoU: the
segmentation a perfect classifier would reach with these proposals.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from ..inference import semantic_map
from ..losses import soft_iou
from ..masks import resize_masks
from ..metrics import add_image, confusion_metrics, new_confusion, present_classes
from ..utils.progress import progress_bar
from .types import proposal_iou


def region_ious(masks: torch.Tensor, label: torch.Tensor, classes: torch.Tensor,
                ignore_index: int = 255) -> torch.Tensor:
    """[K, N] soft IoU of the N proposals with the binary map of each class in ``classes`` (K ids).

    The target of class k is ``label == k``, so ignored pixels count as "not class k" (as in the
    mask-aware loss; see :mod:`maft.losses`): in the VOC protocol the background is ignored, and a
    proposal that swallows background must score a low IoU.
    """
    label = label.to(masks.device)
    masks = resize_masks(masks.float(), label.shape)
    targets = label[None] == classes.to(label.device)[:, None, None]
    return soft_iou(masks, targets)


def upper_bound_map(masks: torch.Tensor, label: torch.Tensor, num_classes: int,
                    ignore_index: int = 255) -> torch.Tensor:
    """Paper Table 7: the semantic map with A^c replaced by S_IoU [N, C] (0 for classes not in the image)."""
    classes = present_classes(label, ignore_index)
    scores = torch.zeros(masks.shape[0], num_classes, device=masks.device)
    if masks.shape[0] and len(classes):
        scores[:, classes.to(masks.device)] = region_ious(masks, label, classes, ignore_index).T
    return semantic_map(scores, masks, size=tuple(label.shape))


def best_ious(masks: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> dict[int, float]:
    """{class id: best hard IoU over the proposals} for every class present in ``label``
    (:func:`maft.proposals.proposal_iou`: the mask rule of :mod:`maft.masks`, ignore pixels are
    "not the class")."""
    found = {}
    for k in present_classes(label, ignore_index).tolist():
        ious = proposal_iou(masks, label, k, ignore_index) if masks.shape[0] else torch.zeros(1)
        found[k] = float(ious.max())
    return found


def proposal_quality(generator: Callable, dataset, max_images: int | None = None, thresholds=(0.5, 0.75),
                     upper_bound: bool = True, progress: bool = False, give_label: bool = False) -> dict:
    """Best-IoU statistics of ``generator`` on ``dataset`` (seen/unseen and thing/stuff apart when the
    dataset says which), proposals and seconds per image, and the upper-bound metrics.

    The generator gets only ``image`` and ``id`` of each sample, unless ``give_label`` (for a
    GT-derived generator, as a reference)."""
    total = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    ignore = getattr(dataset, "ignore_index", 255)
    seen, unseen = set(dataset.seen), set(dataset.unseen)
    things = set(getattr(getattr(dataset, "spec", None), "thing_ids", ()))
    records, counts, seconds = [], [], 0.0
    bound = new_confusion(len(dataset.classes), ignore)
    for index in progress_bar(range(total), disable=not progress, desc="proposal quality"):
        sample = dataset[index]
        given = sample if give_label else {"image": sample["image"], "id": sample.get("id")}
        start = time.perf_counter()
        proposals = generator(given)
        seconds += time.perf_counter() - start
        label = sample["label"]
        counts.append(len(proposals))
        for k, iou in best_ious(proposals.masks, label, ignore).items():
            records.append((k, iou))
        if upper_bound:
            add_image(bound, upper_bound_map(proposals.masks.float(), label, len(dataset.classes), ignore), label)

    def summary(selected):
        values = np.array([iou for k, iou in records if selected(k)])
        if not len(values):
            return None
        out = {"regions": int(len(values)), "mean_best_iou": float(values.mean())}
        out.update({f"recall@{t}": float((values >= t).mean()) for t in thresholds})
        return out

    result = {
        "images": total,
        "proposals_per_image": float(np.mean(counts)) if counts else 0.0,
        "proposals_per_image_max": int(max(counts)) if counts else 0,
        "seconds_per_image": seconds / max(total, 1),
        "all": summary(lambda k: True),
        "seen": summary(lambda k: k in seen),
        "unseen": summary(lambda k: k in unseen),
    }
    if things:
        result["things"] = summary(lambda k: k in things)
        result["stuff"] = summary(lambda k: k not in things)
    if upper_bound:
        metrics = confusion_metrics(bound, dataset.classes, sorted(seen), sorted(unseen))
        result["upper_bound"] = {k: metrics[k] for k in ("miou", "miou_seen", "miou_unseen", "hiou")}
    return result
