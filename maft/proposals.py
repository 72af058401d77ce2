"""Mask proposal generators: one interface, four sources.

A generator is a callable ``generator(sample) -> Proposals``. ``sample`` is a dataset sample
(``image``: uint8 [3,H,W] RGB; ``label``: int64 [H,W], 255 = ignore, needed by GT-derived proposals
only; ``id``: str). The result holds N soft masks at image resolution and, where the generator
classifies its proposals (Mask2Former), their class probabilities A^p over the generator's own class
list (the paper's Sec. 3 and Appendix A).

Sources (``build_proposal_generator(kind, **settings)``):

- ``"gt"``: :class:`GTProposals`, ground-truth regions plus realistic corruptions covering the whole
  IoU range, seeded per (seed, sample id); for training the mask-aware loss and for analysis.
- ``"sam"``: :class:`SAMProposals`, Segment Anything's automatic mask generator around any ``Sam``
  (Sec. 5.4 of the paper uses SAM-H); :func:`load_sam` builds one from an official checkpoint.
- ``"mask2former"``: :class:`Mask2FormerProposals`, the per-query masks and class scores of a
  ``transformers`` Mask2Former; :func:`load_mask2former` loads one.
- ``"file"``: :class:`FileProposals`, proposals precomputed by anything else, stored per image.

On-disk format read by :class:`FileProposals` and written by :func:`save_proposals`, one file per
image, named ``<id>.npz`` or ``<id>.json`` (the image id as in the dataset sample):

- ``<id>.npz`` (``numpy.savez_compressed``):
    ``masks``   [N,H,W] bool or uint8 holding only 0/1 (binary), or float16/float32 probabilities in
                [0,1]; H,W must equal the image size. N may be 0.
    ``scores``  optional [N,C] float class probabilities A^p of the generator.
    ``classes`` optional [C] str, the class names of the ``scores`` columns.
    ``kinds``   optional [N] str; ``source_class`` optional [N] int64 (written for GT proposals).
- ``<id>.json`` (COCO run-length encoding, decoded with pycocotools): either a list of records or an
  object ``{"proposals": [records], "classes": [C names]}``; a record is
  ``{"segmentation": {"size": [H, W], "counts": "<COCO RLE string>"}, "scores": [C floats]?,
  "score": float?}``. ``scores`` must be given for all records or for none. ``score`` (one
  confidence per mask, e.g. SAM's predicted IoU) only orders the proposals when ``max_proposals``
  keeps the best ones. RLE masks are binary: soft masks are thresholded at 0.5 when written.

Hard IoU for analysis lives here (:func:`proposal_iou`); the soft IoU used by the mask-aware loss
lives in ``maft.losses``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255
GT_KINDS = ("part", "background", "merged", "eroded", "dilated", "superpixel")
ALL_GT_KINDS = ("whole",) + GT_KINDS
SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}


# --------------------------------------------------------------------------------------------------
# The result type
# --------------------------------------------------------------------------------------------------
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
    """Hard IoU [N] between each proposal (binarised: value > 0.5) and the binary map of ``class_id``.

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
    on = masks > 0.5
    target = (label == class_id).to(on.device)
    if exclude_ignored:
        on = on & (label != ignore_index).to(on.device)
    intersection = (on & target).flatten(1).sum(1)
    union = (on | target).flatten(1).sum(1)
    iou = intersection / union.clamp(min=1)
    return torch.where(union > 0, iou, torch.zeros_like(iou))


# --------------------------------------------------------------------------------------------------
# Ground-truth-derived proposals
# --------------------------------------------------------------------------------------------------
def sample_rng(seed: int, sample: dict) -> np.random.Generator:
    """A generator seeded by (seed, sample id): the same image gets the same draws in any order.

    Without an id the label's bytes stand in for it, so the result still depends only on the sample.
    """
    if "id" in sample and sample["id"] is not None:
        key = str(sample["id"]).encode()
    else:
        key = np.ascontiguousarray(_as_numpy(sample["label"])).tobytes()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), digest]))


