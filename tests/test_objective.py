"""The objective L = L_ma + lambda * L_dis as one function (maft.losses.maft_objective).

Pinned here: the batch reduction (the authors' one SmoothL1 mean over all (class, proposal) pairs, and
the per-image mean), the softmax of L_ma over the training (seen) classes only, L_dis = 0 exactly when
the student is still the teacher, and that shares of a batch add up to the batch (DDP, micro-batches).
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from maft.ipclip import IPCLIP
from maft.losses import batch_denominators, iou_targets, maft_objective
from maft.text import class_probabilities

torch.manual_seed(0)
D = 8
TEXT = F.normalize(torch.randn(4, D), dim=-1)  # 4 classes; say class 3 is unseen
SEEN = [0, 1, 2]
# image A: 3 proposals, 2 classes present; image B: 5 proposals, 1 class present; image C: no class
LABELS = [torch.tensor([[0, 0], [1, 255]]), torch.tensor([[2, 2], [2, 255]]), torch.full((2, 2), 255)]
MASKS = [torch.tensor([[[1.0, 1], [0, 0]], [[0, 0], [1, 0]], [[1, 0], [1, 1]]]),
         torch.rand(5, 2, 2), torch.rand(2, 2, 2)]
EMBEDDINGS = [torch.randn(len(m), D) for m in MASKS]


def targets_for(class_ids=SEEN):
    return [iou_targets(m, label, class_ids, len(class_ids))[:2] for m, label in zip(MASKS, LABELS)]


def reference_rows(text, class_ids=SEEN):
    """Per image (A^c_select [K, N], S_norm [K, N]) computed step by step: softmax over ``text``'s rows."""
    rows = []
    for embeddings, (columns, target) in zip(EMBEDDINGS, targets_for(class_ids)):
        logits = 100 * F.normalize(embeddings, dim=-1) @ F.normalize(text, dim=-1).T
        probs = logits.softmax(dim=-1)
        rows.append((probs[:, columns].T, target))
    return rows


def test_pairs_reduction_is_one_smooth_l1_mean_over_the_batch():
    rows = reference_rows(TEXT[SEEN])
    # the authors: concatenate every (class, proposal) row of the batch, one SmoothL1 with mean reduction;
    # rows of different images have different N, so the mean is over all compared entries
    total = sum(F.smooth_l1_loss(a, t, reduction="sum") for a, t in rows)
    count = sum(t.numel() for _, t in rows)
    assert count == 2 * 3 + 1 * 5
    terms = maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], distill_weight=0.0)
    assert terms.loss.item() == pytest.approx((total / count).item(), rel=1e-6)
    assert terms.ma_sum.item() == pytest.approx(total.item(), rel=1e-6)
    assert batch_denominators(targets_for()).tolist() == [11.0, 3.0]


def test_image_reduction_is_the_mean_of_per_image_means():
    rows = reference_rows(TEXT[SEEN])
    per_image = [F.smooth_l1_loss(a, t) for a, t in rows if t.numel()]  # image C has no term: not counted
    expected = sum(per_image) / 2
    terms = maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], distill_weight=0.0, reduction="image")
    assert terms.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    pairs = maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], distill_weight=0.0)
    assert abs(pairs.loss.item() - terms.loss.item()) > 1e-4  # the two really differ on this batch
    assert batch_denominators(targets_for(), reduction="image").tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="reduction"):
        maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], distill_weight=0.0, reduction="mean")


def test_softmax_of_the_mask_aware_loss_runs_over_the_seen_classes_only():
    seen_only = maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], distill_weight=0.0)
    rows = reference_rows(TEXT[SEEN])
    expected = sum(F.smooth_l1_loss(a, t, reduction="sum") for a, t in rows) / 11
    assert seen_only.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # over all four classes (the unseen one included in the softmax) the same targets give another loss
    with_unseen = maft_objective(EMBEDDINGS, targets_for([0, 1, 2]), TEXT, distill_weight=0.0)
    rows_all = reference_rows(TEXT)
    wrong = sum(F.smooth_l1_loss(a, t, reduction="sum") for a, t in rows_all) / 11
    assert with_unseen.loss.item() == pytest.approx(wrong.item(), rel=1e-6)
    assert abs(wrong.item() - expected.item()) > 1e-4


