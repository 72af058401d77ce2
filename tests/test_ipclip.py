"""IP-CLIP (maft/ipclip.py) against slow per-proposal references built from open_clip's own block forward.

Towers are tiny random open_clip towers in float64 (tight tolerances), with every parameter perturbed so
that layer norms, biases and layer scales are not at their identity initialisation.
"""
from __future__ import annotations

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer

from maft.ipclip import IPCLIP, ProposalEmbeddings, class_token_attention_mask, default_start_layer
from maft.masks import binarize_masks as resize_masks_to_grid

DEPTH = 6
TOL = dict(rtol=0, atol=1e-10)


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    return module


def tiny_vit(seed: int = 0, **kwargs) -> VisionTransformer:
    torch.manual_seed(seed)
    settings = dict(image_size=32, patch_size=8, width=64, layers=DEPTH, heads=4, mlp_ratio=2.0, output_dim=32)
    settings.update(kwargs)
    return perturb_(VisionTransformer(**settings).double().eval(), seed)


def with_grid(visual: VisionTransformer, grid: tuple[int, int], seed: int = 1) -> VisionTransformer:
    """A copy of the tower taking a different patch grid (random positional embedding of the new length)."""
    resized = copy.deepcopy(visual)
    generator = torch.Generator().manual_seed(seed)
    pos = 0.1 * torch.randn(grid[0] * grid[1] + 1, visual.transformer.width, generator=generator, dtype=torch.float64)
    resized.positional_embedding = torch.nn.Parameter(pos)
    resized.grid_size = grid
    return resized


@pytest.fixture(scope="module")
def vit() -> VisionTransformer:
    return tiny_vit()


def random_soft_masks(count: int, grid: tuple[int, int], seed: int) -> torch.Tensor:
    """Soft masks at grid resolution; proposal 0 is all off (empty), proposal 1 all on when count > 2."""
    generator = torch.Generator().manual_seed(seed)
    masks = torch.rand(count, *grid, generator=generator, dtype=torch.float64)
    if count > 2:
        masks[0] = 0.0
        masks[1] = 1.0
    return masks


def reference_vit(visual: VisionTransformer, image: torch.Tensor, on_grid: torch.Tensor, start_layer: int):
    """Each proposal on its own sequence [cls; patches], paper eq. 2 as a float additive mask (-inf blocked),
    through open_clip's own block forward (nn.MultiheadAttention with attn_mask)."""
    blocks = visual.transformer.resblocks
    with torch.no_grad():
        x = visual._embeds(image[None])
        for block in blocks[:start_layer]:
            x = block(x)
        tokens = x.shape[1]
        outputs = []
        for proposal in on_grid.flatten(1):
            bias = torch.full((tokens, tokens), float("-inf"), dtype=x.dtype)
            bias[0, 0] = 0.0                       # the class query sees itself ...
            bias[0, 1:][proposal] = 0.0            # ... and the patches of its proposal
            bias[1:, 1:] = 0.0                     # patches see patches only
            y = x
            for block in blocks[start_layer:]:
                y = block(y, attn_mask=bias)
            outputs.append(visual.ln_post(y[:, 0]) @ visual.proj)
        width = visual.proj.shape[1]
        return torch.cat(outputs) if outputs else torch.zeros(0, width, dtype=x.dtype)


# ---------------------------------------------------------------------------------------- helpers

def test_default_start_layer_scales_with_depth():
    assert [default_start_layer(d) for d in (6, 12, 24)] == [4, 8, 16]
    assert IPCLIP(tiny_vit()).start_layer == 4


