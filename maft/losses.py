"""MAFT's two training objectives (paper Sec. 4.2): the mask-aware loss and the self-distillation loss.

Mask-aware loss (eq. 5-7). For the K ground-truth classes of an image that are *seen* (trainable), the
soft IoU between each class's binary map and each of the N proposals gives ``S_IoU`` [K, N]; every row
is min-max normalised over the proposals (eq. 5) and compared with the K matching columns of the
classifier's probabilities ``A^c`` (transposed to [K, N]) with SmoothL1, beta = 1 (eq. 6, 7). The IoU
targets carry no gradient: only the probabilities are trained.

Decisions made here (each pinned by tests/test_losses.py):

* Soft IoU = sum(m*t) / (sum(m) + sum(t) - sum(m*t) + eps), eps = 1e-7 (as the authors). The target of
  class k is the binary map ``label == k``, as in the authors' code, so pixels labelled ``ignore_index``
  count as "not class k": a proposal spilling over void pixels loses IoU. This matters: in the VOC
  zero-shot protocol the background itself is ignored, and dropping ignored pixels from the sums would
  give an object-plus-background proposal an IoU near 1, teaching the opposite of mask-awareness.
  ``exclude_ignored=True`` drops them from all three sums instead (neither object nor background).
* A class whose row of IoUs is constant (e.g. a single proposal, or every proposal missing it) has
  max == min in eq. 5; the row is *skipped* (it carries no ranking information) instead of dividing by 0.
* ``kind="kl"`` (the paper's Tab. 4b ablation, whose exact form the paper does not give): for each
  class row, the target ``S^norm`` and the prediction ``A_select`` are each normalised to sum 1 over the
  N proposals, and the loss is KL(target || prediction) = sum_n p_n log(p_n / q_n) (0 log 0 = 0), averaged
  over the K rows. It asks "which proposals are the best for class k" as a distribution over proposals.
* The other kinds (smooth_l1, l1, l2) are element-wise and averaged over the K x N compared entries
  (PyTorch's default ``reduction="mean"``, as the authors).
* When no class qualifies (no seen class in the label, no proposals, or all rows constant) the loss is
  ``0 * probs.sum()``: an exact zero that is still attached to the graph, so ``backward()`` and DDP's
  gradient all-reduce work unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .masks import resize_masks

LOSS_KINDS = ("smooth_l1", "l1", "l2", "kl")
IOU_EPS = 1e-7


def _check_kind(kind: str) -> None:
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")


def soft_iou(masks: torch.Tensor, targets: torch.Tensor, eps: float = IOU_EPS,
             valid: torch.Tensor | None = None) -> torch.Tensor:
    """``[K, N]`` soft IoU of N soft masks ``[N, H, W]`` (values in [0, 1]) with K binary maps ``[K, H, W]``.

    ``valid`` (bool ``[H, W]``, optional): only these pixels count; the others are dropped from the
    intersection and from both areas. Masks and targets must share H x W (see :func:`maft.masks.resize_masks`).
    """
    if masks.ndim != 3 or targets.ndim != 3:
        raise ValueError(f"soft_iou: masks must be [N,H,W] and targets [K,H,W], got {tuple(masks.shape)} "
                         f"and {tuple(targets.shape)}")
    if masks.shape[1:] != targets.shape[1:]:
        raise ValueError(f"soft_iou: masks are {tuple(masks.shape[1:])} but targets are "
                         f"{tuple(targets.shape[1:])}; resize the proposals to the ground truth first (maft.masks.resize_masks)")
    m = masks.float().flatten(1)
    t = targets.float().flatten(1)
    if valid is not None:
        keep = valid.reshape(1, -1).float()
        m = m * keep
        t = t * keep
    intersection = t @ m.T  # [K, N]
    union = t.sum(1, keepdim=True) + m.sum(1)[None] - intersection
    return intersection / (union + eps)


def minmax_normalise(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5 per row of ``[K, N]``: ``(S - min) / (max - min)`` over the N proposals.

    Returns ``(normalised [K, N], valid [K] bool)``. A row whose values are all equal (max == min,
    including N <= 1) is not valid: its normalised values are set to 0 and it must be skipped.
    """
    if scores.ndim != 2:
        raise ValueError(f"minmax_normalise expects [K, N], got {tuple(scores.shape)}")
    if scores.shape[1] == 0:
        return scores.clone(), torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    low = scores.min(dim=1, keepdim=True).values
    span = scores.max(dim=1, keepdim=True).values - low
    valid = span[:, 0] > 0
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    normalised = torch.where(valid[:, None], (scores - low) / safe_span, torch.zeros_like(scores))
    return normalised, valid


