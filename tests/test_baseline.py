"""Frozen-CLIP baseline: merge operations, batching, empty proposals, bad input."""
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from maft.crop_classifier import MERGE_MODES, FrozenCLIP, mask_boxes
from maft.ipclip import IPCLIP, ProposalEmbeddings
from maft.masks import binarize_masks


def tiny_vit(image_size=32, patch_size=8, layers=2, seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(image_size=image_size, patch_size=patch_size, width=64, layers=layers, heads=4,
                             mlp_ratio=2.0, output_dim=32).eval()


def slow_sub_image(image, mask, merge, size):
    """One sub-image built by hand, one proposal at a time (the reference for the batched code)."""
    height, width = image.shape[1:]
    soft = F.interpolate(mask[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    on = soft[0, 0] >= 0.5
    if not on.any():
        return torch.zeros(3, size, size)
    if merge in ("mask", "mask_and_crop"):
        image = torch.where(on, image, torch.zeros(()))
    if merge in ("crop", "mask_and_crop"):
        ys, xs = on.nonzero(as_tuple=True)
        image = image[:, int(ys.min()):int(ys.max()) + 1, int(xs.min()):int(xs.max()) + 1]
    return F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False, antialias=True)[0]


def random_batch(counts, height=40, width=48, mask_size=(20, 24), seed=1):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(len(counts), 3, height, width, generator=gen)
    masks = []
    for n in counts:
        soft = torch.rand(n, *mask_size, generator=gen)
        # blobs: keep a random rectangle per proposal so crops differ in size and place
        keep = torch.zeros_like(soft)
        for i in range(n):
            top, left = torch.randint(0, mask_size[0] // 2, (2,), generator=gen).tolist()
            keep[i, top:top + 3 + i * 2, left:left + 4 + i * 3] = 1
        masks.append(soft * keep)
    return images, masks


@pytest.mark.parametrize("merge", MERGE_MODES)
def test_equals_per_proposal_loop(merge):
    visual = tiny_vit()
    images, masks = random_batch([2, 0, 3])
    masks[2][1] = 0  # one empty proposal
    frozen = FrozenCLIP(visual, merge=merge, batch_size=2)  # chunks straddle images
    with torch.no_grad():
        result = frozen(images, masks)
        for b, image_masks in enumerate(masks):
            expected = torch.stack([visual(slow_sub_image(images[b], m, merge, 32)[None])[0]
                                    for m in image_masks]) if len(image_masks) else torch.zeros(0, 32)
            assert result[b].shape == (len(image_masks), 32)
            torch.testing.assert_close(result[b], expected, atol=1e-5, rtol=1e-5)
    assert [e.tolist() for e in result.empty] == [[False, False], [], [False, True, False]]


def test_batch_composition_and_independence():
    visual = tiny_vit()
    images, masks = random_batch([2, 0, 3])
    frozen = FrozenCLIP(visual, batch_size=4)
    with torch.no_grad():
        result = frozen(images, masks)
        alone = frozen(images[2:], masks[2:])
    assert isinstance(result, ProposalEmbeddings)
    assert [tuple(e.shape) for e in result] == [(2, 32), (0, 32), (3, 32)]
    torch.testing.assert_close(result[2], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(result[0][0], result[0][1])  # different proposals, different sub-images


def test_no_proposals_at_all():
    frozen = FrozenCLIP(tiny_vit())
    result = frozen(torch.randn(2, 3, 32, 32), [torch.zeros(0, 8, 8), torch.zeros(0, 8, 8)])
    assert [tuple(e.shape) for e in result] == [(0, 32), (0, 32)]
    assert [e.numel() for e in result.empty] == [0, 0]


def test_mask_boxes_hand_made():
    binary = torch.zeros(2, 12, 16, dtype=torch.bool)
    binary[0, 3:8, 10:15] = True
    binary[0, 9, 2] = True  # a stray pixel stretches the box down and left
    # second mask empty -> whole image
    assert mask_boxes(binary).tolist() == [[3, 2, 10, 15], [0, 0, 12, 16]]
    box = torch.zeros(1, 16, 16, dtype=torch.bool)
    box[0, 4:8, 4:12] = True  # 4 x 8 box; margin 0.25 grows 1 row and 2 columns on each side
    assert mask_boxes(box, margin=0.25).tolist() == [[3, 2, 9, 14]]
    assert mask_boxes(box, margin=10.0).tolist() == [[0, 0, 16, 16]]  # clipped to the image


def test_crop_is_exact_box_when_no_resize_is_needed():
    visual = tiny_vit(image_size=8, patch_size=4)
    image = torch.randn(1, 3, 16, 16)
    mask = torch.zeros(1, 16, 16)
    mask[0, 2:10, 5:13] = 1  # an 8 x 8 box: the crop needs no resize at input size 8
    mask[0, 2:6, 5:9] = 0  # a hole: kept by "crop", blanked by "mask_and_crop"
    crop, _ = FrozenCLIP(visual, merge="crop").sub_images(image, [mask])
    assert torch.equal(crop[0], image[0, :, 2:10, 5:13])
    both, _ = FrozenCLIP(visual, merge="mask_and_crop").sub_images(image, [mask])
    expected = image[0, :, 2:10, 5:13].clone()
    expected[:, 0:4, 0:4] = 0
    assert torch.equal(both[0], expected)


def test_mask_mode_keeps_whole_image_and_blanks_outside():
    visual = tiny_vit()
    image = torch.randn(1, 3, 32, 32)
    full, half, empty = torch.ones(32, 32), torch.zeros(32, 32), torch.zeros(32, 32)
    half[:, :16] = 1
    subs, flags = FrozenCLIP(visual, merge="mask").sub_images(image, [torch.stack([full, half, empty])])
    assert torch.equal(subs[0], image[0])
    assert torch.equal(subs[1][:, :, :16], image[0, :, :, :16]) and (subs[1][:, :, 16:] == 0).all()
    assert (subs[2] == 0).all() and flags[0].tolist() == [False, False, True]
    with torch.no_grad():
        result = FrozenCLIP(visual, merge="mask")(image, [torch.stack([full, empty])])
        torch.testing.assert_close(result[0][0], visual(image)[0])
        torch.testing.assert_close(result[0][1], visual(torch.zeros(1, 3, 32, 32))[0])
    assert torch.isfinite(result[0]).all()


def test_threshold_matches_ipclip_rule():
    # 0.5 exactly is on, as in IP-CLIP (and the authors' code, which blocks values below 0.5).
    masks = torch.tensor([[[0.5, 0.51], [0.49, 1.0]]])
    assert binarize_masks(masks, (2, 2)).tolist() == [[[True, True], [False, True]]]


def test_resnet_tower():
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=8).eval()
    images, masks = random_batch([3], height=48, width=48, mask_size=(24, 24))
    with torch.no_grad():
        result = FrozenCLIP(visual, merge="mask_and_crop", batch_size=2)(images, masks)
        expected = torch.stack([visual(slow_sub_image(images[0], m, "mask_and_crop", 64)[None])[0]
                                for m in masks[0]])
    torch.testing.assert_close(result[0], expected, atol=1e-5, rtol=1e-5)


def test_same_interface_as_ipclip():
    visual = tiny_vit()
    images, masks = random_batch([2, 0, 1], height=32, width=32, mask_size=(32, 32))
    with torch.no_grad():
        a, b = IPCLIP(visual)(images, masks), FrozenCLIP(visual)(images, masks)
    assert type(a) is type(b)
    assert [x.shape for x in a] == [x.shape for x in b]
    assert [x.shape for x in a.empty] == [x.shape for x in b.empty]


def test_gradients_flow_unless_caller_disables_them():
    visual = tiny_vit().train()
    images, masks = random_batch([2], height=32, width=32)
    FrozenCLIP(visual)(images, masks)[0].sum().backward()
    assert visual.conv1.weight.grad is not None and visual.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, message", [
    (lambda m: m[:1], "masks has 1 entries"),
    (lambda m: [m[0], m[1][0]], r"masks\[1\] must have shape"),
    (lambda m: [m[0], torch.full((1, 4, 4), float("nan"))], r"masks\[1\] contains non-finite"),
    (lambda m: [m[0], torch.zeros(9, 4, 4)], "more than max_proposals=8"),
])
def test_bad_masks(bad, message):
    frozen = FrozenCLIP(tiny_vit(), max_proposals=8)
    images, masks = random_batch([1, 1], height=32, width=32)
    with pytest.raises(ValueError, match=message):
        frozen(images, bad(masks))


def test_bad_arguments():
    visual = tiny_vit()
    with pytest.raises(ValueError, match="merge must be one of"):
        FrozenCLIP(visual, merge="box")
    with pytest.raises(ValueError, match="batch_size"):
        FrozenCLIP(visual, batch_size=0)
    with pytest.raises(ValueError, match="images must be a tensor"):
        FrozenCLIP(visual)(torch.randn(3, 32, 32), [torch.ones(1, 32, 32)])
    with pytest.raises(ValueError, match=r"images\[0\] contains non-finite values"):
        FrozenCLIP(visual)(torch.full((1, 3, 32, 32), float("inf")), [torch.ones(1, 32, 32)])
    nan = torch.zeros(2, 3, 32, 32)
    nan[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"images\[1\] contains non-finite values"):
        FrozenCLIP(visual)(nan, [torch.ones(1, 32, 32), torch.ones(1, 32, 32)])
    with pytest.raises(ValueError, match=r"images\[1\] contains non-finite values"):
        FrozenCLIP(visual).encode_image(nan)
    with pytest.raises(ValueError, match=r"images has shape \(1, 3, 0, 0\): an image of 0x0 pixels"):
        FrozenCLIP(visual)(torch.zeros(1, 3, 0, 0), [torch.ones(1, 4, 4)])


def test_input_size_resizes_a_copy_of_the_tower():
    from maft.clip import set_image_size

    visual = tiny_vit()
    original = visual.positional_embedding.detach().clone()
    frozen = FrozenCLIP(visual, merge="mask", input_size=48)
    assert frozen.input_size == 48 and frozen.visual is not visual
    assert torch.equal(visual.positional_embedding, original) and tuple(visual.image_size) == (32, 32)
    images, masks = random_batch([2], height=40, width=40, mask_size=(40, 40))
    reference = set_image_size(tiny_vit(), 48)
    with torch.no_grad():
        expected = torch.stack([reference(slow_sub_image(images[0], m, "mask", 48)[None])[0] for m in masks[0]])
        torch.testing.assert_close(frozen(images, masks)[0], expected, atol=1e-5, rtol=1e-5)


def test_crops_at_the_pretraining_size_get_the_original_positional_embedding():
    """A tower loaded at IP-CLIP's size (128) and cropping at its pretraining size (64) uses the
    pretrained 8x8 embedding itself, not 8x8 -> 16x16 -> 8x8 interpolated (which is not the identity)."""
    from maft.clip import load_clip, set_image_size

    torch.manual_seed(0)
    native, _, _ = load_clip("maft-test-vit")  # random weights, built at its own size
    size = native.visual.image_size[0] if isinstance(native.visual.image_size, tuple) else native.visual.image_size
    torch.manual_seed(0)
    large, _, _ = load_clip("maft-test-vit", image_size=2 * size)
    assert torch.equal(native.visual.conv1.weight, large.visual.conv1.weight)  # same random draw
    frozen = FrozenCLIP(large.visual, input_size=size)
    assert torch.equal(frozen.visual.positional_embedding, native.visual.positional_embedding)
    assert tuple(large.visual.image_size) == (2 * size, 2 * size)  # the caller's tower is untouched
    round_trip = set_image_size(set_image_size(copy_of(native.visual), 2 * size), size)
    assert not torch.equal(round_trip.positional_embedding, native.visual.positional_embedding)


def copy_of(module):
    import copy

    return copy.deepcopy(module)
