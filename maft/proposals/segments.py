"""Class-agnostic mask proposals that read only the image: graph-based segments and their merges.

The zero-shot protocol needs test-time proposals that never saw a label, unseen classes least of all
(the paper's come from a generator trained on the seen classes only). :class:`SegmentProposals` is a
bottom-up generator in the spirit of selective search and of hierarchical (ultrametric) segmentation:

1. for each *strategy* ``(scale, sigma, min_size)``, Felzenszwalb-Huttenlocher's graph segmentation
   (scikit-image) over-segments the image; a large ``sigma`` blurs fine patterns (stripes, dots) into
   their mean colour, a small one keeps sharp borders, so the strategies disagree where it matters;
2. the segments are merged greedily, always the adjacent pair whose mean colours (CIE Lab) are
   closest, until one region is left: every segment and every merge is a candidate region;
3. each candidate is scored by its *stability*, the colour distance at which it is swallowed by its
   parent minus the distance at which it was formed: a region that survives a wide range of merge
   thresholds is set off from its surroundings by a strong colour edge;
4. candidates of all strategies are taken best-score first, a candidate overlapping an already kept
   one with IoU >= ``dedupe_iou`` is dropped, and at most ``max_proposals`` are kept.

Nothing here reads ``sample["label"]``; the result has no ``kinds``/``source_class`` (it knows no
classes). Proposals of an image are cached by the image's bytes (as packed bits), because an
evaluation sweep classifies the same test images with many classifiers.
"""
from __future__ import annotations

import hashlib
import heapq
from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch
from skimage.color import rgb2lab
from skimage.segmentation import felzenszwalb

from .types import Proposals

# (scale, sigma, min_size): two granularities x two blurs, min_size ~ a thing's smallest visible part
DEFAULT_STRATEGIES = ((100, 0.8, 20), (300, 0.8, 20), (100, 2.0, 20), (300, 2.0, 20))
# Proposals by (settings, image hash), shared by every generator instance of the process: an
# evaluation sweep builds a new generator per run over the same images. Packed bits: ~200 KB per
# 128x128 image with 100 proposals.
_CACHE: OrderedDict = OrderedDict()


def image_hwc(sample: dict) -> np.ndarray:
    """uint8 [H,W,3] from ``sample["image"]`` (uint8 [3,H,W] tensor or array); the only field read."""
    image = sample["image"]
    image = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"SegmentProposals: sample['image'] must be [3,H,W], got {image.shape}")
    return np.ascontiguousarray(image.transpose(1, 2, 0))


def adjacent_pairs(segments: np.ndarray) -> np.ndarray:
    """Unique pairs (a < b) of 4-connected neighbouring segment ids, int64 [P, 2]."""
    pairs = [np.stack([segments[:, :-1].ravel(), segments[:, 1:].ravel()], 1),
             np.stack([segments[:-1, :].ravel(), segments[1:, :].ravel()], 1)]
    pairs = np.concatenate(pairs)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return np.unique(np.sort(pairs, 1), axis=0)


def merge_hierarchy(segments: np.ndarray, features: np.ndarray):
    """Greedy mean-colour merging of adjacent segments until one region is left.

    ``segments`` int [H,W] with ids 0..S-1; ``features`` float [H,W,F]. Returns ``(members, formed,
    absorbed, area)``: per hierarchy node (the S segments, then one node per merge) the list of segment
    ids it covers, the distance at which it was formed (0 for segments), the distance at which it was
    merged into its parent (for the last node, and for nodes of a segment-disconnected image's other
    roots, the largest merge distance seen), and its pixel count.
    """
    count = int(segments.max()) + 1
    flat = segments.ravel()
    area = np.bincount(flat, minlength=count).astype(np.float64)
    sums = np.stack([np.bincount(flat, weights=features[..., f].ravel(), minlength=count)
                     for f in range(features.shape[-1])], 1)
    means = [sums[i] / max(area[i], 1.0) for i in range(count)]
    areas = list(area)
    members = [[i] for i in range(count)]
    formed = [0.0] * count
    absorbed = [None] * count
    neighbours = [set() for _ in range(count)]
    for a, b in adjacent_pairs(segments).tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    alive = [True] * count
    heap = [(float(np.linalg.norm(means[a] - means[b])), a, b) for a in range(count) for b in neighbours[a] if a < b]
    heapq.heapify(heap)
    highest = 0.0
    while heap:
        distance, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue  # an outdated pair: one side was merged already
        node = len(members)
        total = areas[a] + areas[b]
        means.append((means[a] * areas[a] + means[b] * areas[b]) / total)
        areas.append(total)
        members.append(members[a] + members[b])
        formed.append(distance)
        absorbed.append(None)
        absorbed[a] = absorbed[b] = distance
        alive[a] = alive[b] = False
        alive.append(True)
        highest = max(highest, distance)
        merged = (neighbours[a] | neighbours[b]) - {a, b}
        neighbours.append(merged)
        for other in merged:
            neighbours[other] -= {a, b}
            neighbours[other].add(node)
            heapq.heappush(heap, (float(np.linalg.norm(means[node] - means[other])), node, other))
    absorbed = [highest if value is None else value for value in absorbed]
    return members, formed, absorbed, np.asarray(areas)


