"""The authors' training augmentation (maft.data.augment): image, label and proposals stay aligned.

The test images encode their label in their colours (class k has colour PALETTE[k], ignore has its
own colour), so after any resize, crop and flip every pixel well inside a region must still show the
colour of the label the augmented label map gives it.
"""
import pytest
import torch
import torch.nn.functional as F

from maft.data.augment import (
    AUTHORS_AUGMENTATION,
    AugmentedDataset,
    TrainAugmentation,
    augmentation_settings,
    stream_generator,
)
from maft.data.datasets import build_dataset
from maft.proposals import Proposals

IGNORE = 255
PALETTE = torch.tensor([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                        [145, 30, 180], [70, 240, 240], [240, 50, 230]], dtype=torch.uint8)
IGNORE_COLOUR = torch.tensor([10, 10, 10], dtype=torch.uint8)


def colour_image(label: torch.Tensor) -> torch.Tensor:
    """uint8 [3, H, W] whose pixel colour is the palette colour of its label (ignore: IGNORE_COLOUR)."""
    colours = torch.where((label == IGNORE)[..., None], IGNORE_COLOUR, PALETTE[label.clamp(max=len(PALETTE) - 1)])
    return colours.permute(2, 0, 1).contiguous()


def block_label(height=300, width=420, block=60) -> torch.Tensor:
    """Blocks of classes 0..7 and ignore, so regions have interiors at any scale the authors draw."""
    rows = torch.arange(height)[:, None] // block
    cols = torch.arange(width)[None, :] // block
    label = (rows * 3 + cols) % 9
    return torch.where(label == 8, torch.tensor(IGNORE), label).long()


