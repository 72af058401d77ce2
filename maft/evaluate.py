"""Zero-shot segmentation evaluation: mIoU / hIoU, the upper bound (paper Table 7) and mask-awareness.

:func:`evaluate` runs a proposal generator and a proposal classifier (frozen CLIP, IP-CLIP or a
fine-tuned IP-CLIP) over a dataset split through :class:`maft.inference.Segmenter` and reports:

- the standard protocol (confusion matrix over all pixels, 255 ignored; mIoU, mIoU-seen, mIoU-unseen,
  hIoU, per-class IoU, pixel accuracy) from :mod:`maft.metrics`;
- ``upper_bound`` (Appendix C.1): A^c replaced by S_IoU, the IoU of every proposal with every
  ground-truth class map, and the same metrics of that semantic map: what a perfect classifier could
  reach with these proposals;
- ``mask_awareness``: for every ground-truth region (one class in one image), the Spearman correlation
  between that class's column of A^c over the image's proposals and the proposals' IoU with the region,
  averaged over regions. A mask-aware classifier ranks proposals by quality (correlation near 1); the
  paper's claim is that frozen CLIP does not and MAFT does.

Conventions: IoUs with ground-truth regions use the binary map ``label == k``, so ignored pixels count
as "not class k", as in the mask-aware loss (:mod:`maft.losses`). A pixel that no proposal covers
gets no prediction (:data:`maft.inference.NO_PREDICTION`) and counts as a miss of its ground-truth
class (false negative) without a false positive for any class. All metrics are percentages.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.stats import spearmanr

from .authors_checkpoints import config_for_checkpoint
from .config import ExperimentConfig, load
from .experiment import build_experiment, proposal_section
from .inference import NO_PREDICTION, Segmenter
from .metrics import add_image, confusion_metrics, new_confusion, present_classes
from .proposals.quality import region_ious, upper_bound_map
from .utils.paths import check_output_path, json_ready, resolve_output_path, write_json
from .utils.progress import progress_bar


# --------------------------------------------------------------------------------------------------
# Ground truth checks and IoU with ground-truth regions
# --------------------------------------------------------------------------------------------------
def check_label(label: torch.Tensor, num_classes: int, ignore_index: int = 255, where: str = "label") -> None:
    """ValueError when ``label`` holds ids that do not index the class list (the list omits classes)."""
    valid = label != ignore_index
    bad = torch.unique(label[valid & ((label < 0) | (label >= num_classes))])
    if len(bad):
        raise ValueError(
            f"{where} holds class ids {bad.tolist()} but the class list has only {num_classes} classes "
            f"(ids 0..{num_classes - 1}, {ignore_index} = ignore): the class list omits classes present "
            f"in the ground truth")


# --------------------------------------------------------------------------------------------------
# Mask-awareness diagnostic
# --------------------------------------------------------------------------------------------------
def region_correlations(probs: torch.Tensor, masks: torch.Tensor, label: torch.Tensor,
                        ignore_index: int = 255) -> tuple[list[tuple[int, float]], int]:
    """Spearman correlation per ground-truth region of one image.

    For each class k present in ``label``: rho(probs[:, k], IoU(proposals, region k)) over the N
    proposals. Returns ([(k, rho), ...], number of regions skipped because the IoUs or the scores are
    constant over the proposals, e.g. N < 2: no ranking to compare).
    """
    classes = present_classes(label, ignore_index)
    if len(classes) == 0:
        return [], 0
    if masks.shape[0] < 2:
        return [], len(classes)
    ious = region_ious(masks.float(), label, classes, ignore_index).double().cpu().numpy()
    scores = probs.double().cpu().numpy()
    correlations, skipped = [], 0
    for row, k in enumerate(classes.tolist()):
        iou, score = ious[row], scores[:, k]
        if np.ptp(iou) == 0 or np.ptp(score) == 0:
            skipped += 1
            continue
        correlations.append((k, float(spearmanr(score, iou)[0])))
    return correlations, skipped


def summarize_correlations(correlations: Sequence[tuple[int, float]], skipped: int,
                           seen: Sequence[int] | None = None, unseen: Sequence[int] | None = None) -> dict:
    """mean, std, n_regions, n_skipped (and the same means over seen / unseen regions when given)."""
    values = np.array([rho for _, rho in correlations], dtype=np.float64)
    summary = {
        "mean": float(values.mean()) if len(values) else None,
        "std": float(values.std()) if len(values) else None,
        "n_regions": int(len(values)),
        "n_skipped": int(skipped),
    }
    for split, ids in (("seen", seen), ("unseen", unseen)):
        if ids is None:
            continue
        ids = set(int(i) for i in ids)
        part = np.array([rho for k, rho in correlations if k in ids], dtype=np.float64)
        summary[f"mean_{split}"] = float(part.mean()) if len(part) else None
        summary[f"n_regions_{split}"] = int(len(part))
    return summary


def mask_awareness(probs, masks, labels, ignore_index: int = 255, seen=None, unseen=None) -> dict:
    """Mask-awareness of a classifier: mean Spearman rho between A^c and proposal IoU over GT regions.

    ``probs`` [N, C] (A^c), ``masks`` [N, H, W] and ``labels`` [H, W] for one image, or three equally
    long sequences of those for several images. Returns ``{mean, std, n_regions, n_skipped}`` (plus
    ``mean_seen``/``mean_unseen`` when ``seen``/``unseen`` class ids are given); ``mean`` is None when
    no region could be scored.
    """
    if isinstance(labels, torch.Tensor):
        probs, masks, labels = [probs], [masks], [labels]
    if not len(probs) == len(masks) == len(labels):
        raise ValueError(f"mask_awareness: {len(probs)} probs, {len(masks)} masks, {len(labels)} labels")
    correlations, skipped = [], 0
    for image_probs, image_masks, label in zip(probs, masks, labels):
        if image_probs.shape[0] != image_masks.shape[0]:
            raise ValueError(f"mask_awareness: {image_probs.shape[0]} score rows for {image_masks.shape[0]} masks")
        check_label(label, image_probs.shape[1], ignore_index)
        found, missed = region_correlations(image_probs, image_masks, label, ignore_index)
        correlations += found
        skipped += missed
    return summarize_correlations(correlations, skipped, seen, unseen)


# --------------------------------------------------------------------------------------------------
# Evaluation over a dataset
# --------------------------------------------------------------------------------------------------
def evaluate(classifier, generator, dataset, text: torch.Tensor, image_size: int,
             ensemble_lambda: float | None = None, max_images: int | None = None, progress: bool = True,
             variant: str = "paper", classes: Sequence[str] | None = None, sliding_window: bool = False,
             window: int | None = None, stride: int | None = None, upper_bound: bool = True) -> dict:
    """Zero-shot segmentation metrics of ``classifier`` + ``generator`` on ``dataset``.

    ``text`` [C, D] is the text classifier for ``classes`` (default ``dataset.classes``); label ids must
    index that list. Seen/unseen classes come from ``dataset.seen``/``dataset.unseen``. Returns a dict
    (JSON-ready) with ``miou``, ``miou_seen``, ``miou_unseen``, ``hiou``, ``pixel_acc``,
    ``per_class_iou`` {name: IoU or None}, ``mask_awareness`` (see :func:`mask_awareness`),
    ``upper_bound`` (the same metrics with A^c replaced by S_IoU), ``n_images``, ``n_proposals``,
    ``uncovered_fraction`` (share of evaluated pixels no proposal covered) and ``settings``.
    """
    classes = list(dataset.classes if classes is None else classes)
    num_classes = len(classes)
    if text.ndim != 2 or text.shape[0] != num_classes:
        raise ValueError(f"text classifier has shape {tuple(text.shape)} but there are {num_classes} "
                         f"classes; build it for the evaluated class list")
    seen, unseen = list(dataset.seen), list(dataset.unseen)
    for name, ids in (("seen", seen), ("unseen", unseen)):
        if any(not 0 <= i < num_classes for i in ids):
            raise ValueError(f"dataset.{name} holds class ids outside 0..{num_classes - 1}: {ids}")
    ignore_index = getattr(dataset, "ignore_index", 255)
    segmenter = Segmenter(classifier, generator, text, image_size, seen=seen, ensemble_lambda=ensemble_lambda,
                          variant=variant, classes=classes, sliding_window=sliding_window, window=window,
                          stride=stride)
    if hasattr(classifier, "eval"):
        classifier.eval()

    total = len(dataset) if max_images is None else min(len(dataset), int(max_images))
    confusion = new_confusion(num_classes, ignore_index)
    bound = new_confusion(num_classes, ignore_index)
    correlations, skipped = [], 0
    num_proposals = evaluated_pixels = uncovered_pixels = 0
    for index in progress_bar(range(total), desc=f"eval {getattr(dataset, 'name', '')}".strip(),
                              disable=not progress):
        sample = dataset[index]
        label = sample["label"]
        where = f"label of image {sample.get('id', index)!r} ({sample.get('label_path', 'no path')})"
        check_label(label, num_classes, ignore_index, where)
        result = segmenter(sample)
        add_image(confusion, result.label_map, label)
        if upper_bound:
            add_image(bound, upper_bound_map(result.masks, label, num_classes, ignore_index), label)
        found, missed = region_correlations(result.clip_probs, result.masks, label, ignore_index)
        correlations += found
        skipped += missed
        valid = label != ignore_index
        num_proposals += int(result.masks.shape[0])
        evaluated_pixels += int(valid.sum())
        uncovered_pixels += int(((result.label_map == NO_PREDICTION) & valid).sum())

    metrics = confusion_metrics(confusion, classes, seen, unseen)
    metrics["mask_awareness"] = summarize_correlations(correlations, skipped, seen, unseen)
    metrics["upper_bound"] = confusion_metrics(bound, classes, seen, unseen) if upper_bound else None
    metrics.update(
        n_images=total,
        n_proposals=num_proposals,
        uncovered_fraction=uncovered_pixels / evaluated_pixels if evaluated_pixels else None,
        settings={"image_size": int(image_size), "ensemble_lambda": ensemble_lambda, "variant": variant,
                  "sliding_window": sliding_window, "window": segmenter.window if sliding_window else None,
                  "stride": segmenter.stride if sliding_window else None},
    )
    return json_ready(metrics)


# --------------------------------------------------------------------------------------------------
# Config-driven evaluation and the CLI
# --------------------------------------------------------------------------------------------------
def experiment_name(config: ExperimentConfig) -> str:
    return load(config).name or "experiment"


def metrics_path(config: ExperimentConfig, out: str | Path | None = None) -> Path:
    """Where :func:`evaluate_config` writes: ``out``, else ``eval.out``, else ``outputs/eval/<name>.json``."""
    config = load(config)
    return resolve_output_path(out if out is not None else config.eval.out, experiment_name(config),
                               ("eval", "<name>.json"))


def evaluate_config(config: ExperimentConfig | dict | str, checkpoint: str | Path | None = None, out: str | Path | None = None,
                    overwrite: bool = False, device: str = "cpu", progress: bool = True) -> dict:
    """Build the experiment of ``config`` (:func:`maft.experiment.build_experiment`), evaluate, write JSON.

    The metrics go to ``out`` (default ``eval.out``, default ``outputs/eval/<name>.json``); an existing
    file is never replaced unless ``overwrite``. Returns the written dict (with ``path``).
    """
    config = config_for_checkpoint(load(config), checkpoint)  # an authors' file brings its own CLIP
    settings = config.eval
    path = metrics_path(config, out)
    # fail before the (long) evaluation, not after
    check_output_path(path, "--out" if out is not None else "eval.out")
    if isinstance(checkpoint, (str, Path)) and path.exists() and Path(checkpoint).exists() and path.samefile(checkpoint):
        raise ValueError(f"--out {path} is the checkpoint being evaluated; give another --out (the input is never "
                         "overwritten)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) or choose another eval.out")
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    experiment = build_experiment(config, device=device)  # random towers: seeded as in training
    metrics = evaluate(experiment.classifier(checkpoint), experiment.generator, experiment.dataset,
                       experiment.text, experiment.image_size, ensemble_lambda=settings.ensemble_lambda,
                       max_images=settings.max_images, progress=progress, variant=settings.variant,
                       sliding_window=settings.sliding_window, window=settings.window, stride=settings.stride)
    metrics.update(
        name=experiment_name(config),
        dataset=config.data.dataset,
        split=config.data.eval_split,
        classifier=settings.classifier,
        proposals=proposal_section(config, "eval").kind,
        checkpoint=None if checkpoint is None else str(checkpoint),
        seconds=round(time.perf_counter() - start, 3),
        config=config.to_dict(),
    )
    write_json(metrics, path, overwrite=overwrite, what="eval.out")
    return {**metrics, "path": str(path)}


def format_summary(metrics: dict) -> str:
    def pct(value):
        return "n/a" if value is None else f"{value:.2f}"

    awareness = metrics.get("mask_awareness") or {}
    lines = [f"mIoU {pct(metrics.get('miou'))}  seen {pct(metrics.get('miou_seen'))}  "
             f"unseen {pct(metrics.get('miou_unseen'))}  hIoU {pct(metrics.get('hiou'))}  "
             f"({metrics.get('n_images')} images)"]
    if metrics.get("upper_bound"):
        ub = metrics["upper_bound"]
        lines.append(f"upper bound (S_IoU): mIoU {pct(ub.get('miou'))}  hIoU {pct(ub.get('hiou'))}")
    rho = awareness.get("mean")
    lines.append(f"mask-awareness (Spearman): {'n/a' if rho is None else f'{rho:.3f}'} over "
                 f"{awareness.get('n_regions', 0)} regions ({awareness.get('n_skipped', 0)} skipped)")
    return "\n".join(lines)