def test_self_distillation_is_exactly_zero_at_step_zero(tiny_clip):
    visual = copy.deepcopy(tiny_clip[0].visual)
    teacher = copy.deepcopy(visual).eval()
    student = IPCLIP(visual)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain, frozen = student.encode_image(images), teacher(images)
    text = F.normalize(torch.randn(5, plain.shape[1]), dim=-1)
    targets = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, 1)) for _ in range(2)]
    embeddings = [torch.zeros(1, plain.shape[1]) for _ in range(2)]
    terms = maft_objective(embeddings, targets, text, plain, frozen)
    assert terms.dis_sum.item() == 0.0 and terms.loss.item() == 0.0
    # and not zero once the student has moved
    moved = maft_objective(embeddings, targets, text, plain + 0.1 * torch.randn_like(plain), frozen)
    assert moved.dis_sum.item() > 0


def test_distillation_term_is_one_mean_over_the_batch_entries():
    student, teacher = torch.randn(3, D), torch.randn(3, D)
    text = TEXT[SEEN]
    expected = F.smooth_l1_loss(class_probabilities(student, text), class_probabilities(teacher, text))
    targets = [(torch.zeros(0, dtype=torch.long), torch.zeros(0, 2)) for _ in range(3)]
    embeddings = [torch.zeros(2, D) for _ in range(3)]
    terms = maft_objective(embeddings, targets, text, student, teacher, distill_weight=0.1)
    assert terms.loss.item() == pytest.approx(0.1 * expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="student and teacher"):
        maft_objective(embeddings, targets, text, distill_weight=1.0)


def test_shares_with_global_denominators_add_up_to_the_batch():
    student, teacher = torch.randn(3, D), torch.randn(3, D)
    leaves = [e.clone().requires_grad_(True) for e in EMBEDDINGS]
    whole = maft_objective(leaves, targets_for(), TEXT[SEEN], student, teacher)
    whole.loss.backward()
    expected_grads = [leaf.grad.clone() for leaf in leaves]
    for leaf in leaves:
        leaf.grad = None
    for reduction in ("pairs", "image"):
        denominators = batch_denominators(targets_for(), reduction=reduction)
        full = maft_objective(EMBEDDINGS, targets_for(), TEXT[SEEN], student, teacher, reduction=reduction)
        shares = [maft_objective([EMBEDDINGS[i]], [targets_for()[i]], TEXT[SEEN], student[i:i + 1],
                                 teacher[i:i + 1], reduction=reduction, denominators=denominators)
                  for i in range(3)]
        assert sum(t.loss.item() for t in shares) == pytest.approx(full.loss.item(), rel=1e-6)
    denominators = batch_denominators(targets_for())
    for i in range(3):
        maft_objective([leaves[i]], [targets_for()[i]], TEXT[SEEN], student[i:i + 1], teacher[i:i + 1],
                       denominators=denominators).loss.backward()
    for leaf, expected in zip(leaves, expected_grads):
        torch.testing.assert_close(leaf.grad, expected, rtol=1e-5, atol=1e-8)


def test_constant_rows_keep_adds_their_pairs():
    label = torch.tensor([[0, 0], [1, 2]])  # class 2 is on p3, which no proposal covers
    masks = torch.tensor([[[1.0, 1], [0, 0]], [[0, 0], [1, 0]], [[1, 0], [1, 0]]])
    keep = [iou_targets(masks, label, [0, 1, 2], 3)[:2]]
    skip = [iou_targets(masks, label, [0, 1, 2], 3, constant_rows="skip")[:2]]
    assert batch_denominators(keep).tolist()[0] == 9 and batch_denominators(skip).tolist()[0] == 6
    embeddings = [torch.randn(3, D)]
    kept = maft_objective(embeddings, keep, TEXT[SEEN], distill_weight=0.0)
    probs = class_probabilities(embeddings[0], TEXT[SEEN])
    skipped = maft_objective(embeddings, skip, TEXT[SEEN], distill_weight=0.0)
    # the kept row is SmoothL1 against a zero target: 0.5 * p^2 for the 3 proposals of class 2
    extra = 0.5 * (probs[:, 2] ** 2).sum()
    assert kept.loss.item() == pytest.approx(((skipped.loss * 6 + extra) / 9).item(), rel=1e-6)
