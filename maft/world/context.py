"""Does context carry information? Mutual information between a class and its context, above a
shuffled baseline, on any dataset the package loads (the world's scenes and the real samples alike).

Two kinds of pairs, both read from label maps only:

* ``cooccurrence``: every ordered pair (a, b) of distinct thing classes present in one image. On VOC, where
  background is not a class, this is the only context there is; it is the issue-19 real-data measure.
* ``surroundings``: for each thing region, (its class, the stuff class that holds most pixels of a ring
  of ``ring`` pixels around it). Needs a dataset with stuff labels (the world).

The plug-in estimate of I(A; B) from counts is biased upwards by the number of cells; the same
estimate after shuffling B across the pairs (A's and B's marginals kept, the link cut) measures that
bias, and the reported ``excess_bits`` is the difference: 0 for a world whose context is independent
of its classes.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .spec import WorldSpec

KINDS = ("cooccurrence", "surroundings")


def mutual_information_bits(pairs: np.ndarray) -> float:
    """Plug-in I(A; B) in bits of integer pairs ``[n, 2]``."""
    pairs = np.asarray(pairs, np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2:
        raise ValueError(f"pairs must be an [n, 2] array, got shape {pairs.shape}")
    if len(pairs) == 0:
        return 0.0
    _, a = np.unique(pairs[:, 0], return_inverse=True)
    _, b = np.unique(pairs[:, 1], return_inverse=True)
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float((joint[nonzero] * np.log2(joint[nonzero] / outer[nonzero])).sum())


def cooccurrence_pairs(label: torch.Tensor, class_ids, ignore_index: int = 255) -> list[tuple[int, int]]:
    """Ordered pairs of distinct classes of ``class_ids`` present in one label map."""
    present = [int(c) for c in torch.unique(label).tolist() if c != ignore_index and c in class_ids]
    return [(a, b) for a in present for b in present if a != b]


def surroundings_pairs(label: torch.Tensor, thing_ids, stuff_ids, ring: int = 4) -> list[tuple[int, int]]:
    """(thing class, majority stuff class in a ``ring``-pixel band around the thing) per thing region."""
    stuff = torch.tensor(sorted(stuff_ids))
    pairs = []
    for thing in torch.unique(label).tolist():
        if thing not in thing_ids:
            continue
        region = (label == thing).float()[None, None]
        grown = F.max_pool2d(region, 2 * ring + 1, stride=1, padding=ring)[0, 0] > 0
        around = label[grown & (label != thing)]
        around = around[torch.isin(around, stuff)]
        if around.numel():
            pairs.append((int(thing), int(torch.mode(around).values)))
    return pairs


def dataset_pairs(dataset, kind: str, max_images: int | None = None, ring: int = 4) -> np.ndarray:
    """The pairs of ``kind`` over (the first ``max_images`` of) a dataset's label maps."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    spec = getattr(dataset, "spec", None)
    spec = spec if isinstance(spec, WorldSpec) else None  # real datasets carry a ClassSpec: no stuff split
    if kind == "surroundings" and spec is None:
        raise ValueError(f"{type(dataset).__name__} has no thing/stuff split: 'surroundings' needs the world")
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    # co-occurring *things* where the dataset says which classes are things (the world); all classes
    # otherwise (VOC and COCO128 label only things: their background is ignored)
    classes = set(spec.thing_ids) if spec is not None else set(range(len(dataset.classes)))
    pairs: list[tuple[int, int]] = []
    for index in range(count):
        label = dataset[index]["label"]
        if kind == "cooccurrence":
            pairs += cooccurrence_pairs(label, classes, dataset.ignore_index)
        else:
            pairs += surroundings_pairs(label, set(spec.thing_ids), spec.stuff_ids, ring)
    return np.asarray(pairs, np.int64).reshape(-1, 2)


def context_information(pairs: np.ndarray, shuffles: int = 20, seed: int = 0) -> dict:
    """I(A; B) of the pairs, its shuffled baseline (mean and std over ``shuffles``), and the excess."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    measured = mutual_information_bits(pairs)
    baseline = []
    for _ in range(shuffles):
        shuffled = pairs.copy()
        shuffled[:, 1] = rng.permutation(shuffled[:, 1])
        baseline.append(mutual_information_bits(shuffled))
    return {"pairs": int(len(pairs)), "bits": round(measured, 4),
            "shuffled_bits": round(float(np.mean(baseline)), 4) if baseline else None,
            "shuffled_std": round(float(np.std(baseline)), 4) if baseline else None,
            "excess_bits": round(measured - float(np.mean(baseline)), 4) if baseline else None}


def dataset_context(dataset, kind: str, max_images: int | None = None, shuffles: int = 20) -> dict:
    """:func:`context_information` of a dataset's pairs of ``kind``, with what was measured named."""
    result = context_information(dataset_pairs(dataset, kind, max_images), shuffles=shuffles)
    count = len(dataset) if max_images is None else min(len(dataset), max_images)
    return {"dataset": getattr(dataset, "name", type(dataset).__name__), "split": getattr(dataset, "split", None),
            "images": count, "kind": kind, **result}