def test_resize_masks_to_grid_bilinear_and_threshold_at_or_above_half():
    # 8x8 -> 4x4 bilinear (align_corners=False) averages each 2x2 block exactly.
    mask = torch.zeros(1, 8, 8)
    mask[0, 0:2, 0:2] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])   # 0.75 -> on
    mask[0, 0:2, 2:4] = torch.tensor([[1.0, 1.0], [0.0, 0.0]])   # 0.5  -> on (>= 0.5, as the authors)
    mask[0, 2:4, 0:2] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])   # 0.25 -> off
    mask[0, 6:8, 6:8] = 1.0                                       # 1.0  -> on
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, 0, 0] = expected[0, 0, 1] = expected[0, 3, 3] = True
    assert torch.equal(resize_masks_to_grid(mask, (4, 4)), expected)
    # 2x2 -> 4x4 upsampling: source coordinates -0.25, 0.25, 0.75, 1.25 (clamped); values 1, .75, .25, 0.
    small = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    expected = torch.zeros(1, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True                                    # 1, .75, .75, .5625 are >= .5
    assert torch.equal(resize_masks_to_grid(small, (4, 4)), expected)
    assert torch.equal(resize_masks_to_grid(small.bool(), (4, 4)), expected)


def test_class_token_attention_mask_is_eq2_identity_then_flat_mask():
    proposals = torch.tensor([[True, False, False, True], [False, False, False, False]])
    expected = torch.tensor([[True, False, True, False, False, True],
                             [False, True, False, False, False, False]])
    assert torch.equal(class_token_attention_mask(proposals), expected)
    # the ResNet pool's queries share one "itself" key
    assert torch.equal(class_token_attention_mask(proposals, shared_self=True),
                       torch.tensor([[True, True, False, False, True], [True, False, False, False, False]]))


@pytest.mark.parametrize("tower", ["vit", "resnet"])
def test_the_forward_pass_attends_through_the_eq2_mask(tower, vit, resnet, monkeypatch):
    """The mask the forward pass uses is the eq. 2 function's: recorded from the call, it is the hand-built
    [I; Flat(M)] of these proposals (padded rows all off), and a forward with that function replaced by
    "attend everywhere" gives other embeddings, so no second mask is built elsewhere."""
    import maft.ipclip as module

    visual = vit if tower == "vit" else resnet
    ipclip = IPCLIP(visual, start_layer=DEPTH - 2 if tower == "vit" else None).eval()
    images = torch.randn(2, 3, *([visual.image_size] * 2 if isinstance(visual.image_size, int)
                                 else visual.image_size))
    grid = ipclip.patch_grid(images)
    first = torch.zeros(2, *grid)
    first[0, :1] = 1.0
    first[1, :, :1] = 1.0
    second = torch.zeros(1, *grid)
    second[0, -1:, -1:] = 1.0
    seen = []
    real = module.class_token_attention_mask
    monkeypatch.setattr(module, "class_token_attention_mask", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    with torch.no_grad():
        out = ipclip(images, [first, second])
    assert len(seen) == 1
    patches = grid[0] * grid[1]
    flat = torch.zeros(2, 2, patches, dtype=torch.bool)
    flat[0, 0, :grid[1]] = True                                     # first row of the grid
    flat[0, 1, ::grid[1]] = True                                    # first column
    flat[1, 0, -1] = True                                           # last patch; row 1 of image 1 is padding
    itself = (torch.eye(2, dtype=torch.bool).expand(2, 2, 2) if tower == "vit"
              else torch.ones(2, 2, 1, dtype=torch.bool))
    assert torch.equal(seen[0].squeeze(1) if seen[0].ndim == 4 else seen[0], torch.cat([itself, flat], dim=-1))
    monkeypatch.setattr(module, "class_token_attention_mask", lambda p, shared_self=False: torch.ones(
        *p.shape[:-1], p.shape[-1] + (1 if shared_self else p.shape[-2]), dtype=torch.bool))
    with torch.no_grad():
        everywhere = ipclip(images, [first, second])
    assert not torch.allclose(everywhere[0], out[0], atol=1e-4)


# ---------------------------------------------------------------------------------------- ViT exactness

@pytest.mark.parametrize("start_layer", [0, 2, None, DEPTH - 1])
@pytest.mark.parametrize("grid", [(4, 4), (6, 6), (4, 6)])
def test_vit_equals_slow_per_proposal_reference(vit, start_layer, grid):
    visual = vit if grid == (4, 4) else with_grid(vit, grid)
    ipclip = IPCLIP(visual, start_layer=start_layer)
    layer = ipclip.start_layer
    assert ipclip.patch_grid(torch.zeros(1, 3, grid[0] * 8, grid[1] * 8)) == grid
    for counts in [(0,), (1,), (3,), (7,), (3, 0, 5)]:
        generator = torch.Generator().manual_seed(sum(counts))
        images = torch.randn(len(counts), 3, grid[0] * 8, grid[1] * 8, generator=generator, dtype=torch.float64)
        masks = [random_soft_masks(n, grid, seed=10 * b + n) for b, n in enumerate(counts)]
        with torch.no_grad():
            result = ipclip(images, masks)
        assert isinstance(result, ProposalEmbeddings) and len(result) == len(counts)
        for b, n in enumerate(counts):
            on_grid = masks[b] >= 0.5
            assert result[b].shape == (n, 32)
            assert torch.equal(result.empty[b], ~on_grid.flatten(1).any(1))
            torch.testing.assert_close(result[b], reference_vit(visual, images[b], on_grid, layer), **TOL)


def test_vit_masks_of_any_size(vit):
    """Binary masks given at 2x the grid (nearest upsampled) land on the same patches as at grid size."""
    ipclip = IPCLIP(vit, start_layer=2)
    images = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    on_grid = torch.rand(5, 4, 4) > 0.5
    big = on_grid.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    with torch.no_grad():
        torch.testing.assert_close(ipclip(images, [big])[0], ipclip(images, [on_grid.double()])[0], **TOL)
        torch.testing.assert_close(ipclip(images, [big])[0], reference_vit(vit, images[0], on_grid, 2), **TOL)
        torch.testing.assert_close(ipclip(images, [big.to(torch.uint8)])[0], ipclip(images, [big])[0], **TOL)


def test_vit_with_layer_scale_final_ln_after_pool_and_sequence_first_layout():
    visual = tiny_vit(seed=3, ls_init_value=0.5, final_ln_after_pool=True)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = [random_soft_masks(4, (4, 4), seed=1), random_soft_masks(2, (4, 4), seed=2)]
    ipclip = IPCLIP(visual, start_layer=3)
    with torch.no_grad():
        result = ipclip(images, masks)
        for b in range(2):
            torch.testing.assert_close(result[b], reference_vit(visual, images[b], masks[b] >= 0.5, 3), **TOL)
        # The same weights run sequence-first ([T, B, D]) by the tower: IP-CLIP follows the layout.
        visual.transformer.batch_first = False
        for block in visual.transformer.resblocks:
            block.attn.batch_first = False
        torch.testing.assert_close(ipclip.encode_image(images), result_plain := visual(images), **TOL)
        relayout = ipclip(images, masks)
    for b in range(2):
        torch.testing.assert_close(relayout[b], result[b], **TOL)
    assert result_plain.shape == (2, 32)


def test_full_mask_in_last_block_equals_plain_tower(vit):
    """With L = depth-1 and a proposal covering every patch, the class query sees exactly what the plain
    tower's class token sees (itself + all patches); patches changing in that block do not feed back."""
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    full = [torch.ones(2, 4, 4), torch.ones(1, 9, 9)]
    with torch.no_grad():
        result = IPCLIP(vit, start_layer=DEPTH - 1)(images, full)
        plain = vit(images)
    torch.testing.assert_close(result[0], plain[0].expand(2, -1), **TOL)
    torch.testing.assert_close(result[1], plain[1:2], **TOL)


def test_start_layer_equal_to_depth_gives_plain_embedding_per_proposal(vit):
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = [random_soft_masks(3, (4, 4), seed=0), random_soft_masks(1, (4, 4), seed=1)]
    with torch.no_grad():
        result = IPCLIP(vit, start_layer=DEPTH)(images, masks)
        plain = vit(images)
    torch.testing.assert_close(result[0], plain[0].expand(3, -1), **TOL)
    torch.testing.assert_close(result[1], plain[1:2], **TOL)


def test_encode_image_equals_open_clip_encode_image():
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=64, layers=2, head_width=16),
        text_cfg=dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)).eval()
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(IPCLIP(model.visual).encode_image(images), model.encode_image(images),
                              rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------- invariances

def test_proposal_outputs_invariant_to_permutation_deletion_and_batch(vit):
    ipclip = IPCLIP(vit)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = random_soft_masks(6, (4, 4), seed=5)
    other = random_soft_masks(9, (4, 4), seed=6)
    order = torch.tensor([4, 0, 5, 2, 1, 3])
    with torch.no_grad():
        full = ipclip(images, [masks, other])
        permuted = ipclip(images, [masks[order], other])
        deleted = ipclip(images, [masks[[1, 3]], other[:0]])
        alone = ipclip(images[:1], [masks])
    torch.testing.assert_close(permuted[0], full[0][order], **TOL)
    torch.testing.assert_close(deleted[0], full[0][[1, 3]], **TOL)
    torch.testing.assert_close(alone[0], full[0], **TOL)
    assert deleted[1].shape == (0, 32)


def test_patch_tokens_do_not_depend_on_proposals(vit):
    """Patch features equal the tower's blocks run on the patch tokens alone from block L on."""
    ipclip = IPCLIP(vit, start_layer=2)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        a = ipclip(images, [random_soft_masks(5, (4, 4), 1), random_soft_masks(1, (4, 4), 2)],
                   return_patch_tokens=True).patch_tokens
        b = ipclip(images, [random_soft_masks(2, (4, 4), 3), torch.zeros(0, 4, 4)],
                   return_patch_tokens=True).patch_tokens
        c = ipclip(images, [torch.zeros(0, 4, 4)] * 2, return_patch_tokens=True).patch_tokens
        x = vit._embeds(images)
        for block in vit.transformer.resblocks[:2]:
            x = block(x)
        x = x[:, 1:]
        for block in vit.transformer.resblocks[2:]:
            x = block(x)
    assert a.shape == (2, 16, 64)
    torch.testing.assert_close(a, x, **TOL)
    torch.testing.assert_close(b, x, **TOL)
    torch.testing.assert_close(c, x, **TOL)


def test_empty_proposal_is_finite_and_reported(vit):
    images = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    masks = torch.zeros(3, 16, 16)
    masks[1, :8, :8] = 1.0
    masks[2, 0, 0] = 1.0        # one pixel of 16x16: vanishes on the 4x4 grid
    result = IPCLIP(vit)(images, [masks])
    assert torch.isfinite(result[0]).all()
    assert result.empty[0].tolist() == [True, False, True]
    torch.testing.assert_close(result[0][0], result[0][2], **TOL)   # both see only themselves


def test_no_proposals_anywhere_returns_empty_tensors(vit):
    result = IPCLIP(vit)(torch.randn(2, 3, 32, 32, dtype=torch.float64), [torch.zeros(0, 5, 5)] * 2)
    assert [tuple(r.shape) for r in result] == [(0, 32), (0, 32)]
    assert result[0].dtype == torch.float64 and [e.numel() for e in result.empty] == [0, 0]


def test_gradients_reach_trainable_and_not_frozen_parameters():
    visual = tiny_vit(seed=4)
    for name, param in visual.named_parameters():
        param.requires_grad = not (name.startswith(("conv1", "proj", "positional")) or ".mlp." in name)
    ipclip = IPCLIP(visual, start_layer=3)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    result = ipclip(images, [random_soft_masks(3, (4, 4), 0), random_soft_masks(2, (4, 4), 1)])
    torch.cat(list(result)).square().sum().backward()
    for name, param in visual.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_gradient_checkpointing_gives_same_outputs_and_grads():
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    masks = [random_soft_masks(3, (4, 4), 0), random_soft_masks(2, (4, 4), 1)]
    grads = []
    outputs = []
    for checkpointing in (False, True):
        visual = tiny_vit(seed=5)
        visual.set_grad_checkpointing(checkpointing)
        result = IPCLIP(visual, start_layer=2)(images, masks)
        torch.cat(list(result)).sum().backward()
        outputs.append(torch.cat(list(result)).detach())
        grads.append(torch.cat([p.grad.flatten() for p in visual.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], **TOL)
    torch.testing.assert_close(grads[0], grads[1], **TOL)


# ---------------------------------------------------------------------------------------- ResNet

@pytest.fixture(scope="module")
def resnet() -> ModifiedResNet:
    torch.manual_seed(0)
    visual = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=4, image_size=128, width=8)
    return perturb_(visual.double().eval(), seed=0)


def reference_resnet(visual: ModifiedResNet, image: torch.Tensor, on_grid: torch.Tensor) -> torch.Tensor:
    """Per proposal n: N copies of the pooled query, eq. 2 bias [I(N,N); Flat(M)], open_clip's own
    AttentionPool2d weights through torch's reference multi-head attention; keep query n."""
    pool = visual.attnpool
    with torch.no_grad():
        x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(image[None])))))
        feats = x.flatten(2).permute(2, 0, 1)                                # [hw, 1, C]
        count = on_grid.shape[0]
        query = feats.mean(0, keepdim=True) + pool.positional_embedding[:1, None]
        keys = torch.cat([query.expand(count, -1, -1), feats + pool.positional_embedding[1:, None]])
        bias = torch.full((count, count + feats.shape[0]), float("-inf"), dtype=x.dtype)
        bias[:, :count][torch.eye(count, dtype=torch.bool)] = 0.0
        bias[:, count:][on_grid.flatten(1)] = 0.0
        out, _ = F.multi_head_attention_forward(
            query=query.expand(count, -1, -1), key=keys, value=keys, embed_dim_to_check=keys.shape[-1],
            num_heads=pool.num_heads, q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight,
            v_proj_weight=pool.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
            use_separate_proj_weight=True, attn_mask=bias, need_weights=False)
        return out[:, 0]


