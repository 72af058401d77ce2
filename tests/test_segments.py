"""The label-free proposal generator (maft.segments): it reads only the image and recovers regions."""
import numpy as np
import pytest
import torch

from maft.proposals import Proposals, build_proposal_generator
from maft.proposals.quality import best_ious, proposal_quality
from maft.proposals.segments import SegmentProposals, adjacent_pairs, merge_hierarchy


class ImageOnly(dict):
    """A sample whose label may not be read: the generator must never look at it."""

    def __getitem__(self, key):
        if key == "label":
            raise AssertionError("the label-free generator read sample['label']")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key == "label":
            raise AssertionError("the label-free generator read sample['label']")
        return super().get(key, default)


def synthetic_scene(seed=0):
    """A 96x96 image: noisy two-band background, a flat red disc and a blue/dark-blue striped square."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:96, 0:96]
    label = np.where(ys < 50, 0, 1)
    image = np.where((ys < 50)[..., None], [70, 135, 45], [212, 188, 135]).astype(np.float32)
    disc = (ys - 30) ** 2 + (xs - 30) ** 2 <= 12 ** 2
    square = (abs(ys - 65) <= 11) & (abs(xs - 65) <= 11)
    image[disc] = [215, 35, 35]
    stripes = np.sin(xs * 2 * np.pi / 5) < 0
    image[square] = np.where(stripes[square][:, None], [40, 70, 215], [18, 31, 97])
    image += rng.normal(0, 6, image.shape)
    label[disc], label[square] = 2, 3
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return torch.from_numpy(image).permute(2, 0, 1).contiguous(), torch.from_numpy(label)


def test_flat_and_striped_regions_are_recovered_without_the_label():
    image, label = synthetic_scene()
    generator = build_proposal_generator("segments", max_proposals=40, cache=0)
    proposals = generator(ImageOnly(image=image, id="synthetic"))
    assert isinstance(proposals, Proposals)
    assert proposals.kinds is None and proposals.source_class is None and proposals.scores is None
    assert proposals.masks.shape[1:] == (96, 96) and 1 <= len(proposals) <= 40
    assert set(proposals.masks.unique().tolist()) <= {0.0, 1.0}
    found = best_ious(proposals.masks, label)
    assert found[2] > 0.9  # the flat disc
    assert found[3] > 0.9  # the striped square: the blurred strategies see it as one region
    assert found[0] > 0.8 and found[1] > 0.8  # the background bands (holes where the things are)


def test_deterministic_deduplicated_capped_and_cached():
    image, _ = synthetic_scene(1)
    generator = SegmentProposals(max_proposals=25, dedupe_iou=0.8, cache=0)
    first = generator(ImageOnly(image=image)).masks
    assert torch.equal(first, generator(ImageOnly(image=image)).masks)
    assert len(first) <= 25
    on = first.flatten(1) > 0.5
    inter = on.float() @ on.float().T
    iou = inter / (on.sum(1)[:, None] + on.sum(1)[None, :] - inter)
    assert (iou - torch.eye(len(first))).max() < 0.8  # no two kept proposals overlap that much
    cached = SegmentProposals(max_proposals=25, dedupe_iou=0.8, cache=4)
    assert torch.equal(cached(ImageOnly(image=image)).masks, first)
    assert torch.equal(cached(ImageOnly(image=image)).masks, first)  # second call: from the cache
    other = SegmentProposals(max_proposals=5, dedupe_iou=0.8, cache=4)(ImageOnly(image=image)).masks
    assert len(other) == 5 and torch.equal(other, first[:5])  # another setting: computed, not reused


def test_merge_hierarchy_merges_the_closest_neighbours_first():
    segments = np.array([[0, 0, 1, 1, 2, 2]] * 3)
    colours = np.array([0.0, 1.0, 10.0])[segments][..., None]
    members, formed, absorbed, areas = merge_hierarchy(segments, colours)
    assert adjacent_pairs(segments).tolist() == [[0, 1], [1, 2]]
    assert sorted(members[3]) == [0, 1] and formed[3] == pytest.approx(1.0)
    assert sorted(members[4]) == [0, 1, 2] and formed[4] == pytest.approx(9.5)  # mean of {0,1} is 0.5
    assert absorbed[0] == absorbed[1] == pytest.approx(1.0) and absorbed[3] == pytest.approx(9.5)
    assert areas.tolist() == [6, 6, 6, 12, 18]
    # stability: segment 2 (formed at 0, absorbed at 9.5) beats segment 0 (0 .. 1)
    assert absorbed[2] - formed[2] > absorbed[0] - formed[0]


def test_proposal_quality_reports_seen_and_unseen_apart():
    image, label = synthetic_scene()

    class Tiny:
        classes = ["grass", "sand", "red blob", "blue stripes"]
        seen, unseen, ignore_index = [0, 1, 2], [3], 255

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": image, "label": label, "id": "synthetic"}

    result = proposal_quality(SegmentProposals(max_proposals=40, cache=0), Tiny())
    assert result["seen"]["regions"] == 3 and result["unseen"]["regions"] == 1
    assert result["unseen"]["recall@0.5"] == 1.0
    assert result["upper_bound"]["hiou"] > 80
