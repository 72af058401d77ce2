"""Segment one image with any list of class names: label map, coloured overlay and legend.

Python::

    from .predict import predict
    result = predict("photo.jpg", ["cat", "sofa", "wall"], config="voc20_cpu",
                     checkpoint="outputs/train/voc20_cpu/final.pt", proposals="sam")
    result.label_map      # int64 [H, W], index into the class names, -1 = no proposal covers the pixel
    maft.viz.figures.overlay(image, result.label_map, result.classes)   # uint8 [H, W, 3], coloured

CLI (its files are written by :func:`maft.viz.prediction.write_outputs`)::

    maft predict photo.jpg --classes "cat,sofa,wall" --config voc20_cpu --checkpoint final.pt \
        --proposals sam --out overlay.png

No detectron2 and no compiled ops: proposals come from :mod:`maft.proposals` (SAM, Mask2Former from
``transformers``, precomputed files, or ground-truth-derived ones given ``--label`` for analysis).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .authors_checkpoints import config_for_checkpoint, is_authors_checkpoint
from .checkpoints import load_checkpoint
from .clip import tower_input_size
from .config import ExperimentConfig, ProposalsConfig, load
from .data.class_specs import check_class_names
from .data.datasets import read_image
from .data.datasets import read_label as read_label_file
from .evaluate import check_label
from .experiment import build_experiment, build_generator
from .inference import NO_PREDICTION, Segmenter


class NoPredictionWarning(UserWarning):
    """:func:`predict` found no usable proposal: no pixel of the image has a prediction."""


@dataclass
class PredictResult:
    label_map: torch.Tensor     # int64 [H, W]: class index, or -1 (NO_PREDICTION) where no proposal covers the pixel
    probs: torch.Tensor         # [N, C] final proposal scores (after the ensemble, if any)
    clip_probs: torch.Tensor    # [N, C] A^c of the proposal classifier
    proposals: object           # maft.proposals.Proposals (masks at image resolution)
    classes: list[str]


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------
def parse_class_names(class_names: str | Sequence[str]) -> list[str]:
    """"a, b ,c" or ["a", "b", "c"] -> ["a", "b", "c"]; ValueError for empty or duplicate names
    (duplicates as :func:`maft.data.class_specs.check_class_names` finds them: case and spacing ignored).

    A string is one line of CSV: double quotes keep a comma inside a name (``'"hot dog, food",dog'`` is
    two names); a quote that is never closed is an error rather than a name with a quote in it."""
    names = _csv_names(class_names) if isinstance(class_names, str) else list(class_names)
    names = [str(name).strip() for name in names]
    if not names or all(not name for name in names):
        raise ValueError("class names: the list is empty (give e.g. --classes \"cat,dog,grass\")")
    if any(not name for name in names):
        raise ValueError(f"class names: empty name in {names} (check for doubled or trailing commas)")
    return check_class_names(names, "class names")


def _csv_names(text: str) -> list[str]:
    if "\n" in text.strip() or "\r" in text.strip():
        raise ValueError("class names: give one line of comma-separated names (--classes-file takes one name per line)")
    if text.count('"') % 2:  # the csv module would silently run an unclosed quote to the end of the line
        raise ValueError(f"class names {text!r}: not valid comma-separated values (a quote is never closed); "
                         'quote a name holding a comma as "hot dog, food"')
    rows = list(csv.reader([text], skipinitialspace=True))  # spaces around a quoted name are allowed
    names = rows[0] if rows else []
    if any('"' in name for name in names):
        raise ValueError(f"class names {text!r}: a double quote inside a name; quote whole names only, "
                         'e.g. "hot dog, food",dog')
    return names


def read_class_names_file(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one per line (``--classes-file``); blank lines and lines starting
    with ``#`` are skipped, commas are part of a name. ValueError naming the file when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--classes-file {str(path)!r} does not exist")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"--classes-file {str(path)!r} is not UTF-8 text ({error})") from None
    names = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not names:
        raise ValueError(f"--classes-file {str(path)!r} holds no class names (one name per line)")
    try:
        return parse_class_names(names)
    except ValueError as error:
        raise ValueError(f"--classes-file {str(path)!r}: {error}") from None


def load_image(image) -> tuple[torch.Tensor, str]:
    """A path, an HxWx3 uint8 array or a uint8 tensor ([3,H,W] or [H,W,3]) -> (uint8 [3,H,W], id)."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(path)!r} does not exist")
        return read_image(path), path.stem  # RGB conversion, clear error when corrupt
    tensor = torch.as_tensor(np.asarray(image)) if not isinstance(image, torch.Tensor) else image.detach().cpu()
    if tensor.dtype != torch.uint8:
        raise ValueError(f"image array must be uint8 RGB, got {tensor.dtype}")
    if tensor.ndim == 3 and tensor.shape[-1] == 3 and tensor.shape[0] != 3:
        tensor = tensor.permute(2, 0, 1)
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"image must be [H, W, 3] or [3, H, W] RGB, got shape {tuple(tensor.shape)}")
    return tensor.contiguous(), "image"


def read_label(label, size: tuple[int, int], num_classes: int) -> torch.Tensor:
    """A label map (PNG path, array or tensor) of class indices into the class names (255 = ignore)."""
    where = "label"
    if isinstance(label, (str, Path)):
        path = Path(label)
        where = f"label {str(path)!r}"
        if not path.is_file():
            raise FileNotFoundError(f"label {str(path)!r} does not exist")
        label = read_label_file(path)
    tensor = torch.as_tensor(np.asarray(label) if not isinstance(label, torch.Tensor) else label).long()
    if tensor.ndim != 2:
        raise ValueError(f"{where} must be a single-channel [H, W] map of class indices, got shape {tuple(tensor.shape)}")
    if tuple(tensor.shape) != tuple(size):
        raise ValueError(f"{where} is {tuple(tensor.shape)} but the image is {tuple(size)}")
    check_label(tensor, num_classes, where=where)
    return tensor


