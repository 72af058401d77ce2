"""Mask-aware loss (paper eq. 5-7) and self-distillation loss (eq. 8) on hand-computed cases."""
import math

import pytest
import torch

from maft.losses import compare, iou_targets, mask_aware_loss, minmax_normalise, self_distillation_loss, soft_iou
from maft.masks import resize_masks


def flat(values, shape=(2, 2)):
    return torch.tensor(values, dtype=torch.float32).reshape(-1, *shape)


# A 2x2 image, pixels in row-major order p0 p1 / p2 p3: class 0 on p0 p1, class 1 on p2, p3 void.
LABEL = torch.tensor([[0, 0], [1, 255]])
MASKS = flat([[1, 1, 0, 0],    # exactly class 0
              [0, 0, 1, 0],    # exactly class 1
              [1, 0, 1, 1]])   # half of each, plus the void pixel
# Hand-computed IoUs (the target of class k is label == k, so the void pixel p3 is "not class k"):
#   class 0: [2/2, 0, 1/(3+2-1)] = [1, 0, 1/4]     -> eq. 5 -> [1, 0, 1/4]
#   class 1: [0, 1/1, 1/(3+1-1)] = [0, 1, 1/3]     -> eq. 5 -> [0, 1, 1/3]
PROBS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
# A_select - S_norm: class 0 [-0.1, 0.2, 1/4], class 1 [0.1, -0.2, 1/6]
SQUARES = 0.01 + 0.04 + 1 / 16 + 0.01 + 0.04 + 1 / 36
ABSOLUTES = 0.1 + 0.2 + 1 / 4 + 0.1 + 0.2 + 1 / 6


def test_soft_iou_hand_values():
    targets = flat([[1, 1, 0, 0]]).bool()
    masks = flat([[1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5], [0, 0, 1, 1], [1, 1, 0, 0]])
    iou = soft_iou(masks, targets)
    assert iou.shape == (1, 4)
    # [1/2, 1/(2+2-1), 0, 2/2]
    torch.testing.assert_close(iou, torch.tensor([[0.5, 1 / 3, 0.0, 1.0]]), atol=1e-6, rtol=0)


def test_soft_iou_eps_keeps_empty_pairs_finite():
    iou = soft_iou(flat([[0, 0, 0, 0]]), flat([[0, 0, 0, 0]]).bool())
    assert iou.item() == 0.0


def test_soft_iou_ignore_pixels_are_neither_object_nor_background():
    targets = flat([[1, 1, 0, 0]]).bool()
    mask = flat([[1, 1, 1, 0]])
    assert soft_iou(mask, targets).item() == pytest.approx(2 / 3, abs=1e-6)
    valid = torch.tensor([[True, True], [False, True]])  # p2 void: the mask's spill onto it is not counted
    assert soft_iou(mask, targets, valid=valid).item() == pytest.approx(1.0, abs=1e-6)


def test_soft_iou_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="resize"):
        soft_iou(torch.ones(2, 4, 4), torch.ones(1, 2, 2, dtype=torch.bool))


def test_minmax_normalise_eq5_and_edge_cases():
    scores = torch.tensor([[0.2, 0.6, 0.4],
                           [0.3, 0.3, 0.3],     # all equal: target 0 (the authors' +1e-8), never 0/0
                           [0.0, 0.0, 0.0],     # class covered by no proposal: target 0
                           [-1.0, 1.0, 0.0]])
    normalised, valid = minmax_normalise(scores)
    assert valid.tolist() == [True, False, False, True]
    torch.testing.assert_close(normalised[0], torch.tensor([0.0, 1.0, 0.5]))
    torch.testing.assert_close(normalised[3], torch.tensor([0.0, 1.0, 0.5]))
    assert torch.isfinite(normalised).all() and (normalised[1:3] == 0).all()
    # A single proposal has max == min: nothing to rank.
    single, single_valid = minmax_normalise(torch.tensor([[0.7]]))
    assert not single_valid.item() and single.item() == 0.0
    empty, empty_valid = minmax_normalise(torch.zeros(2, 0))
    assert empty.shape == (2, 0) and not empty_valid.any()


def test_iou_targets_match_hand_values():
    columns, target, classes = iou_targets(MASKS, LABEL)
    assert columns.tolist() == [0, 1] and classes.tolist() == [0, 1]
    torch.testing.assert_close(target, torch.tensor([[1.0, 0.0, 1 / 4], [0.0, 1.0, 1 / 3]]), atol=1e-6, rtol=0)