def _as_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


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
            from scipy.ndimage import distance_transform_edt
            self._inside = distance_transform_edt(self.mask)
        return self._inside

    @property
    def distance_outside(self) -> np.ndarray:
        """Distance of each pixel to the object (dilation by thresholding; one transform, any radius)."""
        if self._outside is None:
            from scipy.ndimage import distance_transform_edt
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
    from scipy.ndimage import label as connected_components
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
        label = _as_numpy(sample["label"])
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
        from skimage.segmentation import slic
        if sample.get("image") is None:
            raise ValueError(f"GTProposals: the 'superpixel' kind needs sample['image'] "
                             f"(sample id {sample.get('id')!r} has none); drop it from kinds")
        image = _as_numpy(sample["image"]).transpose(1, 2, 0)
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


# --------------------------------------------------------------------------------------------------
# Segment Anything
# --------------------------------------------------------------------------------------------------
def load_sam(model_type: str = "vit_h", checkpoint: str | os.PathLike | None = None,
             device: str | torch.device = "cpu"):
    """A ``segment_anything`` ``Sam`` of ``model_type`` with the weights of ``checkpoint`` (eval mode).

    The official checkpoints are sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth and sam_vit_b_01ec64.pth
    (github.com/facebookresearch/segment-anything). Weights are loaded on the CPU first, so a
    checkpoint saved from a GPU loads on a machine without one.
    """
    import segment_anything

    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"load_sam: unknown model_type {model_type!r}; choose from {list(SAM_CHECKPOINTS)}")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"load_sam: SAM checkpoint {str(checkpoint)!r} not found. Download the official "
            f"{model_type} weights ({SAM_CHECKPOINTS[model_type]}; all: "
            f"{', '.join(SAM_CHECKPOINTS.values())}) from github.com/facebookresearch/segment-anything "
            f"and pass its path as checkpoint=...")
    model = segment_anything.sam_model_registry[model_type](checkpoint=None)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"load_sam: {checkpoint} does not hold {model_type} weights "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval()