def predict_config(config=None, checkpoint=None, overrides=()) -> ExperimentConfig:
    """The config :func:`predict` runs: ``config`` (dict, YAML path or shipped name) with ``overrides``.

    Without a config but with a checkpoint, the checkpoint's own ``seed`` (which rebuilds a random base
    tower), ``model`` (name, weights, image size, start layer) and ``text`` templates, so the
    fine-tuned weights run on the model they were trained with; without either, the package defaults.
    """
    if config is None and checkpoint is not None and not is_authors_checkpoint(checkpoint):
        saved = load_checkpoint(checkpoint, mmap=True)["config"]  # the config only: no tensor is read
        config = {key: copy.deepcopy(saved[key]) for key in ("seed", "model", "text") if key in saved}
    return load(config, overrides)


def build_predict_generator(config: ExperimentConfig, proposals) -> Callable:
    """A generator from ``proposals``: a kind ("sam", "gt", "mask2former", "file:DIR"; settings from the
    config when its kind matches) or a ready callable."""
    if callable(proposals):
        return proposals
    if not isinstance(proposals, str):
        raise ValueError(f"proposals must be a kind (sam, gt, mask2former, file:DIR) or a generator, got {proposals!r}")
    config = load(config)  # a fresh, checked copy: the caller's config is left as it is
    if config.proposals.kind != proposals:
        config.proposals = ProposalsConfig(kind=proposals)
    # one photo: no proposal cache (it is keyed by dataset image ids) unless the config asks for one
    config.proposals.settings = {"cache": False, **config.proposals.settings}
    return build_generator(config)


# --------------------------------------------------------------------------------------------------
# The single-image API
# --------------------------------------------------------------------------------------------------
def predict(image, class_names: str | Sequence[str], config=None, model=None, checkpoint=None,
            proposals="sam", label=None, classifier=None, text: torch.Tensor | None = None,
            ensemble_lambda: float | None | str = "config", device: str = "cpu") -> PredictResult:
    """Segment ``image`` into ``class_names``.

    Args:
        image: a file path, an HxWx3 uint8 array, or a uint8 tensor ([3,H,W] or [H,W,3]).
        class_names: list of names or one comma-separated string; any vocabulary.
        config: experiment config (dict, YAML path or shipped name); model, image size, text templates,
            ensemble and proposal settings come from it. None = the checkpoint's model, image size,
            start layer and templates when a checkpoint is given (:func:`predict_config`), else the
            package defaults (ViT-B/16 OpenAI at 480).
        model: an already loaded ``(clip_model, preprocess, tokenizer)`` to reuse (else built from config).
        checkpoint: a fine-tuned IP-CLIP checkpoint (``maft train``); None = IP-CLIP with CLIP's weights
            (or frozen CLIP when ``eval.classifier`` is ``frozen``).
        proposals: "sam" | "gt" | "mask2former" | "file:DIR" | a generator callable.
        label: class-index map for ``proposals="gt"`` (path/array/tensor; indices into ``class_names``).
        classifier, text: ready proposal classifier / text classifier [C, D] to reuse.
        ensemble_lambda: "config" (use ``eval.ensemble_lambda``), None (CLIP only) or a number; the
            ensemble needs a generator with class scores and treats the classes it scores as seen.
    """
    names = parse_class_names(class_names)
    pixels, image_id = load_image(image)
    # An authors' file brings its own CLIP; a maft checkpoint its model settings when no config is given.
    config = config_for_checkpoint(predict_config(config, checkpoint if isinstance(checkpoint, (str, Path, dict))
                                                  else None), checkpoint)
    settings = config.eval
    sample = {"image": pixels, "id": image_id}
    if label is not None:
        sample["label"] = read_label(label, tuple(pixels.shape[-2:]), len(names))
    elif proposals == "gt":
        raise ValueError("proposals='gt' derives proposals from a ground-truth label: pass label=... (--label PATH)")

    generator = build_predict_generator(config, proposals)
    if classifier is None or text is None:
        experiment = build_experiment(config, device=device, split=None, text_classes=names, model=model,
                                      generator=generator)
        text = experiment.text if text is None else text
        classifier = experiment.classifier(checkpoint) if classifier is None else classifier
    if text.shape[0] != len(names):
        raise ValueError(f"text classifier has {text.shape[0]} rows for {len(names)} class names")
    lam = settings.ensemble_lambda if ensemble_lambda == "config" else ensemble_lambda
    image_size = config.model.image_size or tower_input_size(classifier.visual)  # null: the tower's own size
    segmenter = Segmenter(classifier.eval(), generator, text, image_size, seen=None,
                          ensemble_lambda=lam, variant=settings.variant, classes=names,
                          sliding_window=settings.sliding_window, window=settings.window, stride=settings.stride)
    result = segmenter(sample)
    if not bool((result.label_map != NO_PREDICTION).any()):
        n = int(result.probs.shape[0])
        warnings.warn(f"no prediction anywhere in image {image_id!r}: "
                      + ("the proposal generator gave no proposals" if n == 0 else
                         f"none of its {n} proposals has a pixel on (mask value >= 0.5)")
                      + "; every pixel is 'no prediction' in the outputs", NoPredictionWarning, stacklevel=2)
    proposals_out = result.proposals
    if dataclasses.is_dataclass(proposals_out) and proposals_out.masks.shape != result.masks.shape:
        proposals_out = dataclasses.replace(proposals_out, masks=result.masks)  # at image resolution
    return PredictResult(result.label_map, result.probs, result.clip_probs, proposals_out, names)
