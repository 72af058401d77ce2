"""Ensemble (paper eq. 9 and the ZSSeg/authors' variant), semantic map O = A^T M, sliding windows, Segmenter."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from maft.inference import (
    NO_PREDICTION,
    Segmenter,
    align_generator_scores,
    classify_proposals,
    classify_proposals_sliding,
    ensemble_scores,
    semantic_map,
    window_starts,
)
from maft.proposals import Proposals

NAN = float("nan")


# ------------------------------------------------------------------------------------------ ensemble
# Powers of two keep the hand computation exact: lam = 0.75, A^p = 2^-4, A^c = 2^-8.
CLIP = torch.tensor([[2.0 ** -8, 2.0 ** -8, 2.0 ** -8],
                     [0.25, 0.5, 0.0625]], dtype=torch.float64)
GEN = torch.tensor([[2.0 ** -4, 1.0, 2.0 ** -4],
                    [0.0625, 0.0625, 1.0]], dtype=torch.float64)
SEEN = torch.tensor([True, True, False])


def test_ensemble_paper_eq9_hand_computed():
    out = ensemble_scores(CLIP, GEN, SEEN, 0.75, variant="paper")
    expected = torch.tensor([
        # seen: A^p^0.75 * A^c^0.25          seen                         unseen: A^c^0.75
        [2.0 ** -3 * 2.0 ** -2,               1.0 * 2.0 ** -2,             2.0 ** -6],
        [2.0 ** -3 * 0.25 ** 0.25,            2.0 ** -3 * 0.5 ** 0.25,     0.0625 ** 0.75],
    ], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    assert out[0, 0].item() == pytest.approx(0.03125)
    assert out[0, 2].item() == pytest.approx(0.015625)  # A^p of unseen classes is never used


def test_ensemble_zsseg_variant_hand_computed():
    out = ensemble_scores(CLIP, GEN, SEEN, 0.75, variant="zsseg")
    # seen classes as in eq. 9; unseen: A^p^(1-lam) * A^c^lam = 2^-1 * 2^-6
    assert out[0, 0].item() == pytest.approx(0.03125)
    assert out[0, 2].item() == pytest.approx(2.0 ** -7)
    assert out[1, 2].item() == pytest.approx(1.0 * 0.0625 ** 0.75)


def test_ensemble_clip_only_and_bad_inputs():
    assert ensemble_scores(CLIP, None, SEEN, 0.7) is CLIP
    assert ensemble_scores(CLIP, GEN, SEEN, None) is CLIP
    with pytest.raises(ValueError, match="lambda"):
        ensemble_scores(CLIP, GEN, SEEN, 0.0)
    with pytest.raises(ValueError, match="lambda"):
        ensemble_scores(CLIP, GEN, SEEN, 1.5)
    with pytest.raises(ValueError, match="variant"):
        ensemble_scores(CLIP, GEN, SEEN, 0.7, variant="mean")
    with pytest.raises(ValueError, match="shape"):
        ensemble_scores(CLIP, GEN[:, :2], SEEN, 0.7)
    # seen given as indices is the same as the bool mask
    torch.testing.assert_close(ensemble_scores(CLIP, GEN, [0, 1], 0.75), ensemble_scores(CLIP, GEN, SEEN, 0.75))


def test_ensemble_gives_empty_proposals_clip_score_one():
    # the authors: map_back_clip_cls = ones, then the CLIP scores of the proposals with a pixel on
    empty = torch.tensor([True, False])
    out = ensemble_scores(CLIP, GEN, SEEN, 0.75, variant="zsseg", empty=empty)
    ones = CLIP.clone()
    ones[0] = 1.0
    torch.testing.assert_close(out, ensemble_scores(ones, GEN, SEEN, 0.75, variant="zsseg"))
    assert out[0, 0].item() == pytest.approx(2.0 ** -3)           # A^p^0.75 * 1
    assert out[0, 2].item() == pytest.approx(2.0 ** -1)           # A^p^0.25 * 1
    torch.testing.assert_close(out[1], ensemble_scores(CLIP, GEN, SEEN, 0.75, variant="zsseg")[1])
    with pytest.raises(ValueError, match="empty must be bool"):
        ensemble_scores(CLIP, GEN, SEEN, 0.75, empty=torch.tensor([True]))


def test_generator_columns_are_mapped_by_name():
    # A generator trained on the seen classes scores only those, in its own order.
    scores = torch.tensor([[0.9, 0.1], [0.3, 0.7]])
    aligned = align_generator_scores(scores, ["sheep", "Cat"], ["cat", "dog", "sheep"])
    assert aligned[:, 0].tolist() == pytest.approx([0.1, 0.7])
    assert aligned[:, 2].tolist() == pytest.approx([0.9, 0.3])
    assert torch.isnan(aligned[:, 1]).all()
    clip = torch.full((2, 3), 1 / 3)
    # paper variant: "dog" is unseen, its missing A^p is not needed
    out = ensemble_scores(clip, aligned, [0, 2], 0.5)
    assert out[0, 0].item() == pytest.approx((0.1 / 3) ** 0.5)
    assert out[0, 1].item() == pytest.approx((1 / 3) ** 0.5)
    # ... but the zsseg variant needs it, and a seen class the generator does not score is an error
    with pytest.raises(ValueError, match="unseen"):
        ensemble_scores(clip, aligned, [0, 2], 0.5, variant="zsseg")
    with pytest.raises(ValueError, match="no score for seen"):
        ensemble_scores(clip, aligned, [0, 1, 2], 0.5)
    with pytest.raises(ValueError, match=r"generator class list has duplicate class names: \['Cat', 'cat'\]"):
        align_generator_scores(scores, ["cat", "Cat"], ["cat"])


# ------------------------------------------------------------------------------------------ semantic map
def test_semantic_map_hand_made_with_overlap_and_uncovered_pixels():
    masks = torch.tensor([
        [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
        [[0.0, 1.0, 1.0], [0.0, 0.5, 0.0]],
    ])
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    # (0,1) is covered by both: O = [0.7 + 0.2, 0.3 + 0.8] -> class 1; (1,1): O = [0.1, 0.4] -> 1;
    # (1,2) is covered by nothing -> no prediction.
    expected = torch.tensor([[0, 1, 1], [0, 1, NO_PREDICTION]])
    out = semantic_map(probs, masks)
    assert out.dtype == torch.int64
    assert torch.equal(out, expected)


def test_semantic_map_without_proposals_and_resize():
    assert torch.equal(semantic_map(torch.zeros(0, 4), torch.zeros(0, 2, 3)),
                       torch.full((2, 3), NO_PREDICTION))
    # masks at half resolution are resized (bilinear) to the requested size
    masks = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    out = semantic_map(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), masks, size=(4, 4))
    assert out.shape == (4, 4)
    assert (out[:, :2] == 0).all() and (out[:, 2:] == 1).all()
    with pytest.raises(ValueError, match="semantic_map"):
        semantic_map(torch.zeros(3, 2), torch.zeros(2, 4, 4))


def test_semantic_map_chunked_equals_dense(monkeypatch):
    import maft.inference as inference

    torch.manual_seed(0)
    probs = torch.rand(5, 7).softmax(-1)
    masks = (torch.rand(5, 9, 11) > 0.6).float()
    dense = (probs.T @ masks.flatten(1)).reshape(7, 9, 11)
    expected = dense.argmax(0)
    expected[dense.max(0).values <= 0] = NO_PREDICTION
    monkeypatch.setattr(inference, "_MAP_CHUNK_ELEMENTS", 7 * 10)  # 10 pixels per chunk
    assert torch.equal(semantic_map(probs, masks), expected)


# ------------------------------------------------------------------------------------------ sliding window
class MeanColourClassifier(nn.Module):
    """A stand-in proposal classifier: embedding = mean input colour under the (resized) proposal."""

    max_proposals = 2  # forces classify_proposals to chunk

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images, masks):
        weights = F.interpolate(masks[0][:, None].float(), size=images.shape[-2:], mode="nearest")[:, 0]
        area = weights.flatten(1).sum(1, keepdim=True).clamp(min=1)
        return [weights.flatten(1) @ images[0].flatten(1).T / area + 1e-3]


def _colour_text():
    return torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def test_window_starts_cover_the_image():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]
    assert window_starts(3, 4, 2) == [0]


def test_sliding_window_weights_windows_by_mask_area():
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 4, 8), dtype=torch.uint8)
    masks = torch.zeros(3, 4, 8)
    masks[0, :, 1:6] = 1  # 12 pixels in the left window, 8 in the right one
    masks[1, :2, 6:] = 1  # right window only
    # masks[2] is empty everywhere
    classifier, text = MeanColourClassifier(), _colour_text()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    out = classify_proposals_sliding(classifier, image, masks, text, 8, mean, std, window=4, stride=4)
    left = classify_proposals(classifier, image[:, :, :4], masks[:1, :, :4], text, 8, mean, std)
    right = classify_proposals(classifier, image[:, :, 4:], masks[:2, :, 4:], text, 8, mean, std)
    torch.testing.assert_close(out[0], (12 * left[0] + 8 * right[0]) / 20)
    torch.testing.assert_close(out[1], right[1])
    torch.testing.assert_close(out[2], torch.full((3,), 1 / 3))
    # one window covering the whole image is the plain computation
    whole = classify_proposals_sliding(classifier, image, masks[:2], text, 8, mean, std, window=8, stride=8)
    torch.testing.assert_close(whole, classify_proposals(classifier, image, masks[:2], text, 8, mean, std))


# ------------------------------------------------------------------------------------------ Segmenter
class FixedGenerator:
    def __init__(self, proposals):
        self.proposals = proposals

    def __call__(self, sample):
        return self.proposals


def test_segmenter_pipeline_with_ensemble():
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 6, 6), dtype=torch.uint8)
    masks = torch.zeros(2, 6, 6)
    masks[0, :, :3] = 1
    masks[1, :, 3:] = 1
    gen_scores = torch.tensor([[0.9, 0.1], [0.2, 0.8]])  # over the generator's classes ["green", "red"]
    generator = FixedGenerator(Proposals(masks=masks, scores=gen_scores, classes=["green", "red"]))
    classes = ["red", "green", "blue"]
    segmenter = Segmenter(MeanColourClassifier(), generator, _colour_text(), image_size=8, seen=[0, 1],
                          ensemble_lambda=0.6, classes=classes)
    result = segmenter({"image": image, "id": "x"})
    clip = classify_proposals(MeanColourClassifier(), image, masks, _colour_text(), 8, *segmenter_normalisation(segmenter))
    torch.testing.assert_close(result.clip_probs, clip)
    aligned = torch.stack([gen_scores[:, 1], gen_scores[:, 0], torch.full((2,), NAN)], dim=1)
    expected = ensemble_scores(clip, aligned, [0, 1], 0.6)
    torch.testing.assert_close(result.probs, expected)
    assert torch.equal(result.label_map, semantic_map(expected, masks))
    # a proposal with no pixel at or above 0.5 is empty: CLIP score 1 in the ensemble
    with_empty = torch.cat([masks, torch.full((1, 6, 6), 0.4)])
    generator = FixedGenerator(Proposals(masks=with_empty, scores=torch.cat([gen_scores, gen_scores[:1]]),
                                         classes=["green", "red"]))
    result = Segmenter(MeanColourClassifier(), generator, _colour_text(), image_size=8, seen=[0, 1],
                       ensemble_lambda=0.6, classes=classes)({"image": image, "id": "x"})
    torch.testing.assert_close(result.probs, ensemble_scores(torch.cat([clip, torch.ones(1, 3)]),
                                                             torch.cat([aligned, aligned[:1]]), [0, 1], 0.6))
    assert result.probs[2, 1].item() == pytest.approx(0.9 ** 0.6)
    # CLIP only: no generator scores needed
    plain = Segmenter(MeanColourClassifier(), FixedGenerator(Proposals(masks=masks)), _colour_text(), 8)
    assert torch.equal(plain({"image": image}).probs, clip)
    with pytest.raises(ValueError, match="no class scores"):
        Segmenter(MeanColourClassifier(), FixedGenerator(Proposals(masks=masks)), _colour_text(), 8,
                  ensemble_lambda=0.7, classes=classes)({"image": image})


def segmenter_normalisation(segmenter):
    return segmenter.mean, segmenter.std


def test_segmenter_no_proposals_gives_no_prediction_everywhere():
    image = torch.zeros(3, 5, 7, dtype=torch.uint8)
    segmenter = Segmenter(MeanColourClassifier(), FixedGenerator(Proposals.empty(5, 7)), _colour_text(), 8)
    result = segmenter({"image": image})
    assert result.probs.shape == (0, 3)
    assert torch.equal(result.label_map, torch.full((5, 7), NO_PREDICTION))


def test_segmenter_resizes_proposals_to_the_image():
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    masks = torch.zeros(1, 4, 4)
    masks[0, :2] = 1  # top half at the generator's resolution
    result = Segmenter(MeanColourClassifier(), FixedGenerator(Proposals(masks=masks)), _colour_text(), 8)(
        {"image": image})
    assert result.masks.shape == (1, 8, 8)
    assert (result.label_map[:3] != NO_PREDICTION).all() and (result.label_map[5:] == NO_PREDICTION).all()
