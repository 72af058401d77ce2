"""Mask proposals on another grid: one bilinear resize and one threshold for the whole package.

Proposals arrive at image resolution (or a generator's own resolution) and are needed at the label's
size (IoU targets, evaluation), at the image size (semantic map, crop-and-classify) and on the patch
grid (IP-CLIP's attention masks). All of them use :func:`resize_masks`: bilinear interpolation with
``align_corners=False`` and no antialias, as the authors resize proposals. A pixel or patch is *on*
where the value is ``>= MASK_THRESHOLD`` (:func:`mask_on`, :func:`binarize_masks`).

Why ``>=``: the authors' IP-CLIP blocks attention where the resized mask is ``< 0.5``, so a value of
exactly 0.5 attends. Soft (sigmoid) masks almost never hit 0.5 exactly, but a binary mask resized
bilinearly does wherever one of its edges falls half-way between two sample points, e.g. an edge on
an odd multiple of 8 px when 224 px go onto ViT-B/16's 14 x 14 grid (one patch per 16 px). With
``> 0.5`` such patches would be off, and most binary proposals (GT-derived training proposals are
binary) would get other attention masks than in the authors' code (tests/test_masks.py counts them).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5


def resize_masks(masks: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Soft or binary masks ``[N, h, w]`` -> floating ``[N, *size]`` in [0, 1] (bilinear).

    Masks already at ``size`` come back unchanged (as floats): resizing to the same size is the
    identity for bilinear interpolation anyway. Integer and bool masks become float32.
    """
    size = tuple(int(s) for s in size)
    values = masks if masks.is_floating_point() else masks.float()
    if values.shape[0] == 0:
        return values.new_zeros((0, *size))
    if tuple(values.shape[-2:]) == size:
        return values
    resized = F.interpolate(values[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return resized.clamp_(0, 1)  # bilinear weights sum to one only up to rounding


def mask_on(values: torch.Tensor, threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """Bool: where mask ``values`` (any shape, soft or binary) count as inside, ``values >= threshold``."""
    if values.dtype == torch.bool:
        return values
    return values >= threshold


def binarize_masks(masks: torch.Tensor, size: Sequence[int], threshold: float = MASK_THRESHOLD) -> torch.Tensor:
    """``[N, h, w]`` soft/binary masks -> bool ``[N, *size]``: :func:`resize_masks`, then :func:`mask_on`."""
    return mask_on(resize_masks(masks, size), threshold)