def _row_distribution(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.sum(dim=1, keepdim=True).clamp_min(eps)


def compare(prediction: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Scalar distance between ``[K, N]`` prediction and target (see the module doc for ``kl``)."""
    _check_kind(kind)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, beta=1.0)
    if kind == "l1":
        return F.l1_loss(prediction, target)
    if kind == "l2":
        return F.mse_loss(prediction, target)
    p = _row_distribution(target)
    q = _row_distribution(prediction).clamp_min(1e-12)
    # xlogy gives 0 for p == 0 (the 0 log 0 = 0 convention), so proposals with target 0 add nothing.
    return (torch.xlogy(p, p) - p * q.log()).sum(dim=1).mean()


def iou_targets(masks: torch.Tensor, label: torch.Tensor, class_ids: Sequence[int] | None = None,
                num_columns: int | None = None, ignore_index: int = 255, exclude_ignored: bool = False):
    """The detached targets of the mask-aware loss for one image.

    Returns ``(columns [K'] long, S_norm [K', N], classes [K'] long)`` for the classes that qualify: present
    in ``label``, eligible (in ``class_ids``, or ``< num_columns`` when ``class_ids`` is None) and with a
    non-constant IoU row. ``columns`` index the probability matrix; ``classes`` are the label values.
    """
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W], got {tuple(label.shape)}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    device = masks.device
    label = label.to(device)
    valid_pixels = label != ignore_index
    present = torch.unique(label[valid_pixels]).tolist()
    if class_ids is None:
        if num_columns is not None:
            bad = [c for c in present if c < 0 or c >= num_columns]
            if bad:
                raise ValueError(f"label holds class ids {bad} but probs has only {num_columns} columns; pass "
                                 "class_ids to map probability columns to label values")
        column_of = {c: c for c in present}
    else:
        column_of = {int(c): j for j, c in enumerate(class_ids)}
    eligible = [c for c in present if c in column_of]
    empty = (torch.zeros(0, dtype=torch.long, device=device),
             masks.new_zeros(0, masks.shape[0]), torch.zeros(0, dtype=torch.long, device=device))
    if not eligible or masks.shape[0] == 0:
        return empty
    with torch.no_grad():
        classes = torch.tensor(eligible, dtype=torch.long, device=device)
        targets = label[None] == classes[:, None, None]
        proposals = resize_masks(masks.detach().float(), label.shape)
        scores = soft_iou(proposals, targets, valid=valid_pixels if exclude_ignored else None)
        normalised, valid_rows = minmax_normalise(scores)
    columns = torch.tensor([column_of[c] for c in eligible], dtype=torch.long, device=device)
    return columns[valid_rows], normalised[valid_rows], classes[valid_rows]


def mask_aware_loss(probs: torch.Tensor, masks: torch.Tensor, label: torch.Tensor,
                    class_ids: Sequence[int] | None = None, kind: str = "smooth_l1", ignore_index: int = 255,
                    return_count: bool = False):
    """L_ma (eq. 5-7) for one image.

    probs: ``[N, C]`` class probabilities of the N proposals (A^c transposed). masks: ``[N, H, W]`` soft
    proposals in [0, 1] (resized bilinearly to the label's size when they differ). label: ``[H, W]``
    class ids, ``ignore_index`` = void. class_ids: the label value of each probability column (e.g. the
    dataset's seen classes when probs covers C_seen); classes not listed never count. None: column c is
    label value c.

    Returns the scalar loss, or ``(loss, K)`` with ``return_count=True`` where K is the number of classes
    that contributed (0 -> the loss is an attached zero).
    """
    _check_kind(kind)
    if probs.ndim != 2 or masks.ndim != 3 or probs.shape[0] != masks.shape[0]:
        raise ValueError(f"mask_aware_loss: probs must be [N, C] and masks [N, H, W] with the same N, got "
                         f"{tuple(probs.shape)} and {tuple(masks.shape)}")
    if class_ids is not None and len(class_ids) != probs.shape[1]:
        raise ValueError(f"mask_aware_loss: class_ids has {len(class_ids)} entries but probs has "
                         f"{probs.shape[1]} columns")
    columns, target, _ = iou_targets(masks, label, class_ids, probs.shape[1], ignore_index)
    loss = mask_aware_loss_from_targets(probs, columns, target, kind)
    return (loss, int(columns.numel())) if return_count else loss


def mask_aware_loss_from_targets(probs: torch.Tensor, columns: torch.Tensor, target: torch.Tensor,
                                 kind: str = "smooth_l1") -> torch.Tensor:
    """L_ma from precomputed :func:`iou_targets` (``columns`` [K], ``target`` [K, N]); K = 0 -> attached 0."""
    _check_kind(kind)
    if columns.numel() == 0:
        return probs.sum() * 0.0
    selected = probs[:, columns.to(probs.device)].T.float()  # A^c_select, [K, N]
    return compare(selected, target.to(selected.device), kind)


def self_distillation_loss(student_probs: torch.Tensor, teacher_probs: torch.Tensor,
                           kind: str = "smooth_l1") -> torch.Tensor:
    """L_dis (eq. 8): distance between IP-CLIP's no-mask probabilities and the frozen teacher's.

    Both ``[B, C]`` (or any equal shape); the teacher is detached. ``kind`` as for the mask-aware loss
    (``kl`` compares the rows as class distributions: KL(teacher || student)).
    """
    if student_probs.shape != teacher_probs.shape:
        raise ValueError(f"self_distillation_loss: student {tuple(student_probs.shape)} and teacher "
                         f"{tuple(teacher_probs.shape)} shapes differ")
    if student_probs.ndim == 0:
        raise ValueError("self_distillation_loss: expected [B, C] probabilities, got a scalar")
    student = student_probs.float().reshape(-1, student_probs.shape[-1])
    teacher = teacher_probs.detach().float().reshape(student.shape)
    return compare(student, teacher, kind)
