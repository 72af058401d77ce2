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
* Eq. 5 is computed as the authors do, ``(S - min) / (max - min + 1e-8)``. A class whose row of IoUs
  is constant (a single proposal, or every proposal missing the class) then gets the all-zero target
  and is *kept* (``constant_rows="keep"``, the authors' code: it pushes that class's probability down
  on every proposal). ``constant_rows="skip"`` drops such rows instead (they carry no ranking).
* ``kind="kl"`` (the paper's Tab. 4b ablation, whose exact form the paper does not give): for each
  class row, the target ``S^norm`` and the prediction ``A_select`` are each normalised to sum 1 over the
  N proposals, and the loss is KL(target || prediction) = sum_n p_n log(p_n / q_n) (0 log 0 = 0), averaged
  over the K rows. It asks "which proposals are the best for class k" as a distribution over proposals.
* The other kinds (smooth_l1, l1, l2) are element-wise and averaged over the K x N compared entries
  (PyTorch's default ``reduction="mean"``, as the authors).
* When no class qualifies (no seen class in the label, no proposals, or all rows skipped) the loss is
  ``0 * probs.sum()``: an exact zero that is still attached to the graph, so ``backward()`` and DDP's
  gradient all-reduce work unchanged.

The objective (paper Sec. 4.2), :func:`maft_objective`: ``L = L_ma + lambda * L_dis`` for a batch, with
the class probabilities of eq. 1 computed from the embeddings against the text classifier of the
*training* classes (C = |C_seen| in the zero-shot protocol, paper Sec. 3). Its batch reduction:

* ``reduction="pairs"`` (default, the authors' code, hence the paper's numbers): L_ma is one mean over
  every compared (class, proposal) pair of the whole batch, i.e. the authors' single SmoothL1 call on
  the concatenated [sum_b K_b, N] rows (``kl``: one mean over every class row of the batch);
* ``reduction="image"``: each image's L_ma is the mean over its own pairs, then the mean over the
  images that have a term.

L_dis is one mean over the [B, C] entries of the batch (the authors' single call; equal to the mean
of per-image means, C being fixed). The denominators can be given for the *global* batch
(:func:`batch_denominators`, summed over ranks), so a call on part of the batch returns exactly its
share of the batch loss: shares add up to the whole, which keeps data-parallel ranks and micro-batches
exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .masks import resize_masks
from .text import class_probabilities

LOSS_KINDS = ("smooth_l1", "l1", "l2", "kl")
LOSS_REDUCTIONS = ("pairs", "image")
CONSTANT_ROWS = ("keep", "skip")
IOU_EPS = 1e-7
MINMAX_EPS = 1e-8  # the authors' eq. 5 denominator: max - min + 1e-8


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
    """Eq. 5 per row of ``[K, N]`` as the authors compute it: ``(S - min) / (max - min + 1e-8)``.

    Returns ``(normalised [K, N], valid [K] bool)``. A row whose values are all equal (max == min,
    including N <= 1) is not valid: its normalised values are 0 (the authors' target for it).
    """
    if scores.ndim != 2:
        raise ValueError(f"minmax_normalise expects [K, N], got {tuple(scores.shape)}")
    if scores.shape[1] == 0:
        return scores.clone(), torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    low = scores.min(dim=1, keepdim=True).values
    span = scores.max(dim=1, keepdim=True).values - low
    valid = span[:, 0] > 0
    # exact zeros for constant rows (the eps would give 0 too, up to rounding of S - min)
    normalised = torch.where(valid[:, None], (scores - low) / (span + MINMAX_EPS), torch.zeros_like(scores))
    return normalised, valid


def _row_distribution(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.sum(dim=1, keepdim=True).clamp_min(eps)


def elementwise(prediction: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """The unreduced distance: ``[K, N]`` per entry (smooth_l1, l1, l2) or ``[K]`` per row (kl)."""
    _check_kind(kind)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(prediction, target, beta=1.0, reduction="none")
    if kind == "l1":
        return F.l1_loss(prediction, target, reduction="none")
    if kind == "l2":
        return F.mse_loss(prediction, target, reduction="none")
    p = _row_distribution(target)
    q = _row_distribution(prediction).clamp_min(1e-12)
    # xlogy gives 0 for p == 0 (the 0 log 0 = 0 convention), so proposals with target 0 add nothing.
    return (torch.xlogy(p, p) - p * q.log()).sum(dim=1)


def compare(prediction: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Scalar distance between ``[K, N]`` prediction and target: the mean of :func:`elementwise`."""
    return elementwise(prediction, target, kind).mean()


def iou_targets(masks: torch.Tensor, label: torch.Tensor, class_ids: Sequence[int] | None = None,
                num_columns: int | None = None, ignore_index: int = 255, exclude_ignored: bool = False,
                constant_rows: str = "keep"):
    """The detached targets of the mask-aware loss for one image.

    Returns ``(columns [K'] long, S_norm [K', N], classes [K'] long)`` for the classes that qualify: present
    in ``label`` and eligible (in ``class_ids``, or ``< num_columns`` when ``class_ids`` is None); with
    ``constant_rows="skip"`` also only those whose IoU row is not constant (``"keep"``, the authors',
    keeps them with an all-zero target). ``columns`` index the probability matrix; ``classes`` are the
    label values.
    """
    if constant_rows not in CONSTANT_ROWS:
        raise ValueError(f"constant_rows must be one of {CONSTANT_ROWS}, got {constant_rows!r}")
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
    if constant_rows == "keep":
        return columns, normalised, classes
    return columns[valid_rows], normalised[valid_rows], classes[valid_rows]


def mask_aware_loss(probs: torch.Tensor, masks: torch.Tensor, label: torch.Tensor,
                    class_ids: Sequence[int] | None = None, kind: str = "smooth_l1", ignore_index: int = 255,
                    return_count: bool = False, constant_rows: str = "keep"):
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
    columns, target, _ = iou_targets(masks, label, class_ids, probs.shape[1], ignore_index,
                                     constant_rows=constant_rows)
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


# ----------------------------------------------------------------------------------------------------
# The objective L = L_ma + lambda * L_dis for a batch


def _check_reduction(reduction: str) -> None:
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {reduction!r}")


def compared_entries(target: torch.Tensor, kind: str = "smooth_l1") -> int:
    """How many terms one image's ``target`` [K, N] adds to L_ma: K x N pairs, or K rows for ``kl``."""
    return int(target.shape[0]) if kind == "kl" else int(target.numel())


def batch_denominators(targets: Sequence[tuple[torch.Tensor, torch.Tensor]], kind: str = "smooth_l1",
                       reduction: str = "pairs") -> torch.Tensor:
    """float64 ``[2]``: (the L_ma denominator, the number of images) of these images' targets.

    ``targets``: per image ``(columns [K], S_norm [K, N])`` from :func:`iou_targets`. The L_ma
    denominator is the number of compared entries (``pairs``) or of images with a term (``image``).
    Sum it over data-parallel ranks to get the global batch's denominators for :func:`maft_objective`.
    """
    _check_reduction(reduction)
    entries = [compared_entries(target, kind) for _, target in targets]
    ma = sum(entries) if reduction == "pairs" else sum(n > 0 for n in entries)
    return torch.tensor([float(ma), float(len(targets))], dtype=torch.float64)


@dataclass
class ObjectiveTerms:
    """What :func:`maft_objective` returns for its images.

    ``loss``: their share of ``L = L_ma + lambda * L_dis`` of the batch (attached to the graph);
    ``ma_sum`` / ``dis_sum``: the detached numerators of L_ma and L_dis (divide the batch's sums by the
    denominators to get the batch's L_ma and L_dis).
    """

    loss: torch.Tensor
    ma_sum: torch.Tensor
    dis_sum: torch.Tensor


def maft_objective(proposal_embeddings: Sequence[torch.Tensor],
                   targets: Sequence[tuple[torch.Tensor, torch.Tensor]], text: torch.Tensor,
                   student: torch.Tensor | None = None, teacher: torch.Tensor | None = None, *,
                   kind: str = "smooth_l1", distill_kind: str = "smooth_l1", distill_weight: float = 1.0,
                   reduction: str = "pairs", denominators: torch.Tensor | Sequence[float] | None = None,
                   logit_scale: float = 100.0) -> ObjectiveTerms:
    """MAFT's training objective (paper Sec. 4.2) for a batch of B images, or a part of one.

    proposal_embeddings: B tensors ``[N_b, D]`` (IP-CLIP with masks); targets: B pairs ``(columns [K_b],
    S_norm [K_b, N_b])`` from :func:`iou_targets` (columns index the rows of ``text``); text: the text
    classifier ``[C, D]`` of the *training* classes, over which every softmax of eq. 1 runs (the seen
    classes in the zero-shot protocol). student / teacher: ``[B, D]`` no-mask embeddings of IP-CLIP and
    of the frozen tower for L_dis (eq. 8), or None when ``distill_weight`` is 0.
    kind / distill_kind: eq. 7's SmoothL1 or the Tab. 4b variants; reduction: see the module doc.
    denominators: ``(L_ma denominator, number of images)`` of the whole batch (:func:`batch_denominators`
    summed over ranks); None = these images are the whole batch.
    """
    _check_kind(kind)
    _check_kind(distill_kind)
    _check_reduction(reduction)
    if len(proposal_embeddings) != len(targets):
        raise ValueError(f"maft_objective: {len(proposal_embeddings)} images of embeddings but "
                         f"{len(targets)} of targets")
    if denominators is None:
        denominators = batch_denominators(targets, kind, reduction)
    ma_denominator, num_images = (max(float(d), 1.0) for d in denominators)
    text = text.float()
    ma_sum = text.new_zeros(())
    for embeddings, (columns, target) in zip(proposal_embeddings, targets):
        probs = class_probabilities(embeddings.float(), text, logit_scale=logit_scale)  # [N, C_train]
        if columns.numel() == 0:
            ma_sum = ma_sum + probs.sum() * 0.0  # attached zero: this image has no L_ma term
            continue
        selected = probs[:, columns.to(probs.device)].T  # A^c_select, [K, N]
        terms = elementwise(selected, target.to(selected), kind)
        ma_sum = ma_sum + (terms.sum() if reduction == "pairs" else terms.mean())
    dis_sum = text.new_zeros(())
    if distill_weight > 0:
        if student is None or teacher is None:
            raise ValueError("maft_objective: distill_weight > 0 needs the student and teacher embeddings")
        student_probs = class_probabilities(student.float(), text, logit_scale=logit_scale)
        teacher_probs = class_probabilities(teacher.detach().float(), text, logit_scale=logit_scale)
        dis_sum = self_distillation_loss(student_probs, teacher_probs, kind=distill_kind) * student.shape[0]
    loss = ma_sum / ma_denominator + distill_weight * dis_sum / num_images
    return ObjectiveTerms(loss=loss, ma_sum=ma_sum.detach(), dis_sum=dis_sum.detach())
