"""Proposals precomputed by any method (FreeSeg, ZegFormer, SAM...), stored one file per image.

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

Every file is checked when read (:mod:`.validate`) and a malformed one is a one-line ValueError naming
it: ``scores`` must be finite probabilities in [0, 1] (``scores="logits"``, the setting
``proposals.settings.scores: logits``, applies a softmax over the classes instead), RLE sizes and
counts are type- and length-checked before decoding, and a damaged archive is named as such.
"""
from __future__ import annotations

import json
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ..masks import mask_on
from ..utils.progress import progress_bar
from .types import Proposals
from .validate import check_score_kind, checked_rle, checked_scores, json_scores

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

    binary = np.asfortranarray(mask_on(masks).numpy().transpose(1, 2, 0).astype(np.uint8))
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


def load_proposals(path: str | os.PathLike, image_size: tuple[int, int] | None = None,
                   scores: str = "probabilities") -> Proposals:
    """Read one proposals file (.npz or .json, see module doc); check its masks are ``image_size``.
    ``scores``: what the file's scores hold, "probabilities" (checked) or "logits" (softmaxed)."""
    path = Path(path)
    check_score_kind(scores)
    if not path.is_file():
        raise FileNotFoundError(f"load_proposals: {path} does not exist")
    if path.suffix == ".npz":
        proposals = _load_npz(path, scores)
    elif path.suffix == ".json":
        proposals, _ = _load_json(path, scores)
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


def _load_npz(path: Path, score_kind: str = "probabilities") -> Proposals:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):  # np.load reads a plain .npy as one array
            raise ValueError("a single .npy array, not an .npz archive of named arrays")
        with data:
            if "masks" not in data:
                raise ValueError(f"no 'masks' array (found {list(data.keys())})")
            masks = data["masks"]
            scores = data["scores"] if "scores" in data else None
            classes = [str(name) for name in data["classes"]] if "classes" in data else None
            kinds = [str(kind) for kind in data["kinds"]] if "kinds" in data else None
            source = torch.from_numpy(data["source_class"].astype(np.int64)) if "source_class" in data else None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as error:
        # truncated or not a zip (BadZipFile, EOFError), object arrays (ValueError: pickled data), ...
        raise ValueError(f"{path}: not a readable proposals .npz ({type(error).__name__}: {error})") from None
    if scores is not None and (scores.dtype.kind not in "biuf" or scores.ndim != 2):
        raise ValueError(f"{path}: 'scores' must be a [N, C] float array, got {scores.dtype} {scores.shape}")
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
    score_tensor = None if scores is None else checked_scores(torch.from_numpy(scores).float(), path, score_kind)
    try:
        return Proposals(masks=tensor, scores=score_tensor, classes=classes, kinds=kinds, source_class=source)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def _load_json(path: Path, score_kind: str = "probabilities") -> tuple[Proposals, torch.Tensor | None]:
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
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
        rle = checked_rle(rle, path, i)  # pycocotools trusts sizes and counts: checked first
        if isinstance(rle["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(rle, *rle["size"])
        with warnings.catch_warnings():  # pycocotools' own numpy-2 deprecation notice, not ours
            warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
            masks.append(mask_utils.decode(rle))
        scores.append(record.get("scores"))
        score = record.get("score")
        if score is not None and not (isinstance(score, (int, float)) and not isinstance(score, bool)):
            raise ValueError(f"{path}: record {i} 'score' must be a number, got {score!r}")
        confidence.append(score)
    sizes = {mask.shape for mask in masks}
    if len(sizes) > 1:
        raise ValueError(f"{path}: records have different sizes {sorted(sizes)}")
    given = [s is not None for s in scores]
    if any(given) and not all(given):
        raise ValueError(f"{path}: 'scores' must be given for all records or none")
    score_tensor = checked_scores(json_scores(scores, path), path, score_kind) if all(given) else None
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
    JSON with per-record ``score``: the highest scored). ``scores``: "probabilities" (the default;
    checked to be finite and in [0, 1]) or "logits" (a softmax over each proposal's classes is applied).
    """

    def __init__(self, directory: str | os.PathLike, pattern: str = "{id}", max_proposals: int | None = None,
                 scores: str = "probabilities"):
        self.scores = check_score_kind(scores)  # what the files' scores hold (see the module doc)
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
            proposals, confidence = _load_json(path, self.scores)
        else:
            proposals = _load_npz(path, self.scores)
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
    directory = Path(directory)
    for sample in progress_bar(samples, desc=f"proposals -> {directory}"):
        save_proposals(directory / f"{sample['id']}{suffix}", generator(sample))
    return directory