class SegmentProposals:
    """``sample -> Proposals``: multi-strategy graph segments and their merges, best-stability first.

    strategies: ``(scale, sigma, min_size)`` triples for ``skimage.segmentation.felzenszwalb``.
    max_proposals: at most this many masks per image (the paper's generator gives 100).
    dedupe_iou: a candidate with IoU >= this with an already kept proposal is dropped.
    min_area: candidates with fewer pixels are dropped.
    max_area_fraction: candidates covering more of the image than this are dropped (the whole image is
        no proposal of any region).
    cache: how many images' proposals the process keeps in memory (0: none; shared by all instances).
    """

    def __init__(self, strategies: Sequence[Sequence[float]] = DEFAULT_STRATEGIES, max_proposals: int = 100,
                 dedupe_iou: float = 0.9, min_area: int = 16, max_area_fraction: float = 0.95,
                 cache: int = 512):
        if not strategies:
            raise ValueError("SegmentProposals: give at least one (scale, sigma, min_size) strategy")
        self.strategies = [tuple(float(v) for v in s) for s in strategies]
        if any(len(s) != 3 for s in self.strategies):
            raise ValueError(f"SegmentProposals: strategies must be (scale, sigma, min_size), got {strategies}")
        if not isinstance(max_proposals, int) or max_proposals < 1:
            raise ValueError(f"SegmentProposals: max_proposals must be a positive int, got {max_proposals!r}")
        if not 0 < dedupe_iou <= 1:
            raise ValueError(f"SegmentProposals: dedupe_iou must lie in (0, 1], got {dedupe_iou}")
        self.max_proposals, self.dedupe_iou = max_proposals, float(dedupe_iou)
        self.min_area, self.max_area_fraction = int(min_area), float(max_area_fraction)
        self.cache_size = int(cache)
        # the key names every setting: generators built with other settings never share entries
        self._settings = repr((self.strategies, self.max_proposals, self.dedupe_iou, self.min_area,
                               self.max_area_fraction))

    def __call__(self, sample: dict) -> Proposals:
        image = image_hwc(sample)
        key = (self._settings, hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest())
        if self.cache_size and key in _CACHE:
            _CACHE.move_to_end(key)
            packed, shape = _CACHE[key]
            masks = np.unpackbits(packed, count=int(np.prod(shape))).reshape(shape).astype(bool)
        else:
            masks = self.masks(image)
            if self.cache_size:
                _CACHE[key] = (np.packbits(masks), masks.shape)
                while len(_CACHE) > self.cache_size:
                    _CACHE.popitem(last=False)
        return Proposals(masks=torch.from_numpy(masks).float())

    def candidates(self, image: np.ndarray) -> tuple[list[np.ndarray], list[tuple[float, int, np.ndarray, float]]]:
        """The base segmentation of each strategy, and every candidate region of every strategy as
        (stability, strategy index, its segment ids, area)."""
        lab = rgb2lab(image)
        segmentations, found = [], []
        for strategy, (scale, sigma, min_size) in enumerate(self.strategies):
            segments = felzenszwalb(image, scale=scale, sigma=sigma, min_size=int(min_size))
            segmentations.append(segments)
            members, formed, absorbed, areas = merge_hierarchy(segments, lab)
            limit = self.max_area_fraction * segments.size
            for node, ids in enumerate(members):
                if self.min_area <= areas[node] <= limit:
                    found.append((max(0.0, absorbed[node] - formed[node]), strategy, np.asarray(ids), areas[node]))
        return segmentations, found

    def masks(self, image: np.ndarray) -> np.ndarray:
        """bool [N,H,W] proposals of one uint8 [H,W,3] image."""
        height, width = image.shape[:2]
        segmentations, found = self.candidates(image)
        sizes = [int(segments.max()) + 1 for segments in segmentations]
        order = sorted(range(len(found)), key=lambda i: -found[i][0])  # stable: ties keep strategy order
        kept = np.zeros((self.max_proposals, height * width), np.float32)  # IoUs by one matmul each
        kept_area = np.zeros(self.max_proposals, np.float32)
        n = 0
        for i in order:
            if n == self.max_proposals:
                break
            _, strategy, ids, area = found[i]
            # IoU >= t needs an area ratio >= t: only those kept masks are compared pixel by pixel
            close = np.flatnonzero(np.minimum(kept_area[:n], area) >= self.dedupe_iou * np.maximum(kept_area[:n], area))
            lookup = np.zeros(sizes[strategy], np.float32)
            lookup[ids] = 1.0
            mask = lookup[segmentations[strategy]].ravel()
            if len(close):
                inter = kept[close] @ mask
                if (inter / (kept_area[close] + area - inter)).max() >= self.dedupe_iou:
                    continue
            kept[n], kept_area[n] = mask, area
            n += 1
        return kept[:n].reshape(n, height, width) > 0.5