class SAMProposals:
    """Segment Anything's automatic mask generator (a grid of point prompts) as a proposal generator.

    Settings are those of ``segment_anything.SamAutomaticMaskGenerator`` with its defaults (tuned for
    SAM ViT-H). Masks are binary, sorted by SAM's predicted IoU (``sort_by="predicted_iou"``), its
    stability score or area, largest first; ``max_proposals`` keeps the first ones. No class scores.
    ``min_mask_region_area > 0`` needs OpenCV (``pip install opencv-python-headless``).
    """

    SORT_KEYS = ("predicted_iou", "stability_score", "area")

    def __init__(self, sam_model, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, max_proposals: int | None = None,
                 sort_by: str = "predicted_iou"):
        from segment_anything import SamAutomaticMaskGenerator

        if sort_by not in self.SORT_KEYS:
            raise ValueError(f"SAMProposals: sort_by must be one of {self.SORT_KEYS}, got {sort_by!r}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("SAMProposals: give exactly one of points_per_side and point_grids")
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401  (segment_anything's small-region clean-up uses OpenCV)
            except ImportError:
                raise ImportError("SAMProposals: min_mask_region_area > 0 needs OpenCV; "
                                  "pip install opencv-python-headless, or set it to 0") from None
        self.sam_model = sam_model.eval()
        self.max_proposals = max_proposals
        self.sort_by = sort_by
        self.mask_generator = SamAutomaticMaskGenerator(
            sam_model, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
            min_mask_region_area=min_mask_region_area, output_mode="binary_mask")

    def __call__(self, sample: dict) -> Proposals:
        image = _image_hwc(sample, "SAMProposals")
        height, width = image.shape[:2]
        records = self.mask_generator.generate(image)
        # stable sort: equal keys keep SAM's own order, so results are reproducible
        records = sorted(records, key=lambda record: -float(record[self.sort_by]))
        if self.max_proposals is not None:
            records = records[: self.max_proposals]
        if not records:
            return Proposals.empty(height, width)
        masks = np.stack([record["segmentation"] for record in records])
        return Proposals(masks=torch.from_numpy(masks).float())


def _image_hwc(sample: dict, who: str) -> np.ndarray:
    image = sample.get("image")
    if image is None or image.ndim != 3 or image.shape[0] != 3:
        shape = None if image is None else tuple(image.shape)
        raise ValueError(f"{who}: sample['image'] must be uint8 [3,H,W] RGB (sample id "
                         f"{sample.get('id')!r} has {shape})")
    image = _as_numpy(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{who}: sample['image'] must be uint8, got {image.dtype} "
                         f"(sample {sample.get('id')!r})")
    return np.ascontiguousarray(image.transpose(1, 2, 0))


# --------------------------------------------------------------------------------------------------
# Mask2Former (Hugging Face transformers)
# --------------------------------------------------------------------------------------------------
def load_mask2former(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model, image_processor) of a ``transformers`` Mask2Former from a local folder or a hub id.

    A local folder needs ``config.json`` and the weights (``save_pretrained`` output); without a
    ``preprocessor_config.json`` the default Mask2Former image processor is used.
    """
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or path.is_absolute() or str(name_or_path).startswith((".", "~"))
    if looks_local:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"load_mask2former: {str(path)!r} is not a folder holding a "
                                    f"Mask2Former config.json (save one with model.save_pretrained)")
        model = Mask2FormerForUniversalSegmentation.from_pretrained(path)
        processor = (Mask2FormerImageProcessor.from_pretrained(path)
                     if (path / "preprocessor_config.json").is_file() else Mask2FormerImageProcessor())
    else:
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(str(name_or_path))
            processor = Mask2FormerImageProcessor.from_pretrained(str(name_or_path))
        except OSError as error:
            raise FileNotFoundError(
                f"load_mask2former: could not load {str(name_or_path)!r}: not a local folder and not "
                f"available from the Hugging Face hub (offline or unknown id): {error}") from None
    return model.to(device).eval(), processor


class Mask2FormerProposals:
    """The per-query masks of a Mask2Former as proposals, with its class scores as A^p.

    masks: sigmoid of ``masks_queries_logits`` bilinearly upsampled (as logits) to the processed
    input, cropped to its unpadded part, and resized to the image size.
    scores: softmax of ``class_queries_logits`` over all C+1 columns, then the last ("no object")
    column dropped, as in Mask2Former's semantic inference and ZSSeg's ensemble; a row then sums to
    1 - p(no object), so proposals the model finds empty carry little class mass.
    ``renormalize=True`` drops the column first instead (rows sum to 1).
    ``max_proposals`` keeps the queries with the highest class probability (best first); otherwise
    the query order is kept. ``class_names`` default to the model's ``config.id2label``.
    """

    def __init__(self, model, image_processor=None, class_names: Sequence[str] | None = None,
                 max_proposals: int | None = None, renormalize: bool = False):
        if image_processor is None:
            from transformers import Mask2FormerImageProcessor
            image_processor = Mask2FormerImageProcessor()
        num_labels = model.config.num_labels
        if class_names is None:
            class_names = [model.config.id2label[i] for i in range(num_labels)]
        if len(class_names) != num_labels:
            raise ValueError(f"Mask2FormerProposals: {len(class_names)} class_names for a model with "
                             f"{num_labels} labels")
        self.model = model.eval()
        self.image_processor = image_processor
        self.class_names = list(class_names)
        self.max_proposals = max_proposals
        self.renormalize = renormalize

    @torch.no_grad()
    def __call__(self, sample: dict) -> Proposals:
        image = _image_hwc(sample, "Mask2FormerProposals")
        height, width = image.shape[:2]
        parameter = next(self.model.parameters())
        inputs = self.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"].to(parameter.device, parameter.dtype)
        pixel_mask = inputs.get("pixel_mask")
        pixel_mask = pixel_mask.to(parameter.device) if pixel_mask is not None else None
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)

        logits = F.interpolate(outputs.masks_queries_logits.float(), size=pixel_values.shape[-2:],
                               mode="bilinear", align_corners=False)[0]
        if pixel_mask is not None:  # padding added by the processor lies bottom/right
            valid_rows = int(pixel_mask[0].any(1).sum())
            valid_cols = int(pixel_mask[0].any(0).sum())
            logits = logits[:, :valid_rows, :valid_cols]
        logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        masks = logits.sigmoid().cpu()

        class_logits = outputs.class_queries_logits[0].float()
        if self.renormalize:
            scores = class_logits[:, :-1].softmax(-1)
        else:
            scores = class_logits.softmax(-1)[:, :-1]
        proposals = Proposals(masks=masks, scores=scores.cpu(), classes=list(self.class_names))
        if self.max_proposals is not None and self.max_proposals < len(proposals):
            best = proposals.scores.max(1).values.argsort(descending=True, stable=True)
            proposals = proposals.select(best[: self.max_proposals])
        return proposals


# --------------------------------------------------------------------------------------------------
# Precomputed proposals on disk
# --------------------------------------------------------------------------------------------------
FILE_SUFFIXES = (".npz", ".json")


def save_proposals(path: str | os.PathLike, proposals: Proposals,
                   confidence: torch.Tensor | None = None) -> Path:
    """Write ``proposals`` in the format named by the suffix of ``path`` (.npz or .json; see module doc).

    .npz keeps binary masks as bool and soft masks as float16. .json stores COCO RLE (soft masks are
    thresholded at 0.5), ``confidence`` [N] as each record's ``score``; kinds/source_class are .npz only.
    """
    path = Path(path)
    if path.suffix not in FILE_SUFFIXES:
        raise ValueError(f"save_proposals: {path} must end in .npz or .json")
    path.parent.mkdir(parents=True, exist_ok=True)
    masks = proposals.masks.detach().cpu()
    if path.suffix == ".npz":
        binary = bool(((masks == 0) | (masks == 1)).all())
        arrays: dict[str, Any] = {"masks": masks.bool().numpy() if binary else masks.half().numpy()}
        if proposals.scores is not None:
            arrays["scores"] = proposals.scores.detach().cpu().float().numpy()
        if proposals.classes is not None:
            arrays["classes"] = np.array(proposals.classes, dtype=str)
        if proposals.kinds is not None:
            arrays["kinds"] = np.array(proposals.kinds, dtype=str)
        if proposals.source_class is not None:
            arrays["source_class"] = proposals.source_class.cpu().numpy().astype(np.int64)
        with open(path, "wb") as handle:  # a file handle keeps numpy from appending its own suffix
            np.savez_compressed(handle, **arrays)
        return path

    from pycocotools import mask as mask_utils
    binary = np.asfortranarray((masks > 0.5).numpy().transpose(1, 2, 0).astype(np.uint8))
    rles = mask_utils.encode(binary) if len(masks) else []
    records = []
    for i, rle in enumerate(rles):
        record: dict[str, Any] = {"segmentation": {"size": [int(s) for s in rle["size"]],
                                                   "counts": rle["counts"].decode("ascii")}}
        if proposals.scores is not None:
            record["scores"] = proposals.scores[i].tolist()
        if confidence is not None:
            record["score"] = float(confidence[i])
        records.append(record)
    content: Any = records
    if proposals.classes is not None:
        content = {"proposals": records, "classes": proposals.classes}
    path.write_text(json.dumps(content))
    return path


def load_proposals(path: str | os.PathLike, image_size: tuple[int, int] | None = None) -> Proposals:
    """Read one proposals file (.npz or .json, see module doc); check its masks are ``image_size``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_proposals: {path} does not exist")
    if path.suffix == ".npz":
        proposals = _load_npz(path)
    elif path.suffix == ".json":
        proposals, _ = _load_json(path)
    else:
        raise ValueError(f"load_proposals: {path} must end in .npz or .json")
    if image_size is not None and len(proposals) == 0:
        proposals = _with_size(proposals, image_size)
    if image_size is not None and tuple(proposals.masks.shape[-2:]) != tuple(image_size):
        raise ValueError(f"load_proposals: masks in {path} are {tuple(proposals.masks.shape[-2:])} but the "
                         f"image is {tuple(image_size)}")
    return proposals


def _with_size(proposals: Proposals, size: tuple[int, int]) -> Proposals:
    """An empty proposal set given the image size (an empty JSON list cannot say it)."""
    return Proposals(masks=torch.zeros(0, *size), scores=proposals.scores, classes=proposals.classes,
                     kinds=proposals.kinds, source_class=proposals.source_class)


def _load_npz(path: Path) -> Proposals:
    with np.load(path, allow_pickle=False) as data:
        if "masks" not in data:
            raise ValueError(f"{path}: no 'masks' array (found {list(data.keys())})")
        masks = data["masks"]
        scores = data["scores"] if "scores" in data else None
        classes = [str(name) for name in data["classes"]] if "classes" in data else None
        kinds = [str(kind) for kind in data["kinds"]] if "kinds" in data else None
        source = torch.from_numpy(data["source_class"].astype(np.int64)) if "source_class" in data else None
    if masks.ndim != 3:
        raise ValueError(f"{path}: masks must be [N,H,W], got shape {masks.shape}")
    if masks.dtype == np.bool_:
        tensor = torch.from_numpy(masks).float()
    elif np.issubdtype(masks.dtype, np.integer):
        if masks.size and (masks.min() < 0 or masks.max() > 1):
            raise ValueError(f"{path}: integer masks must hold only 0/1 (found values up to {masks.max()}); "
                             f"store probabilities as float16 in [0,1] or masks as bool")
        tensor = torch.from_numpy(masks.astype(np.float32))
    elif np.issubdtype(masks.dtype, np.floating):
        tensor = torch.from_numpy(masks.astype(np.float32))
        if tensor.numel() and (not torch.isfinite(tensor).all() or tensor.min() < 0 or tensor.max() > 1):
            raise ValueError(f"{path}: float masks must be probabilities in [0,1]")
    else:
        raise ValueError(f"{path}: masks dtype {masks.dtype} is not bool, integer or float")
    try:
        return Proposals(masks=tensor, scores=None if scores is None else torch.from_numpy(scores).float(),
                         classes=classes, kinds=kinds, source_class=source)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _load_json(path: Path) -> tuple[Proposals, torch.Tensor | None]:
    from pycocotools import mask as mask_utils

    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    classes = None
    if isinstance(content, dict):
        if "proposals" not in content:
            raise ValueError(f"{path}: a JSON object needs a 'proposals' list")
        records, classes = content["proposals"], content.get("classes")
    else:
        records = content
    if not isinstance(records, list) or not records:
        if isinstance(records, list):  # no proposals: the size is unknown, the caller checks
            return Proposals(masks=torch.zeros(0, 0, 0), classes=classes), None
        raise ValueError(f"{path}: expected a list of records with a 'segmentation' RLE")
    masks, scores, confidence = [], [], []
    for i, record in enumerate(records):
        rle = record.get("segmentation") if isinstance(record, dict) else None
        if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
            raise ValueError(f"{path}: record {i} has no COCO RLE 'segmentation' with size and counts")
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        else:
            rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        with warnings.catch_warnings():  # pycocotools' own numpy-2 deprecation notice, not ours
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            masks.append(mask_utils.decode(rle))
        scores.append(record.get("scores"))
        confidence.append(record.get("score"))
    sizes = {mask.shape for mask in masks}
    if len(sizes) > 1:
        raise ValueError(f"{path}: records have different sizes {sorted(sizes)}")
    given = [s is not None for s in scores]
    if any(given) and not all(given):
        raise ValueError(f"{path}: 'scores' must be given for all records or none")
    score_tensor = torch.tensor(scores, dtype=torch.float) if all(given) else None
    confidence_tensor = (torch.tensor([c if c is not None else -np.inf for c in confidence])
                         if any(c is not None for c in confidence) else None)
    try:
        proposals = Proposals(masks=torch.from_numpy(np.stack(masks)).float(), scores=score_tensor,
                              classes=classes)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return proposals, confidence_tensor


class FileProposals:
    """Proposals precomputed by any method, read from ``directory`` (format: see the module doc).

    The file of a sample is ``directory / pattern.format(id=sample["id"])``; when the pattern has no
    .npz/.json suffix, ``.npz`` then ``.json`` are tried. ``max_proposals`` keeps the first ones (for
    JSON with per-record ``score``: the highest scored).
    """

    def __init__(self, directory: str | os.PathLike, pattern: str = "{id}", max_proposals: int | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"FileProposals: proposal directory {str(self.directory)!r} "
                                    f"does not exist")
        self.pattern = pattern
        self.max_proposals = max_proposals

    def path_for(self, sample_id: str) -> Path:
        name = self.pattern.format(id=sample_id)
        if Path(name).suffix in FILE_SUFFIXES:
            candidates = [self.directory / name]
        else:
            candidates = [self.directory / (name + suffix) for suffix in FILE_SUFFIXES]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"FileProposals: no proposals for image id {sample_id!r} in "
                                f"{self.directory} (looked for {', '.join(c.name for c in candidates)})")

    def __call__(self, sample: dict) -> Proposals:
        if sample.get("id") is None:
            raise ValueError("FileProposals needs sample['id'] to find the proposals file")
        path = self.path_for(str(sample["id"]))
        confidence = None
        if path.suffix == ".json":
            proposals, confidence = _load_json(path)
        else:
            proposals = _load_npz(path)
        image = sample.get("image") if sample.get("image") is not None else sample.get("label")
        if image is not None:
            size = tuple(image.shape[-2:])
            if len(proposals) == 0:
                proposals = _with_size(proposals, size)
            elif tuple(proposals.masks.shape[-2:]) != size:
                raise ValueError(f"FileProposals: masks in {path} are {tuple(proposals.masks.shape[-2:])} "
                                 f"but image {sample['id']!r} is {size}")
        if self.max_proposals is not None and self.max_proposals < len(proposals):
            order = (confidence.argsort(descending=True, stable=True) if confidence is not None
                     else torch.arange(len(proposals)))
            proposals = proposals.select(order[: self.max_proposals])
        return proposals


def export_proposals(generator: Callable[[dict], Proposals], samples: Iterable[dict],
                     directory: str | os.PathLike, suffix: str = ".npz") -> Path:
    """Run ``generator`` over ``samples`` and write one file per id (e.g. cache SAM proposals once)."""
    from tqdm import tqdm

    directory = Path(directory)
    for sample in tqdm(samples, desc=f"proposals -> {directory}"):
        save_proposals(directory / f"{sample['id']}{suffix}", generator(sample))
    return directory


# --------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------
PROPOSAL_KINDS = ("gt", "sam", "mask2former", "file")


def build_proposal_generator(kind: str, **settings) -> Callable[[dict], Proposals]:
    """A proposal generator by name; ``settings`` are the keyword arguments of its class.

    - ``"gt"``: :class:`GTProposals` settings.
    - ``"sam"``: ``model`` (a ``Sam``) or ``checkpoint`` (+ ``model_type``, default vit_h; ``device``),
      then :class:`SAMProposals` settings.
    - ``"mask2former"``: ``model`` (+ ``image_processor``) or ``name_or_path`` (+ ``device``), then
      :class:`Mask2FormerProposals` settings.
    - ``"file"`` or ``"file:DIR"``: ``directory`` (unless in the kind), ``pattern``, ``max_proposals``.
    """
    if kind.startswith("file:"):
        settings = {"directory": kind[len("file:"):], **settings}
        kind = "file"
    if kind == "gt":
        return GTProposals(**settings)
    if kind == "sam":
        model = settings.pop("model", None)
        model_type = settings.pop("model_type", "vit_h")
        checkpoint = settings.pop("checkpoint", None)
        device = settings.pop("device", "cpu")
        if model is None:
            model = load_sam(model_type, checkpoint, device=device)
        return SAMProposals(model, **settings)
    if kind == "mask2former":
        model = settings.pop("model", None)
        name_or_path = settings.pop("name_or_path", None)
        device = settings.pop("device", "cpu")
        if model is None:
            if name_or_path is None:
                raise ValueError("build_proposal_generator('mask2former') needs model=... or "
                                 "name_or_path=...")
            model, processor = load_mask2former(name_or_path, device=device)
            settings.setdefault("image_processor", processor)
        return Mask2FormerProposals(model, **settings)
    if kind == "file":
        if "directory" not in settings:
            raise ValueError("build_proposal_generator('file') needs directory=... (or kind 'file:DIR')")
        return FileProposals(**settings)
    raise ValueError(f"unknown proposal generator kind {kind!r}; choose from {list(PROPOSAL_KINDS)} "
                     f"or 'file:DIR'")
