"""Ground-truth-derived proposals: every GT region plus realistic corruptions covering the whole IoU range.

For training the mask-aware loss (proposals of known quality) and for the mask-awareness diagnostic.
The random draws depend only on (seed, sample id), so an image gets the same proposals in any order,
in any process (DataLoader workers build them too).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt
from scipy.ndimage import label as connected_components
from skimage.segmentation import slic

from .types import IGNORE_INDEX, Proposals, as_numpy

GT_KINDS = ("part", "background", "merged", "eroded", "dilated", "superpixel")
ALL_GT_KINDS = ("whole",) + GT_KINDS


def sample_rng(seed: int, sample: dict) -> np.random.Generator:
    """A generator seeded by (seed, sample id): the same image gets the same draws in any order.

    Without an id the label's bytes stand in for it, so the result still depends only on the sample.
    """
    if "id" in sample and sample["id"] is not None:
        key = str(sample["id"]).encode()
    else:
        key = np.ascontiguousarray(as_numpy(sample["label"])).tobytes()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), digest]))


class _Region:
    """One ground-truth class map with the quantities its corruptions need, computed on demand."""

    def __init__(self, class_id: int, mask: np.ndarray):
        self.class_id = class_id
        self.mask = mask
        self.area = int(mask.sum())
        rows, cols = np.nonzero(mask)
        self.coords = np.stack([rows, cols], 1)
        self.bbox = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)  # y0, y1, x0, x1
        self._inside = self._outside = None

    @property
    def distance_inside(self) -> np.ndarray:
        """Distance of each object pixel to the nearest non-object pixel (erosion by thresholding)."""
        if self._inside is None:
            self._inside = distance_transform_edt(self.mask)
        return self._inside

    @property
    def distance_outside(self) -> np.ndarray:
        """Distance of each pixel to the object (dilation by thresholding; one transform, any radius)."""
        if self._outside is None:
            self._outside = distance_transform_edt(~self.mask)
        return self._outside


def _half_plane_part(mask: np.ndarray, coords: np.ndarray, fraction: float,
                     rng: np.random.Generator) -> np.ndarray:
    """The object pixels on one side of a random line that keeps ``fraction`` of them (IoU = fraction)."""
    angle = rng.uniform(0, 2 * np.pi)
    projection = coords @ np.array([np.sin(angle), np.cos(angle)])
    order = np.argsort(projection, kind="stable")
    keep = order[: max(1, int(round(fraction * len(order))))]
    part = np.zeros_like(mask)
    part[coords[keep, 0], coords[keep, 1]] = True
    return part


def _window_part(region: _Region, rng: np.random.Generator) -> np.ndarray:
    """The object inside a random sub-window of its bounding box (a box-shaped partial detection)."""
    y0, y1, x0, x1 = region.bbox
    h = max(1, int(round((y1 - y0) * rng.uniform(0.2, 0.9))))
    w = max(1, int(round((x1 - x0) * rng.uniform(0.2, 0.9))))
    top = y0 + rng.integers(0, y1 - y0 - h + 1)
    left = x0 + rng.integers(0, x1 - x0 - w + 1)
    window = np.zeros_like(region.mask)
    window[top:top + h, left:left + w] = True
    return region.mask & window


def _component_part(region: _Region, rng: np.random.Generator) -> np.ndarray | None:
    """One connected component of a class map with several (one instance of a class)."""
    components, count = connected_components(region.mask)
    if count < 2:
        return None
    return components == rng.integers(1, count + 1)


def _part(region: _Region, rng: np.random.Generator, **_) -> np.ndarray:
    strategy = rng.choice(["half_plane", "window", "component"], p=[0.5, 0.3, 0.2])
    if strategy == "component":
        part = _component_part(region, rng)
        if part is not None:
            return part
    if strategy == "window":
        return _window_part(region, rng)
    return _half_plane_part(region.mask, region.coords, rng.uniform(0.03, 0.97), rng)


def _with_background(region: _Region, rng: np.random.Generator, **_) -> np.ndarray:
    """The object plus the surrounding background of an enlarged bounding box (box-like proposal)."""
    height, width = region.mask.shape
    y0, y1, x0, x1 = region.bbox
    size = max(y1 - y0, x1 - x0)
    margins = rng.uniform(0.0, 0.75, size=4) * size  # each side independently
    top, bottom = max(0, int(y0 - margins[0])), min(height, int(np.ceil(y1 + margins[1])))
    left, right = max(0, int(x0 - margins[2])), min(width, int(np.ceil(x1 + margins[3])))
    box = np.zeros_like(region.mask)
    box[top:bottom, left:right] = True
    return region.mask | box


def _merged(region: _Region, rng: np.random.Generator, others: list[_Region], **_) -> np.ndarray | None:
    """The object united with (all or part of) another class region, preferring touching ones."""
    if not others:
        return None
    reach = max(3.0, 0.02 * np.hypot(*region.mask.shape))
    near = region.distance_outside <= reach
    touching = [other for other in others if (other.mask & near).any()]
    candidates = touching or others
    other = candidates[rng.integers(len(candidates))]
    if rng.uniform() < 0.5:
        addition = other.mask
    else:
        addition = _half_plane_part(other.mask, other.coords, rng.uniform(0.2, 1.0), rng)
    return region.mask | addition


def _eroded(region: _Region, rng: np.random.Generator, **_) -> np.ndarray | None:
    depth = region.distance_inside.max()
    if depth <= 1:
        return None
    # squared uniform: thin erosions (IoU > 0.9, like a slightly tight mask) are drawn as often as deep ones
    radius = max(1.0, rng.uniform(0.0, 1.0) ** 2 * 0.9 * depth)
    return region.distance_inside > radius


def _dilated(region: _Region, rng: np.random.Generator, **_) -> np.ndarray:
    radius = max(1.0, rng.uniform(0.0, 1.0) ** 2 * np.sqrt(region.area))  # thin ones as often as thick
    return region.distance_outside <= radius


def _superpixel_union(region: _Region, rng: np.random.Generator, superpixels: np.ndarray | None,
                      **_) -> np.ndarray | None:
    """A union of image superpixels overlapping the object, like a bottom-up grouping proposal.

    Superpixels covering at least a random fraction ``t`` of themselves with object are taken; then
    some are dropped (holes) and some barely-touching ones added (spilling outside the object).
    """
    if superpixels is None:
        return None
    ids = superpixels.ravel()
    count = int(ids.max()) + 1
    size = np.bincount(ids, minlength=count)
    overlap = np.bincount(ids, weights=region.mask.ravel(), minlength=count)
    fraction = np.divide(overlap, size, out=np.zeros(count), where=size > 0)
    touching = fraction > 0
    threshold = rng.uniform(0.05, 0.95)
    chosen = touching & (fraction >= threshold)
    chosen &= rng.uniform(size=count) >= rng.uniform(0.0, 0.3)  # drop some
    chosen |= touching & (rng.uniform(size=count) < rng.uniform(0.0, 0.3))  # spill outside
    if not chosen.any():
        chosen[np.argmax(overlap)] = True
    return chosen[superpixels]


_CORRUPTIONS: dict[str, Callable[..., np.ndarray | None]] = {
    "part": _part,
    "background": _with_background,
    "merged": _merged,
    "eroded": _eroded,
    "dilated": _dilated,
    "superpixel": _superpixel_union,
}


class GTProposals:
    """Ground-truth class regions plus realistic corruptions of them, covering the whole IoU range.

    Source regions are the per-class binary maps of the label (all pixels of one class, not connected
    components), the same maps the mask-aware loss compares proposals with; one connected component
    appears as one of the "part" corruptions. Ignore pixels never belong to a region. For each class
    with at least ``min_area`` pixels: the whole map (``include_whole``) and ``per_region`` proposals of
    each kind in ``kinds``:

    - ``part``: the object cut by a random half-plane keeping 3-97 % of it, a random sub-window of its
      box, or one of its connected components;
    - ``background``: the object plus an enlarged bounding box (object with surrounding background);
    - ``merged``: the object united with all or part of another class region (touching ones first);
    - ``eroded`` / ``dilated``: by a random radius (Euclidean distance transform);
    - ``superpixel``: a union of SLIC superpixels (``superpixels`` of them per image) overlapping the
      object, with holes and spill-over.

    Derived masks with fewer than ``min_area`` pixels are dropped. At most ``max_proposals`` are
    returned (None = no limit): all whole maps, then a random subset of the rest, in generation order
    (grouped by class, ascending class id; each group starts with its whole map). The random
    draws depend only on (seed, sample id), so an image gets the same proposals in any order.
    """

    def __init__(self, seed: int = 0, per_region: int = 2, kinds: Sequence[str] = GT_KINDS,
                 include_whole: bool = True, max_proposals: int | None = 100, min_area: int = 32,
                 superpixels: int = 100, ignore_index: int = IGNORE_INDEX):
        unknown = [kind for kind in kinds if kind not in GT_KINDS]
        if unknown:
            raise ValueError(f"GTProposals: unknown kinds {unknown}; choose from {list(GT_KINDS)}")
        if per_region < 0 or min_area < 1 or (max_proposals is not None and max_proposals < 1):
            raise ValueError(f"GTProposals: need per_region >= 0, min_area >= 1, max_proposals >= 1 or "
                             f"None (got {per_region}, {min_area}, {max_proposals})")
        self.seed = int(seed)
        self.per_region = per_region
        self.kinds = tuple(kinds)
        self.include_whole = include_whole
        self.max_proposals = max_proposals
        self.min_area = min_area
        self.superpixels = superpixels
        self.ignore_index = ignore_index

    def __call__(self, sample: dict) -> Proposals:
        label = self._label(sample)
        height, width = label.shape
        rng = sample_rng(self.seed, sample)
        regions = self._regions(label)
        superpixels = self._superpixels(sample) if regions and "superpixel" in self.kinds else None

        masks, kinds, sources = [], [], []
        for region in regions:
            if self.include_whole:
                masks.append(region.mask), kinds.append("whole"), sources.append(region.class_id)
            others = [other for other in regions if other is not region]
            for kind in self.kinds:
                for _ in range(self.per_region):
                    mask = _CORRUPTIONS[kind](region, rng, others=others, superpixels=superpixels)
                    if mask is not None and mask.sum() >= self.min_area:
                        masks.append(mask), kinds.append(kind), sources.append(region.class_id)

        keep = self._limit(kinds, rng)
        if not keep:
            return Proposals.empty(height, width, kinds=[],
                                   source_class=torch.zeros(0, dtype=torch.long))
        return Proposals(
            masks=torch.from_numpy(np.stack([masks[i] for i in keep])).float(),
            kinds=[kinds[i] for i in keep],
            source_class=torch.tensor([sources[i] for i in keep], dtype=torch.long),
        )

    def _label(self, sample: dict) -> np.ndarray:
        if sample.get("label") is None:
            raise ValueError(f"GTProposals needs sample['label'] (sample id {sample.get('id')!r} has none)")
        label = as_numpy(sample["label"])
        if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
            raise ValueError(f"GTProposals: label of sample {sample.get('id')!r} must be an integer [H,W] "
                             f"map, got {label.dtype} {label.shape}")
        image = sample.get("image")
        if image is not None and tuple(image.shape[-2:]) != label.shape:
            raise ValueError(f"GTProposals: image {tuple(image.shape)} and label {label.shape} of sample "
                             f"{sample.get('id')!r} differ in size")
        return label

    def _regions(self, label: np.ndarray) -> list[_Region]:
        values, counts = np.unique(label, return_counts=True)
        return [_Region(int(value), label == value) for value, count in zip(values, counts)
                if value != self.ignore_index and count >= self.min_area]

    def _superpixels(self, sample: dict) -> np.ndarray:
        if sample.get("image") is None:
            raise ValueError(f"GTProposals: the 'superpixel' kind needs sample['image'] "
                             f"(sample id {sample.get('id')!r} has none); drop it from kinds")
        image = as_numpy(sample["image"]).transpose(1, 2, 0)
        # SLIC on every k-th pixel (longer side <= 256) and the labels spread back: ~4x faster on
        # VOC-sized images, and superpixels hundreds of pixels wide lose nothing by it
        height, width = image.shape[:2]
        step = max(1, int(np.ceil(max(height, width) / 256)))
        small = slic(np.ascontiguousarray(image[::step, ::step]), n_segments=self.superpixels,
                     compactness=10, start_label=0)
        return small[np.arange(height)[:, None] // step, np.arange(width)[None, :] // step]

    def _limit(self, kinds: list[str], rng: np.random.Generator) -> list[int]:
        """Indices kept under ``max_proposals``: every whole map, then a random subset of the rest."""
        if self.max_proposals is None or len(kinds) <= self.max_proposals:
            return list(range(len(kinds)))
        whole = [i for i, kind in enumerate(kinds) if kind == "whole"][: self.max_proposals]
        rest = [i for i, kind in enumerate(kinds) if kind != "whole"]
        room = self.max_proposals - len(whole)
        picked = rng.choice(len(rest), size=room, replace=False) if room > 0 else []
        return sorted(whole + [rest[j] for j in picked])
