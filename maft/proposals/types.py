"""The result type of every proposal generator, and hard IoU for analysis.

A generator is a callable ``generator(sample) -> Proposals``. ``sample`` is a dataset sample
(``image``: uint8 [3,H,W] RGB; ``label``: int64 [H,W], 255 = ignore, needed by GT-derived proposals
only; ``id``: str). The result holds N soft masks at image resolution and, where the generator
classifies its proposals (Mask2Former), their class probabilities A^p over the generator's own class
list (the paper's Sec. 3 and Appendix A). The soft IoU used by the mask-aware loss lives in
``maft.losses``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..masks import mask_on

IGNORE_INDEX = 255


@dataclass
class Proposals:
    """N mask proposals of one image.

    masks: float [N,H,W] in [0,1] at image resolution (binary generators give 0/1).
    scores: float [N,C_p] class probabilities A^p of the generator, or None.
    classes: the C_p class names of the ``scores`` columns, or None.
    kinds: per-proposal corruption kind for GT-derived proposals (one of ``ALL_GT_KINDS``), or None.
    source_class: int64 [N], the ground-truth class each GT-derived proposal was made from, or None.
    """

    masks: torch.Tensor
    scores: torch.Tensor | None = None
    classes: list[str] | None = None
    kinds: list[str] | None = None
    source_class: torch.Tensor | None = None

    def __post_init__(self):
        if self.masks.ndim != 3:
            raise ValueError(f"Proposals.masks must be [N,H,W], got shape {tuple(self.masks.shape)}")
        if not self.masks.is_floating_point():
            self.masks = self.masks.float()
        n = self.masks.shape[0]
        if self.scores is not None:
            if self.scores.ndim != 2 or self.scores.shape[0] != n:
                raise ValueError(f"Proposals.scores must be [N={n},C], got {tuple(self.scores.shape)}")
            if self.classes is not None and len(self.classes) != self.scores.shape[1]:
                raise ValueError(f"Proposals.classes has {len(self.classes)} names but scores has "
                                 f"{self.scores.shape[1]} columns")
        if self.kinds is not None and len(self.kinds) != n:
            raise ValueError(f"Proposals.kinds has {len(self.kinds)} entries for {n} masks")
        if self.source_class is not None and self.source_class.shape != (n,):
            raise ValueError(f"Proposals.source_class must be [N={n}], got {tuple(self.source_class.shape)}")

    def __len__(self) -> int:
        return self.masks.shape[0]

    @classmethod
    def empty(cls, height: int, width: int, **fields) -> "Proposals":
        return cls(masks=torch.zeros(0, height, width), **fields)

    def select(self, index: torch.Tensor | Sequence[int]) -> "Proposals":
        """The proposals at ``index`` (in that order), every per-proposal field kept in step."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Proposals(
            masks=self.masks[index],
            scores=None if self.scores is None else self.scores[index],
            classes=self.classes,
            kinds=None if self.kinds is None else [self.kinds[i] for i in index.tolist()],
            source_class=None if self.source_class is None else self.source_class[index],
        )


def proposal_iou(masks: torch.Tensor, label: torch.Tensor, class_id: int,
                 ignore_index: int = IGNORE_INDEX, exclude_ignored: bool = False) -> torch.Tensor:
    """Hard IoU [N] between each proposal (binarised by :func:`maft.masks.mask_on`: value >= 0.5) and the
    binary map of ``class_id``.

    Ignore pixels never belong to the class. By default they still count in the union like any other
    non-class pixel, as in the mask-aware loss, which compares proposals with per-class binary maps
    (so a proposal spilling over void or unlabelled pixels is penalised). ``exclude_ignored=True``
    drops them from intersection and union instead (evaluation-style "don't care").
    An empty union gives IoU 0.
    """
    if masks.ndim != 3 or masks.shape[-2:] != label.shape:
        raise ValueError(f"proposal_iou: masks {tuple(masks.shape)} must be [N,H,W] with H,W of the "
                         f"label {tuple(label.shape)}")
    if class_id == ignore_index:
        raise ValueError(f"proposal_iou: class_id {class_id} is the ignore index")
    on = mask_on(masks)
    target = (label == class_id).to(on.device)
    if exclude_ignored:
        on = on & (label != ignore_index).to(on.device)
    intersection = (on & target).flatten(1).sum(1)
    union = (on | target).flatten(1).sum(1)
    iou = intersection / union.clamp(min=1)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


def as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_hwc(sample: dict, who: str) -> np.ndarray:
    image = sample.get("image")
    if image is None or image.ndim != 3 or image.shape[0] != 3:
        shape = None if image is None else tuple(image.shape)
        raise ValueError(f"{who}: sample['image'] must be uint8 [3,H,W] RGB (sample id "
                         f"{sample.get('id')!r} has {shape})")
    image = as_numpy(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{who}: sample['image'] must be uint8, got {image.dtype} "
                         f"(sample {sample.get('id')!r})")
    return np.ascontiguousarray(image.transpose(1, 2, 0))
