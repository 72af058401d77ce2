"""Zero-shot semantic segmentation from mask proposals: ensemble (paper eq. 9) and the semantic map.

The pipeline for one image (paper Sec. 3 and Appendix A):

1. a proposal generator gives N soft masks M [N,H,W] (and, for MaskFormer-like generators, class scores
   A^p over the classes it was trained on, i.e. the seen classes);
2. a proposal classifier (IP-CLIP or frozen CLIP) embeds each proposal; softmax over the text classifier
   gives A^c [N,C] (eq. 1);
3. optionally A^c is ensembled with A^p (eq. 9), giving A-hat;
4. O = A-hat^T M [C,H,W], argmax per pixel.

Pixels that no proposal covers (every class scores 0 there) get :data:`NO_PREDICTION` (-1) rather than
class 0, so an uncovered pixel is never silently called the first class. -1 is never a class id, also
not with 847-class vocabularies where 255 is a real class; the evaluation counts such pixels as misses
of their ground-truth class.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .clip import clip_normalisation, preprocess_images
from .data.class_specs import check_class_names, class_key
from .masks import mask_on, resize_masks
from .metrics import NO_PREDICTION
from .text import class_probabilities

ENSEMBLE_VARIANTS = ("paper", "zsseg")
# Pixels x classes handled at once in semantic_map; bounds memory for 847 classes on large images.
_MAP_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------------
# Ensemble (paper eq. 9)
# --------------------------------------------------------------------------------------------------
def seen_mask(seen, num_classes: int) -> torch.Tensor:
    """``seen`` as a bool mask [C]: accepts a bool mask or a list of class indices."""
    seen = torch.as_tensor(seen if not isinstance(seen, torch.Tensor) else seen.cpu())
    if seen.dtype == torch.bool:
        if seen.shape != (num_classes,):
            raise ValueError(f"seen: bool mask of shape {tuple(seen.shape)}, expected ({num_classes},)")
        return seen
    indices = seen.long().flatten()
    if len(indices) and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(f"seen: class indices must lie in 0..{num_classes - 1}, got {indices.tolist()}")
    mask = torch.zeros(num_classes, dtype=torch.bool)
    mask[indices] = True
    return mask


def align_generator_scores(scores: torch.Tensor, generator_classes: Sequence[str],
                           classes: Sequence[str]) -> torch.Tensor:
    """Map a generator's A^p [N, C_p] (over its own class list) onto the evaluation classes [N, C].

    A generator trained on the seen classes scores only those (A^p in R^{N x |C_seen|}, Appendix A), so
    columns are matched by class name; classes the generator does not score are NaN, which
    :func:`ensemble_scores` refuses wherever it would need them.
    """
    if scores.ndim != 2 or scores.shape[1] != len(generator_classes):
        raise ValueError(f"generator scores of shape {tuple(scores.shape)} do not match its "
                         f"{len(generator_classes)} class names")
    position = {class_key(name): j for j, name in
                enumerate(check_class_names(generator_classes, "generator class list"))}
    aligned = scores.new_full((scores.shape[0], len(classes)), float("nan"))
    for c, name in enumerate(classes):
        j = position.get(class_key(name))
        if j is not None:
            aligned[:, c] = scores[:, j]
    return aligned


def ensemble_scores(clip_probs: torch.Tensor, gen_probs: torch.Tensor | None, seen, lam: float | None,
                    variant: str = "paper", empty: torch.Tensor | None = None) -> torch.Tensor:
    """Geometric ensemble of CLIP scores A^c with generator scores A^p (paper Appendix A, eq. 9).

    ``variant="paper"`` (eq. 9 as printed)::

        seen c:   A^p(c)^lam * A^c(c)^(1-lam)
        unseen c: A^c(c)^lam

    ``variant="zsseg"`` (what ZSSeg's and the MAFT authors' code compute; needs A^p for unseen too)::

        seen c:   A^p(c)^lam * A^c(c)^(1-lam)
        unseen c: A^p(c)^(1-lam) * A^c(c)^lam

    ``gen_probs=None`` or ``lam=None`` returns ``clip_probs`` unchanged ("CLIP only", the paper's
    Table 2 setting). ``lam`` must lie in (0, 1]; 0 is refused because the authors' configs use weight 0
    to mean "ensemble off", while the formula would turn every unseen score into 1.
    ``gen_probs`` is [N, C] over the same classes (see :func:`align_generator_scores`; NaN = not scored).
    ``empty`` (bool [N], optional): proposals with no pixel on; as in the authors' code their CLIP scores
    are replaced by 1 before the ensemble, so they are ranked by A^p alone.
    """
    if gen_probs is None or lam is None:
        return clip_probs
    if variant not in ENSEMBLE_VARIANTS:
        raise ValueError(f"ensemble variant {variant!r}: expected one of {ENSEMBLE_VARIANTS}")
    lam = float(lam)
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"ensemble lambda must lie in (0, 1], got {lam} (use None for CLIP only)")
    if gen_probs.shape != clip_probs.shape:
        raise ValueError(f"generator scores {tuple(gen_probs.shape)} and CLIP scores "
                         f"{tuple(clip_probs.shape)} differ in shape; align them with align_generator_scores")
    seen = seen_mask(seen, clip_probs.shape[1]).to(clip_probs.device)
    gen_probs = gen_probs.to(clip_probs)
    scored = gen_probs[~torch.isnan(gen_probs)]
    # a negative score to a fractional power is NaN, and NaN would spread to every pixel's argmax
    if scored.numel() and (not torch.isfinite(scored).all() or scored.min() < 0 or scored.max() > 1):
        raise ValueError(f"generator scores must be probabilities in [0, 1] for the ensemble, got values in "
                         f"[{scored.min().item():.4g}, {scored.max().item():.4g}] (logits? apply a softmax)")
    if empty is not None:
        empty = torch.as_tensor(empty, dtype=torch.bool, device=clip_probs.device)
        if empty.shape != clip_probs.shape[:1]:
            raise ValueError(f"empty must be bool [N={clip_probs.shape[0]}], got shape {tuple(empty.shape)}")
        clip_probs = torch.where(empty[:, None], torch.ones_like(clip_probs), clip_probs)
    _require_scored(gen_probs, seen, "seen")
    seen_part = gen_probs.pow(lam) * clip_probs.pow(1.0 - lam)
    if variant == "paper":
        unseen_part = clip_probs.pow(lam)
    else:
        _require_scored(gen_probs, ~seen, "unseen (the zsseg variant uses A^p there)")
        unseen_part = gen_probs.pow(1.0 - lam) * clip_probs.pow(lam)
    return torch.where(seen[None, :], seen_part, unseen_part)


def _require_scored(gen_probs: torch.Tensor, columns: torch.Tensor, what: str) -> None:
    missing = torch.isnan(gen_probs[:, columns]).any(dim=0)
    if missing.any():
        idx = columns.nonzero().flatten()[missing.cpu()].tolist()
        raise ValueError(f"the proposal generator gives no score for {what} class indices {idx}; "
                         f"the ensemble needs A^p there")


# --------------------------------------------------------------------------------------------------
# Semantic map O = A^T M
# --------------------------------------------------------------------------------------------------
def semantic_map(probs: torch.Tensor, masks: torch.Tensor, size: tuple[int, int] | None = None,
                 no_prediction: int = NO_PREDICTION) -> torch.Tensor:
    """Per-pixel class: argmax_c of O = probs^T M (O[c, p] = sum_n probs[n, c] * masks[n, p]).

    ``probs`` [N, C], ``masks`` [N, H, W] (soft or binary). ``size`` resizes the masks (bilinear) to
    (H', W') first, e.g. proposals made at the generator's resolution onto the image. Pixels where
    every class scores 0 (no proposal covers them, or N = 0) get ``no_prediction``. Returns int64 [H, W].
    """
    if probs.ndim != 2 or masks.ndim != 3 or probs.shape[0] != masks.shape[0]:
        raise ValueError(f"semantic_map: probs [N,C] and masks [N,H,W] expected, got "
                         f"{tuple(probs.shape)} and {tuple(masks.shape)}")
    masks = masks.to(probs.dtype if probs.is_floating_point() else torch.float32)
    if size is not None and tuple(masks.shape[-2:]) != tuple(size):
        masks = resize_masks(masks, size)
    num_proposals, height, width = masks.shape
    if num_proposals == 0:
        return torch.full((height, width), no_prediction, dtype=torch.int64, device=masks.device)
    flat = masks.reshape(num_proposals, -1)
    probs_t = probs.to(flat).t()  # [C, N]
    chunk = max(1, _MAP_CHUNK_ELEMENTS // max(1, probs.shape[1]))
    labels = torch.empty(flat.shape[1], dtype=torch.int64, device=flat.device)
    for start in range(0, flat.shape[1], chunk):
        scores = probs_t @ flat[:, start:start + chunk]  # [C, pixels]
        best, labels[start:start + chunk] = scores.max(dim=0)
        labels[start:start + chunk][best <= 0] = no_prediction
    return labels.reshape(height, width)


def _classifier_device(classifier) -> torch.device:
    try:
        return next(classifier.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def classify_proposals(classifier, image: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
                       image_size: int, mean, std, logit_scale: float = 100.0) -> torch.Tensor:
    """A^c [N, C]: the whole image resized to ``image_size`` for CLIP, masks passed at their resolution."""
    if masks.shape[0] == 0:
        return text.new_zeros((0, text.shape[0]))
    device = _classifier_device(classifier)
    pixels = preprocess_images([image], image_size, mean, std).to(device)
    # Proposals never see each other (IP-CLIP's class queries attend to themselves and the patches), so
    # classifying them in chunks of the classifier's limit gives the same scores as one pass.
    chunk = int(getattr(classifier, "max_proposals", 0) or masks.shape[0])
    probs = []
    for start in range(0, masks.shape[0], chunk):
        embeddings = classifier(pixels, [masks[start:start + chunk].to(device)])
        probs.append(class_probabilities(embeddings[0], text.to(device), logit_scale=logit_scale))
    return torch.cat(probs)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride``, the last one flush with the end."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def classify_proposals_sliding(classifier, image: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
                               image_size: int, mean, std, window: int, stride: int,
                               logit_scale: float = 100.0) -> torch.Tensor:
    """A^c [N, C] from overlapping windows of a large image.

    Each window (``window`` x ``window`` pixels, every ``stride``) is resized to ``image_size`` and its
    proposals (masks cropped to the window) classified; a proposal's scores are the average over the
    windows it appears in, weighted by its mask area inside each window. Proposals with no pixel
    anywhere get uniform scores 1/C (they add nothing to the semantic map).
    """
    if window <= 0 or stride <= 0:
        raise ValueError(f"sliding window: window and stride must be positive, got {window}, {stride}")
    num_proposals, height, width = masks.shape
    num_classes = text.shape[0]
    weighted = torch.zeros(num_proposals, num_classes, dtype=torch.float64)
    area = torch.zeros(num_proposals, dtype=torch.float64)
    for top in window_starts(height, window, stride):
        for left in window_starts(width, window, stride):
            crop = (slice(top, top + window), slice(left, left + window))
            window_masks = masks[:, crop[0], crop[1]]
            window_area = window_masks.flatten(1).sum(1).double().cpu()
            inside = (window_area > 0).nonzero().flatten()
            if len(inside) == 0:
                continue
            probs = classify_proposals(classifier, image[:, crop[0], crop[1]], window_masks[inside], text,
                                       image_size, mean, std, logit_scale)
            weighted[inside] += window_area[inside, None] * probs.double().cpu()
            area[inside] += window_area[inside]
    probs = torch.full_like(weighted, 1.0 / max(num_classes, 1))
    seen_somewhere = area > 0
    probs[seen_somewhere] = weighted[seen_somewhere] / area[seen_somewhere, None]
    return probs.to(text.dtype).to(text.device)


# --------------------------------------------------------------------------------------------------
# Single-image pipeline
# --------------------------------------------------------------------------------------------------
@dataclass
class Segmentation:
    """What :class:`Segmenter` returns for one image."""

    label_map: torch.Tensor      # int64 [H, W], class index or NO_PREDICTION (-1)
    probs: torch.Tensor          # [N, C] final scores (after the ensemble, if any)
    clip_probs: torch.Tensor     # [N, C] A^c of the proposal classifier
    masks: torch.Tensor          # [N, H, W] proposals at image resolution
    proposals: object            # the generator's Proposals as returned


class Segmenter:
    """sample -> proposals -> proposal classifier -> A^c -> (ensemble with A^p) -> semantic map.

    ``classifier`` is an :class:`maft.ipclip.IPCLIP` or :class:`maft.crop_classifier.FrozenCLIP` (same call
    signature); ``generator`` a callable ``sample -> Proposals``; ``text`` the text classifier [C, D]
    for ``classes``. ``seen`` (indices or bool mask) marks the classes eq. 9 treats as seen; ``None``
    means "the classes the generator scores". ``ensemble_lambda=None`` is CLIP only.
    ``sliding_window=True`` classifies large images window by window (see
    :func:`classify_proposals_sliding`; ``window`` defaults to ``image_size``, ``stride`` to 2/3 of it).
    """

    def __init__(self, classifier: Callable, generator: Callable, text: torch.Tensor, image_size: int,
                 seen=None, ensemble_lambda: float | None = None, variant: str = "paper",
                 classes: Sequence[str] | None = None, sliding_window: bool = False,
                 window: int | None = None, stride: int | None = None, logit_scale: float = 100.0,
                 mean=None, std=None):
        if text.ndim != 2:
            raise ValueError(f"text classifier must be [C, D], got shape {tuple(text.shape)}")
        if classes is not None and len(classes) != text.shape[0]:
            raise ValueError(f"{len(classes)} class names but the text classifier has {text.shape[0]} rows")
        if variant not in ENSEMBLE_VARIANTS:
            raise ValueError(f"ensemble variant {variant!r}: expected one of {ENSEMBLE_VARIANTS}")
        self.classifier, self.generator, self.text = classifier, generator, text
        self.image_size = int(image_size)
        self.classes = check_class_names(classes, "classes") if classes is not None else None
        self.seen = None if seen is None else seen_mask(seen, text.shape[0])
        self.ensemble_lambda, self.variant = ensemble_lambda, variant
        self.sliding_window = sliding_window
        self.window = int(window or self.image_size)
        self.stride = int(stride or max(1, self.window * 2 // 3))
        self.logit_scale = logit_scale
        default_mean, default_std = clip_normalisation(classifier)
        self.mean, self.std = tuple(mean or default_mean), tuple(std or default_std)

    @torch.no_grad()
    def __call__(self, sample: dict) -> Segmentation:
        image = sample["image"]
        height, width = image.shape[-2:]
        proposals = self.generator(sample)
        masks = proposals.masks.float()
        if tuple(masks.shape[-2:]) != (height, width):
            masks = resize_masks(masks, (height, width))  # proposals made at the generator's resolution
        clip_probs = self.classify(image, masks)
        # a proposal with no pixel on at image resolution gets CLIP score 1 in the ensemble (the authors)
        empty = ~mask_on(masks).flatten(1).any(dim=1) if self.ensemble_lambda is not None else None
        probs = ensemble_scores(clip_probs, *self._generator_scores(proposals, clip_probs),
                                variant=self.variant, empty=empty)
        label_map = semantic_map(probs, masks.to(probs.device))
        return Segmentation(label_map.cpu(), probs, clip_probs, masks, proposals)

    def classify(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        if self.sliding_window:
            return classify_proposals_sliding(self.classifier, image, masks, self.text, self.image_size,
                                              self.mean, self.std, self.window, self.stride, self.logit_scale)
        return classify_proposals(self.classifier, image, masks, self.text, self.image_size,
                                  self.mean, self.std, self.logit_scale)

    def _generator_scores(self, proposals, clip_probs: torch.Tensor):
        """(A^p aligned to the classes, seen mask, lambda) for ensemble_scores; (None, None, None) if off."""
        if self.ensemble_lambda is None:
            return None, None, None
        scores = getattr(proposals, "scores", None)
        if scores is None:
            raise ValueError("ensemble_lambda is set but the proposal generator gives no class scores A^p "
                             "(use a generator with scores, e.g. mask2former, or ensemble_lambda=None)")
        generator_classes = getattr(proposals, "classes", None)
        if generator_classes is None or self.classes is None:
            raise ValueError("the ensemble maps A^p to the classes by name: the generator's Proposals.classes "
                             "and the Segmenter's classes must both be given")
        aligned = align_generator_scores(scores, generator_classes, self.classes).to(clip_probs)
        seen = self.seen if self.seen is not None else ~torch.isnan(aligned).all(dim=0)
        return aligned, seen, self.ensemble_lambda