def interior(label: torch.Tensor, radius: int = 2) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood holds one label value only."""
    x = label[None, None].float()
    size = 2 * radius + 1
    high = F.max_pool2d(x, size, stride=1, padding=radius)
    low = -F.max_pool2d(-x, size, stride=1, padding=radius)
    same = (high == low)[0, 0]
    same[:radius], same[-radius:], same[:, :radius], same[:, -radius:] = False, False, False, False
    return same


def check_aligned(image: torch.Tensor, label: torch.Tensor, padded: torch.Tensor) -> None:
    inside = interior(label) & ~padded
    assert inside.sum() > 1000
    expected = colour_image(label)
    assert torch.equal(image[:, inside], expected[:, inside])


@pytest.mark.parametrize("seed", range(6))
def test_image_and_label_stay_aligned_pixel_for_pixel(seed):
    label = block_label()
    sample = {"image": colour_image(label), "label": label, "id": "blocks"}
    augment = TrainAugmentation(IGNORE, color=False)
    out = augment(sample, stream_generator(seed, 0))
    image, new = out["image"], out["label"]
    assert image.shape == (3, 640, 640) and new.shape == (640, 640) and image.dtype == torch.uint8
    assert new.dtype == torch.int64
    # no new label values: nearest-neighbour labels only ever copy values (ignore included)
    assert set(new.unique().tolist()) <= set(label.unique().tolist())
    # the padding: image 128 and ignore label, exactly where the crop was smaller than 640
    padded = (image == 128).all(dim=0)
    assert ((new == IGNORE) | ~padded).all()
    check_aligned(image, new, padded)
    # ignore pixels stay ignore: inside the ignore regions' colour the label is ignore
    ignore_colour = (image == IGNORE_COLOUR[:, None, None]).all(dim=0) & interior(new)
    assert ignore_colour.any() and (new[ignore_colour] == IGNORE).all()


def test_a_real_voc_label_stays_aligned_through_the_authors_pipeline():
    sample = build_dataset("voc20", "train", mode="train")[0]
    label = sample["label"]
    sample = {**sample, "image": colour_image(label)}
    for position in range(4):
        out = TrainAugmentation(IGNORE, color=False)(sample, stream_generator(0, position))
        padded = (out["image"] == 128).all(dim=0) & (out["label"] == IGNORE)
        check_aligned(out["image"], out["label"], padded)


def test_resize_follows_detectron2_shortest_edge_and_crop_offsets_stay_inside():
    augment = TrainAugmentation(IGNORE)
    assert augment.short_edge == list(range(320, 961, 64)) and augment.max_size == 2560
    assert augment.output_size(375, 500, 320) == (320, 427)        # 500 * 320 / 375 = 426.7 -> 427
    assert augment.output_size(100, 2000, 960) == (128, 2560)      # the long side capped at 2560
    seen_sizes = set()
    for position in range(60):
        params = augment.draw(375, 500, stream_generator(3, position))
        short = min(params.size)
        seen_sizes.add(short)
        assert short in augment.short_edge
        assert params.crop == (min(640, params.size[0]), min(640, params.size[1]))
        assert 0 <= params.top <= params.size[0] - params.crop[0]
        assert 0 <= params.left <= params.size[1] - params.crop[1]
    assert len(seen_sizes) >= 8  # every size of the list is drawn (11 of them), not one fixed size


def test_colour_jitter_changes_the_image_only_and_the_padding_stays_grey():
    label = block_label()
    sample = {"image": colour_image(label), "label": label}
    geometry = TrainAugmentation(IGNORE, color=False)
    colour = TrainAugmentation(IGNORE)
    changed = 0
    for position in range(8):
        plain = geometry(sample, stream_generator(1, position))
        jittered = colour(sample, stream_generator(1, position))
        params = colour.draw(300, 420, stream_generator(1, position))
        assert torch.equal(plain["label"], jittered["label"])
        padded = plain["label"] == IGNORE
        pad_pixels = (plain["image"] == 128).all(dim=0) & padded
        assert (jittered["image"][:, pad_pixels] == 128).all()
        changed += bool(params.color) and not torch.equal(plain["image"], jittered["image"])
    assert changed >= 4


def test_file_proposals_move_with_the_image():
    label = block_label()
    one_hot = torch.stack([(label == k).float() for k in range(8)])
    sample = {"image": colour_image(label), "label": label, "id": "blocks",
              "proposals": Proposals(masks=one_hot)}
    out = TrainAugmentation(IGNORE)(sample, stream_generator(5, 2))
    masks = out["proposals"].masks
    assert masks.shape == (8, 640, 640)
    inside = interior(out["label"]) & (out["label"] != IGNORE)
    for k in range(8):
        on = inside & (out["label"] == k)
        off = inside & (out["label"] != k)
        assert (masks[k][on] >= 0.5).all() and (masks[k][off] < 0.5).all()


def test_the_same_stream_position_gives_the_same_augmentation():
    label = block_label()
    dataset = [{"image": colour_image(label), "label": label, "id": "blocks"}]
    augmented = AugmentedDataset(dataset, TrainAugmentation(IGNORE), seed=7)
    first, again, other = augmented[(0, 3)], augmented[(0, 3)], augmented[(0, 4)]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(first["image"], other["image"])
    assert not torch.equal(augmented[(0, 3)]["image"], AugmentedDataset(dataset, TrainAugmentation(IGNORE),
                                                                         seed=8)[(0, 3)]["image"])


@pytest.mark.parametrize("value, message", [
    ({"crop": 0}, "train.augmentation.crop"),
    ({"short_edge": []}, "train.augmentation.short_edge"),
    ({"flip": "yes"}, "train.augmentation.flip"),
    ({"pad_value": 300}, "train.augmentation.pad_value"),
    ({"scale": 2}, "unknown keys"),
    ("authors", "train.augmentation must be"),
])
def test_bad_settings_name_the_key(value, message):
    with pytest.raises(ValueError, match=message):
        augmentation_settings(value)


def test_settings_true_false_and_partial():
    assert augmentation_settings(True) == AUTHORS_AUGMENTATION
    assert augmentation_settings(False) is None and augmentation_settings(None) is None
    partial = augmentation_settings({"crop": 96, "short_edge": 64})
    assert partial["crop"] == 96 and partial["short_edge"] == [64] and partial["flip"] is True
