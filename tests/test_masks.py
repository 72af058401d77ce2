"""The one mask threshold (maft.masks): a patch is on where the resized value is >= 0.5, as the authors.

The issue's case: binary rectangles whose edges lie on multiples of 8 px, resized from 224 px onto
ViT-B/16's 14 x 14 patch grid. Bilinear resizing samples every 16 px at offset 7.5, so an edge on an
odd multiple of 8 lands exactly half-way between two samples and gives 0.5 there: ``>`` and ``>=``
then disagree on that patch, and on the proposal's embedding.
"""
import torch
from open_clip.transformer import VisionTransformer

from maft.ipclip import IPCLIP
from maft.masks import MASK_THRESHOLD, binarize_masks, mask_on, resize_masks

SIZE, PATCH, GRID = 224, 16, 14


def aligned_rectangles(count: int, seed: int = 0, step: int = 8) -> torch.Tensor:
    """``count`` binary [SIZE, SIZE] rectangles with edges on multiples of ``step`` px (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    edges = torch.arange(0, SIZE + 1, step)
    masks = torch.zeros(count, SIZE, SIZE)
    for i in range(count):
        top, bottom = edges[torch.randperm(len(edges), generator=generator)[:2]].sort().values.tolist()
        left, right = edges[torch.randperm(len(edges), generator=generator)[:2]].sort().values.tolist()
        masks[i, top:bottom, left:right] = 1
    return masks


def test_threshold_is_at_or_above_one_half():
    assert MASK_THRESHOLD == 0.5
    values = torch.tensor([0.0, 0.4999, 0.5, 0.5001, 1.0])
    assert mask_on(values).tolist() == [False, False, True, True, True]
    assert torch.equal(mask_on(values.bool()), values.bool())


def test_binary_masks_resized_onto_the_patch_grid_hit_exactly_one_half():
    masks = aligned_rectangles(100)
    soft = resize_masks(masks, (GRID, GRID))
    authors = ~(soft < 0.5)          # the authors block attention where the resized mask is < 0.5
    assert torch.equal(binarize_masks(masks, (GRID, GRID)), authors)
    strict = soft > 0.5              # the rule this package used before
    differs = (strict != authors).flatten(1).any(dim=1)
    # 95 of these 100 seeded rectangles have an edge on an odd multiple of 8 px (each edge does with
    # probability 1/2, so about 1 - 1/16 of them); those, and only those, hold an exact 0.5.
    assert int(differs.sum()) == 95
    assert torch.equal(differs, (soft == 0.5).flatten(1).any(dim=1))
    # A rectangle with all edges on multiples of 16 px covers whole patches: both rules agree.
    whole = torch.zeros(1, SIZE, SIZE)
    whole[0, 32:96, 48:160] = 1
    assert torch.equal(resize_masks(whole, (GRID, GRID)) > 0.5, binarize_masks(whole, (GRID, GRID)))


def test_ipclip_embeddings_follow_the_authors_rule_for_those_masks():
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=SIZE, patch_size=PATCH, width=64, layers=3, heads=4, mlp_ratio=2.0,
                               output_dim=32).eval()
    ipclip = IPCLIP(visual, start_layer=1)
    masks = aligned_rectangles(100)
    image = torch.randn(1, 3, SIZE, SIZE)
    soft = resize_masks(masks, (GRID, GRID))
    with torch.no_grad():
        ours = ipclip(image, [masks])[0]
        # bool masks already on the grid pass through unchanged: the two rules fed in directly
        authors = ipclip(image, [~(soft < 0.5)])[0]
        strict = ipclip(image, [soft > 0.5])[0]
    torch.testing.assert_close(ours, authors, rtol=0, atol=0)
    differs = (ours - strict).abs().amax(dim=1) > 1e-6
    assert int(differs.sum()) == 95