def test_resnet_equals_slow_reference_and_full_mask_equals_plain(resnet):
    ipclip = IPCLIP(resnet)
    assert ipclip.start_layer is None and ipclip.patch_grid(torch.zeros(1, 3, 128, 128)) == (4, 4)
    images = torch.randn(3, 3, 128, 128, dtype=torch.float64)
    counts = (2, 0, 5)
    masks = [random_soft_masks(n, (4, 4), seed=n) for n in counts]
    with torch.no_grad():
        result = ipclip(images, masks)
        for b, n in enumerate(counts):
            torch.testing.assert_close(result[b], reference_resnet(resnet, images[b], masks[b] >= 0.5), **TOL)
        full = ipclip(images, [torch.ones(1, 7, 7)] * 3)
        plain = resnet(images)
    assert result.empty[2].tolist() == [True, False, False, False, False]
    torch.testing.assert_close(torch.cat(list(full)), plain, **TOL)
    torch.testing.assert_close(ipclip.encode_image(images), plain, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------- bad input

def test_non_finite_and_empty_images_are_refused_not_encoded(vit, tiny_rn_clip):
    masks = [torch.rand(2, 4, 4), torch.rand(3, 4, 4)]
    for ipclip in (IPCLIP(vit), IPCLIP(tiny_rn_clip[0].visual)):
        dtype = next(ipclip.parameters()).dtype
        size = 32 if ipclip.kind == "vit" else 64
        images = torch.randn(2, 3, size, size, dtype=dtype)
        assert all(torch.isfinite(e).all() for e in ipclip(images, masks))  # the clean batch encodes
        for value in (float("nan"), float("inf"), -float("inf")):
            bad = images.clone()
            bad[1, 2, 5, 7] = value
            with pytest.raises(ValueError, match=r"images\[1\] contains non-finite values \(nan or inf\)"):
                ipclip(bad, masks)
            with pytest.raises(ValueError, match=r"images\[1\] contains non-finite"):
                ipclip.encode_image(bad)  # the no-mask mode of self-distillation too
        with pytest.raises(ValueError, match=r"images has shape \(2, 3, 0, 0\): an image of 0x0 pixels"):
            ipclip(images[:, :, :0, :0], masks)
        with pytest.raises(ValueError, match=r"images has shape \(1, 3, 0, 0\)"):
            ipclip.encode_image(images[:1, :, :0, :0])
        with pytest.raises(ValueError, match="floating-point normalised values, got torch.uint8"):
            ipclip(images.to(torch.uint8), masks)


def test_bad_masks_raise_value_errors_naming_argument(vit):
    ipclip = IPCLIP(vit, max_proposals=4)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    ok = torch.rand(2, 4, 4)
    with pytest.raises(ValueError, match="masks has 1 entries but images has batch size 2"):
        ipclip(images, [ok])
    with pytest.raises(ValueError, match="masks must be a list"):
        ipclip(images, torch.stack([ok, ok]))
    with pytest.raises(ValueError, match=r"masks\[1\] must have shape \[N, h, w\]"):
        ipclip(images, [ok, ok[0]])
    nan = ok.clone()
    nan[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"masks\[1\] contains non-finite"):
        ipclip(images, [ok, nan])
    inf = ok.clone()
    inf[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"masks\[0\] contains non-finite"):
        ipclip(images, [inf, ok])
    with pytest.raises(ValueError, match=r"masks\[1\] has values in"):
        ipclip(images, [ok, torch.full((1, 4, 4), 2, dtype=torch.int64)])
    with pytest.raises(ValueError, match=r"masks\[0\] has 5 proposals, more than max_proposals=4"):
        ipclip(images, [torch.rand(5, 4, 4), ok])
    with pytest.raises(ValueError, match=r"masks\[0\] has values in"):
        ipclip(images, [ok * 3 - 1, ok])
    with pytest.raises(ValueError, match="images are 40x40"):
        ipclip(torch.randn(2, 3, 40, 40, dtype=torch.float64), [ok, ok])
    with pytest.raises(ValueError, match=r"images must be a tensor \[B, 3, H, W\]"):
        ipclip(images[0], [ok])


def test_unsupported_towers_and_start_layers_raise(vit, resnet):
    with pytest.raises(ValueError, match="start_layer must be an int in \\[0, 6\\]"):
        IPCLIP(vit, start_layer=7)
    with pytest.raises(ValueError, match="start_layer must be"):
        IPCLIP(vit, start_layer=-1)
    with pytest.raises(ValueError, match="attentional pooler"):
        IPCLIP(VisionTransformer(32, 8, 64, 2, 4, 2.0, attentional_pool=True, attn_pooler_heads=4, output_dim=32))
    with pytest.raises(ValueError, match="pool_type='tok'"):
        IPCLIP(VisionTransformer(32, 8, 64, 2, 4, 2.0, pool_type="avg", output_dim=32))
    with pytest.raises(ValueError, match="images are 96x96"):
        IPCLIP(resnet)(torch.zeros(1, 3, 96, 96, dtype=torch.float64), [torch.ones(1, 3, 3)])
    with pytest.raises(ValueError, match="ViT towers only"):
        IPCLIP(resnet, start_layer=2)
    with pytest.raises(ValueError, match="VisionTransformer or ModifiedResNet"):
        IPCLIP(torch.nn.Linear(3, 3))