def test_iou_targets_can_drop_ignored_pixels_from_every_sum():
    # p3 dropped: class 0 [1, 0, 1/(2+2-1)], class 1 [0, 1, 1/(2+1-1)]
    _, target, _ = iou_targets(MASKS, LABEL, exclude_ignored=True)
    torch.testing.assert_close(target, torch.tensor([[1.0, 0.0, 1 / 3], [0.0, 1.0, 0.5]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("kind, expected", [
    ("smooth_l1", 0.5 * SQUARES / 6),   # eq. 7, every |d| < 1
    ("l1", ABSOLUTES / 6),
    ("l2", SQUARES / 6),
    # rows as distributions over proposals, KL(target || prediction), mean over the 2 classes
    ("kl", (0.8 * math.log(0.8 / (0.9 / 1.6)) + 0.2 * math.log(0.2 / (0.5 / 1.6))
            + 0.75 * math.log(0.75 / (0.8 / 1.4)) + 0.25 * math.log(0.25 / (0.5 / 1.4))) / 2),
])
def test_mask_aware_loss_hand_values(kind, expected):
    loss, count = mask_aware_loss(PROBS, MASKS, LABEL, kind=kind, return_count=True)
    assert count == 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_smooth_l1_switches_to_linear_at_beta_one():
    # eq. 7: 0.5 d^2 below |d| = 1, |d| - 0.5 above
    value = compare(torch.tensor([[0.0, 0.0]]), torch.tensor([[0.5, 3.0]]), "smooth_l1")
    assert value.item() == pytest.approx((0.5 * 0.25 + 2.5) / 2)


def test_class_ids_map_columns_and_restrict_eligible_classes():
    # probs over the seen classes only: column 0 is label value 1; class 0 is not eligible.
    loss, count = mask_aware_loss(PROBS[:, 1:], MASKS, LABEL, class_ids=[1], return_count=True)
    assert count == 1
    assert loss.item() == pytest.approx(0.5 * (0.01 + 0.04 + 1 / 36) / 3, abs=1e-7)
    with pytest.raises(ValueError, match="class_ids"):
        mask_aware_loss(PROBS, MASKS, LABEL, class_ids=[1])


def test_label_value_beyond_probs_columns_is_an_error():
    with pytest.raises(ValueError, match="columns"):
        mask_aware_loss(PROBS[:, :1], MASKS, LABEL)


def test_constant_iou_row_is_kept_with_zero_target_by_default_or_skipped():
    label = torch.tensor([[0, 0], [1, 2]])  # class 2 on p3, which no proposal touches -> IoUs all 0
    masks = flat([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 1, 0]])
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.5, 0.5, 0.3]])
    # Class 0's third IoU is 1/(2+2-1), class 1's 1/(1+2-1).
    seen_rows = 0.01 + 0.04 + (0.5 - 1 / 3) ** 2 + 0.01 + 0.04 + 0.0
    # The authors (default): class 2 stays, target (0 - 0) / (0 + 1e-8) = 0, against A^c = [0, 0, 0.3].
    loss, count = mask_aware_loss(probs, masks, label, return_count=True)
    assert count == 3
    assert loss.item() == pytest.approx(0.5 * (seen_rows + 0.09) / 9, abs=1e-6)
    columns, target, _ = iou_targets(masks, label)
    assert columns.tolist() == [0, 1, 2] and target[2].tolist() == [0.0, 0.0, 0.0]
    # The setting: the row carries no ranking and is dropped.
    loss, count = mask_aware_loss(probs, masks, label, return_count=True, constant_rows="skip")
    assert count == 2
    assert loss.item() == pytest.approx(0.5 * seen_rows / 6, abs=1e-6)
    with pytest.raises(ValueError, match="constant_rows"):
        iou_targets(masks, label, constant_rows="drop")


def test_no_qualifying_class_gives_attached_zero():
    probs = PROBS.clone().requires_grad_(True)
    loss, count = mask_aware_loss(probs, MASKS, torch.full((2, 2), 255), return_count=True)
    assert count == 0 and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert (probs.grad == 0).all()
    # No proposals at all is the same situation.
    none = torch.zeros(0, 2, requires_grad=True)
    loss, count = mask_aware_loss(none, torch.zeros(0, 2, 2), LABEL, return_count=True)
    assert count == 0 and loss.item() == 0.0 and loss.requires_grad


def test_gradient_flows_only_through_probabilities():
    probs = PROBS.clone().requires_grad_(True)
    masks = MASKS.clone().requires_grad_(True)
    mask_aware_loss(probs, masks, LABEL).backward()
    assert masks.grad is None
    # d/dA of mean 0.5 d^2 over 6 entries is d / 6
    expected = torch.tensor([[-0.1, 0.1], [0.2, -0.2], [1 / 4, 1 / 6]]) / 6
    torch.testing.assert_close(probs.grad, expected, atol=1e-6, rtol=0)


def test_proposals_at_another_resolution_are_resized_to_the_label():
    big = MASKS.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # 4x4, block-constant
    assert resize_masks(big, (2, 2)).equal(MASKS)
    assert mask_aware_loss(PROBS, big, LABEL).item() == pytest.approx(0.5 * SQUARES / 6, abs=1e-6)


def test_bad_kind_and_shapes_are_errors():
    with pytest.raises(ValueError, match="kind"):
        mask_aware_loss(PROBS, MASKS, LABEL, kind="huber")
    with pytest.raises(ValueError, match="same N"):
        mask_aware_loss(PROBS[:2], MASKS, LABEL)


def test_self_distillation_hand_value_and_detached_teacher():
    student = torch.tensor([[0.7, 0.3]], requires_grad=True)
    teacher = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss = self_distillation_loss(student, teacher)
    assert loss.item() == pytest.approx(0.5 * 0.04, abs=1e-7)  # eq. 8 = eq. 7 averaged over C
    loss.backward()
    assert teacher.grad is None
    torch.testing.assert_close(student.grad, torch.tensor([[0.1, -0.1]]))
    assert self_distillation_loss(student, teacher, kind="l1").item() == pytest.approx(0.2)
    kl = self_distillation_loss(student, teacher, kind="kl").item()
    assert kl == pytest.approx(0.5 * math.log(0.5 / 0.7) + 0.5 * math.log(0.5 / 0.3), abs=1e-6)
    with pytest.raises(ValueError, match="shapes differ"):
        self_distillation_loss(student, teacher[:, :1])
