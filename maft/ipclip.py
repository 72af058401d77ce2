"""Image-Proposal CLIP encoder (IP-CLIP, MAFT paper Sec. 4.1): all mask proposals of an image in one pass.

The wrapper runs an open_clip vision tower's own submodules and weights; only the attention of the blocks
from the start layer L on is re-wired:

* blocks ``< L`` run unchanged (the tower's own block forward);
* at block L the class token is repeated once per proposal; class query n attends to itself and to the
  patch tokens where proposal n is on (paper eq. 2 and 3); patch tokens attend to patch tokens only
  (eq. 4), so they never see a class token and do not depend on the proposals;
* proposal n's embedding is the tower's final norm and projection applied to class token n.

Cost: the patch rows are plain self-attention over the patches (the plain tower's cost, mask-free so
the fastest SDPA kernel applies); the N class rows are one extra SDPA of N queries against
``[N class tokens; hw patches]`` with a boolean ``[N, N + hw]`` mask shared by all heads. No per-head
``(N+hw) x (N+hw)`` matrix is ever built.

Conventions (decided here, tested in tests/test_ipclip.py):

* Proposals are resized to the patch grid with :func:`maft.masks.binarize_masks`: bilinear
  interpolation (``align_corners=False``, no antialias, as the authors do), and a patch is *on* when the
  resized value is ``>= 0.5``, as in the authors' code, which blocks attention where the value is
  ``< 0.5`` (a 2x2 block with exactly half its pixels on is on).
* ``start_layer`` L counts blocks from 0: blocks ``L .. depth-1`` use mask attention. ``L = 0`` masks every
  block; ``L = depth`` is allowed and means *no* mask attention at all: every proposal then gets the
  plain image embedding (a useful ablation end point, paper Tab. 4e). Default ``round(depth * 8 / 12)``
  (8 of 12 blocks as in the paper, 16 of 24 as the authors advise for ViT-L/14).
* A batch of images with different proposal counts is packed by padding every image to the largest
  count; padded class rows attend only to themselves and are dropped from the output.
* ResNet towers (open_clip ``ModifiedResNet``): the paper's attention-pool variant (Sec. 5.5). The pooled
  query (mean of the feature map plus positional embedding) is repeated once per proposal and attends to
  itself and to the feature-map positions inside its proposal, with AttentionPool2d's own weights.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from .masks import binarize_masks
from .readout import class_token_self_only


class ProposalEmbeddings(list):
    """B tensors ``[N_b, D]`` (projected, not normalised), one per image, plus per-proposal flags.

    ``empty[b]``: bool ``[N_b]``, True where proposal n has no patch on after resizing to the patch grid
    (its embedding then comes from its class query attending only to itself).
    ``patch_tokens``: ``[B, hw, width]`` final-block patch states (before the final norm) when requested
    with ``return_patch_tokens=True``, else None.
    """

    def __init__(self, embeddings: Sequence[torch.Tensor], empty: Sequence[torch.Tensor],
                 patch_tokens: torch.Tensor | None = None):
        super().__init__(embeddings)
        self.empty = list(empty)
        self.patch_tokens = patch_tokens


def default_start_layer(depth: int) -> int:
    """The paper's L = 8 of 12 blocks, scaled with depth (16 of 24, 4 of 6)."""
    return int(round(depth * 8 / 12))


def class_token_attention_mask(proposals: torch.Tensor, shared_self: bool = False) -> torch.Tensor:
    """The paper's eq. 2 ``M_hat = [I(N, N); Flat(M)]``: the one place the class queries' attention mask
    is built, by the ViT and the ResNet forward alike.

    ``proposals``: bool ``[..., N, P]``, proposal n's patches on the grid (row-major; see
    :func:`maft.masks.binarize_masks`). Returns bool ``[..., N, K + P]`` (True = may attend; the bias B of
    eq. 2 is 0 there and -inf elsewhere): row n is class query n, which sees itself among the K class keys
    and the patches where proposal n is on. ``shared_self``: the N queries are copies of one token with no
    layer after them (a ResNet's attention pool), so "itself" is one shared key column (K = 1); otherwise
    K = N and the self part is the identity.
    """
    proposals = proposals.bool()
    count = proposals.shape[-2]
    if shared_self:
        itself = torch.ones(*proposals.shape[:-1], 1, dtype=torch.bool, device=proposals.device)
    else:
        itself = torch.eye(count, dtype=torch.bool, device=proposals.device).expand(*proposals.shape[:-2], count, count)
    return torch.cat([itself, proposals], dim=-1)


def check_masks(masks, batch_size: int, max_proposals: int) -> None:
    """ValueError naming ``masks[b]`` for anything that would give a silently wrong answer."""
    if isinstance(masks, torch.Tensor) or not isinstance(masks, (list, tuple)):
        raise ValueError(f"masks must be a list of {batch_size} tensors [N_b, h, w], got {type(masks).__name__}")
    if len(masks) != batch_size:
        raise ValueError(f"masks has {len(masks)} entries but images has batch size {batch_size}")
    value_ranges = {}
    for b, mask in enumerate(masks):
        if not isinstance(mask, torch.Tensor):
            raise ValueError(f"masks[{b}] must be a tensor [N, h, w], got {type(mask).__name__}")
        if mask.ndim != 3:
            raise ValueError(f"masks[{b}] must have shape [N, h, w], got {tuple(mask.shape)}")
        if mask.shape[0] > max_proposals:
            raise ValueError(f"masks[{b}] has {mask.shape[0]} proposals, more than max_proposals={max_proposals}")
        if mask.shape[0] == 0:
            continue
        if mask.shape[1] == 0 or mask.shape[2] == 0:
            raise ValueError(f"masks[{b}] has an empty spatial size {tuple(mask.shape[1:])}")
        if mask.dtype != torch.bool:
            # nan propagates into min/max and +-inf lands outside [0, 1]: one reduction checks both.
            value_ranges[b] = torch.stack(torch.aminmax(mask)).double()
    if not value_ranges:
        return
    # One device->host copy for the whole batch (a sync per image would stall the GPU B times).
    device = next(iter(value_ranges.values())).device
    ranges = torch.stack([r.to(device) for r in value_ranges.values()]).tolist()
    for b, (low, high) in zip(value_ranges, ranges):
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"masks[{b}] contains non-finite values (nan or inf)")
        if low < 0 or high > 1:
            raise ValueError(f"masks[{b}] has values in [{low:.4g}, {high:.4g}], expected probabilities in [0, 1] "
                             "(soft masks: pass sigmoid(logits), not logits; integer masks: 0 or 1)")


def check_images(images) -> None:
    """ValueError unless ``images`` is a finite floating-point ``[B, 3, H, W]`` batch with H, W >= 1.

    A NaN or infinite pixel would spread through attention to every embedding of its image, and a 0x0
    image has no patch at all: both are refused here, by IP-CLIP and by the frozen baseline, rather
    than returned as NaN embeddings.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B, 3, H, W] (normalised), got {shape}")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"images has shape {tuple(images.shape)}: an image of {images.shape[2]}x{images.shape[3]} "
                         "pixels has nothing to encode")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating-point normalised values, got {images.dtype} "
                         "(maft.clip.preprocess_images turns uint8 images into those)")
    finite = torch.isfinite(images).flatten(1).all(dim=1)
    if not bool(finite.all()):  # one device->host sync for the batch
        bad = (~finite).nonzero().flatten().tolist()
        raise ValueError(f"images[{bad[0]}] contains non-finite values (nan or inf)"
                         + (f", and {len(bad) - 1} more images" if len(bad) > 1 else "")
                         + "; check the image source and its normalisation")


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, T, D] -> [B, heads, T, D / heads]."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, heads, T, d] -> [B, T, heads * d]."""
    return x.transpose(1, 2).flatten(2)


class IPCLIP(nn.Module):
    """IP-CLIP on an open_clip vision tower (``model.visual``): ``VisionTransformer`` or ``ModifiedResNet``.

    ``ipclip(images [B,3,H,W] normalised, masks: list of B tensors [N_b,h,w])`` -> :class:`ProposalEmbeddings`.
    ``ipclip.encode_image(images)`` is the no-mask mode: exactly the tower's own forward.
    """

    def __init__(self, visual: nn.Module, start_layer: int | None = None, max_proposals: int = 1024):
        super().__init__()
        self.visual = visual
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
        self.max_proposals = int(max_proposals)
        if isinstance(visual, VisionTransformer):
            self.kind = "vit"
            _check_supported_vit(visual)
            depth = len(visual.transformer.resblocks)
            if start_layer is None:
                start_layer = default_start_layer(depth)
            # a bool is an int to Python, and True would silently mean layer 1
            if not isinstance(start_layer, int) or isinstance(start_layer, bool) or not 0 <= start_layer <= depth:
                raise ValueError(f"start_layer must be an int in [0, {depth}] for this {depth}-block tower, "
                                 f"got {start_layer!r}")
        elif isinstance(visual, ModifiedResNet):
            self.kind = "resnet"
            if start_layer is not None:
                raise ValueError("start_layer applies to ViT towers only; ResNet towers mask the attention "
                                 f"pool (got start_layer={start_layer!r})")
            if getattr(visual, "attnpool", None) is None:
                raise ValueError("visual: this ModifiedResNet has no attention pool (attnpool is None)")
        else:
            raise ValueError(f"visual must be an open_clip VisionTransformer or ModifiedResNet, "
                             f"got {type(visual).__name__}")
        self.start_layer = start_layer

    # ------------------------------------------------------------------ public API

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """No-mask mode (used by the self-distillation loss): the tower's own forward, [B, D]."""
        check_images(images)
        out = self.visual(images)
        return out[0] if isinstance(out, tuple) else out

    def forward(self, images: torch.Tensor, masks: Sequence[torch.Tensor],
                return_patch_tokens: bool = False) -> ProposalEmbeddings:
        """Embeddings of every proposal of every image in one pass.

        images: [B, 3, H, W], CLIP-normalised, at the size the tower's positional embedding was made for.
        masks: B tensors [N_b, h, w] (N_b may be 0), soft in [0, 1] or binary (bool/int), any h, w.
        return_patch_tokens: also fill ``result.patch_tokens`` ([B, hw, width]; the ResNet feature map for
        ResNet towers). They never depend on the proposals.
        """
        check_images(images)
        check_masks(masks, images.shape[0], self.max_proposals)
        grid = self.patch_grid(images)
        on_grid, empty = self._proposals_on_grid(masks, grid, images.device)
        counts = [rows.shape[0] for rows in on_grid]
        if max(counts) == 0 and not return_patch_tokens:
            return self._empty_result(images, empty)
        forward = self._forward_vit if self.kind == "vit" else self._forward_resnet
        return forward(images, grid, on_grid, empty, counts, return_patch_tokens)

    @property
    def output_dim(self) -> int:
        """D of the returned embeddings (the projection's output, or the width of a tower without one)."""
        if self.kind == "resnet":
            return self.visual.attnpool.c_proj.out_features
        proj = self.visual.proj
        return proj.shape[1] if proj is not None else self.visual.transformer.width

    def patch_grid(self, images: torch.Tensor) -> tuple[int, int]:
        """(gh, gw) of the grid the proposals are resized to; ValueError when the tower cannot take H x W."""
        if self.kind == "vit":
            return self._vit_grid(images)
        return self._resnet_grid(images)

    # ------------------------------------------------------------------ shared pieces

    def _proposals_on_grid(self, masks, grid_size, device):
        """Per image bool [N_b, gh*gw] (patch on) and bool [N_b] (no patch on), on ``device``."""
        on_grid = [binarize_masks(m.to(device), grid_size).flatten(1) for m in masks]
        empty = [~m.any(dim=1) for m in on_grid]
        return on_grid, empty

    @staticmethod
    def _pad_proposals(on_grid, num_queries: int, num_positions: int, device) -> torch.Tensor:
        """Bool [B, num_queries, num_positions]: image b's proposals in its first N_b rows, False below."""
        padded = torch.zeros(len(on_grid), num_queries, num_positions, dtype=torch.bool, device=device)
        for b, rows in enumerate(on_grid):
            padded[b, :rows.shape[0]] = rows.to(device)
        return padded

    def _empty_result(self, images, empty) -> ProposalEmbeddings:
        """Every image has N_b = 0: [0, D] tensors without running the tower."""
        dtype = next(self.visual.parameters()).dtype
        embeddings = [torch.zeros(0, self.output_dim, dtype=dtype, device=images.device) for _ in empty]
        return ProposalEmbeddings(embeddings, empty)

    # ------------------------------------------------------------------ ViT

    def _vit_grid(self, images: torch.Tensor) -> tuple[int, int]:
        visual = self.visual
        ph, pw = visual.conv1.kernel_size
        grid = (images.shape[2] // ph, images.shape[3] // pw)
        num_positions = visual.positional_embedding.shape[0] - 1
        tower_grid = tuple(getattr(visual, "grid_size", ()))
        # Prefer the tower's own grid when it describes its positional embedding (catches HxW vs WxH);
        # a tower resized without updating grid_size can only be checked by count.
        if len(tower_grid) == 2 and tower_grid[0] * tower_grid[1] == num_positions:
            ok = grid == tower_grid
        else:
            ok = grid[0] * grid[1] == num_positions
        if not ok:
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[3]} (patch grid {grid[0]}x{grid[1]}) but the tower's "
                f"positional embedding has {num_positions} patch positions (grid {tower_grid}); resize the tower "
                f"to this input size first (maft.clip.load_clip(..., image_size=...))")
        return grid

    def _vit_embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 1 + hw, width] tokens entering block 0, batch first.

        Same steps as the tower's own embedding except patch dropout, which is skipped on purpose: the
        proposals need every patch of the grid.
        """
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
        return visual.ln_pre(x)

    def _checkpointing(self) -> bool:
        return bool(getattr(self.visual.transformer, "grad_checkpointing", False)) and torch.is_grad_enabled()

    def _run_plain_blocks(self, x: torch.Tensor, blocks) -> torch.Tensor:
        """The tower's own blocks, in the token layout the tower runs them in."""
        if len(blocks) == 0:
            return x
        batch_first = getattr(self.visual.transformer, "batch_first", False)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if self._checkpointing() else block(x)
        return x.transpose(0, 1) if not batch_first else x

    def _masked_block(self, block: nn.Module, x: torch.Tensor, num_queries: int,
                      query_mask: torch.Tensor) -> torch.Tensor:
        """One block on ``x = [class queries; patches]`` (batch first) with IP-CLIP attention.

        ``query_mask``: bool [B, 1, num_queries, num_queries + hw], broadcast over heads.
        Norms, layer scales and MLP are the block's own modules applied as its forward does.
        """
        attn = block.attn
        heads = attn.num_heads
        dropout = attn.dropout if self.training else 0.0
        q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, heads) for t in (q, k, v))
        # Patch rows: plain self-attention over the patches (eq. 4), no mask -> the plain tower's kernel.
        patch_out = F.scaled_dot_product_attention(
            q[:, :, num_queries:], k[:, :, num_queries:], v[:, :, num_queries:], dropout_p=dropout)
        if num_queries > 0:
            # Class rows: keys are [class tokens; patches]; the mask keeps self + own proposal (eq. 2, 3).
            query_out = F.scaled_dot_product_attention(q[:, :, :num_queries], k, v, attn_mask=query_mask,
                                                       dropout_p=dropout)
            patch_out = torch.cat([query_out, patch_out], dim=2)
        x = x + block.ls_1(attn.out_proj(_merge_heads(patch_out)))
        return x + block.ls_2(block.mlp(block.ln_2(x)))

    def _forward_vit(self, images, grid, on_grid, empty, counts, return_patch_tokens):
        visual = self.visual
        num_queries = max(counts)

        blocks = visual.transformer.resblocks
        x = self._vit_embed(images)
        x = self._run_plain_blocks(x, blocks[:self.start_layer])
        num_patches = grid[0] * grid[1]
        # From block L: one copy of the class token per (padded) proposal slot, then the patches.
        queries = x[:, :1].expand(-1, num_queries, -1)
        x = torch.cat([queries, x[:, 1:]], dim=1)
        proposals = self._pad_proposals(on_grid, num_queries, num_patches, x.device)
        query_mask = class_token_attention_mask(proposals)[:, None]  # eq. 2, broadcast over heads
        # A tower whose class token reads the image only from some block on (maft/readout.py, a stated
        # assumption of the world model) keeps that in every block before it: there each class query
        # attends only to itself, whatever its proposal (eq. 2 with no patch on).
        masked = blocks[self.start_layer:]
        self_only = (class_token_attention_mask(torch.zeros_like(proposals))[:, None]
                     if any(class_token_self_only(block) for block in masked) else None)
        for block in masked:
            mask = self_only if class_token_self_only(block) else query_mask
            if self._checkpointing():
                x = checkpoint(self._masked_block, block, x, num_queries, mask, use_reentrant=False)
            else:
                x = self._masked_block(block, x, num_queries, mask)

        # LayerNorm acts per token, so ln_post-then-pool and pool-then-ln_post (final_ln_after_pool) agree.
        pooled = visual.ln_post(x[:, :num_queries])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        embeddings = [pooled[b, :n] for b, n in enumerate(counts)]
        patch_tokens = x[:, num_queries:] if return_patch_tokens else None
        return ProposalEmbeddings(embeddings, empty, patch_tokens)

    # ------------------------------------------------------------------ ResNet

    def _resnet_features(self, images: torch.Tensor) -> torch.Tensor:
        visual = self.visual
        x = visual.stem(images.to(visual.conv1.weight.dtype))
        for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
            x = layer(x)
        return x

    def _resnet_grid(self, images: torch.Tensor) -> tuple[int, int]:
        # ModifiedResNet: stride-2 conv (padding 1, so ceil(H / 2)), then four 2x average pools (floor).
        grid = ((images.shape[2] + 1) // 2 // 16, (images.shape[3] + 1) // 2 // 16)
        num_positions = self.visual.attnpool.positional_embedding.shape[0] - 1
        if grid[0] * grid[1] != num_positions:
            raise ValueError(
                f"images are {images.shape[2]}x{images.shape[3]} (feature grid {grid[0]}x{grid[1]}) but the "
                f"attention pool's positional embedding has {num_positions} positions; resize the tower first")
        return grid

    def _forward_resnet(self, images, grid, on_grid, empty, counts, return_patch_tokens):
        pool = self.visual.attnpool
        num_queries = max(counts)

        features = self._resnet_features(images)
        tokens = features.flatten(2).transpose(1, 2)  # [B, hw, C]
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        tokens = tokens + pool.positional_embedding.to(tokens.dtype)
        # The N pooled queries are identical copies of token 0 and no layer follows the pool, so "itself"
        # (the identity part of eq. 2) is the same key/value for every copy: one shared key at column 0.
        k = _split_heads(pool.k_proj(tokens), pool.num_heads)
        v = _split_heads(pool.v_proj(tokens), pool.num_heads)
        q = _split_heads(pool.q_proj(tokens[:, :1]), pool.num_heads)
        embeddings = [tokens.new_zeros(0, self.output_dim) for _ in counts]
        if num_queries > 0:
            proposals = self._pad_proposals(on_grid, num_queries, grid[0] * grid[1], tokens.device)
            mask = class_token_attention_mask(proposals, shared_self=True)[:, None]
            out = F.scaled_dot_product_attention(q.expand(-1, -1, num_queries, -1), k, v, attn_mask=mask)
            pooled = pool.c_proj(_merge_heads(out))
            embeddings = [pooled[b, :n] for b, n in enumerate(counts)]
        patch_tokens = features.flatten(2).transpose(1, 2) if return_patch_tokens else None
        return ProposalEmbeddings(embeddings, empty, patch_tokens)


def _check_supported_vit(visual: VisionTransformer) -> None:
    """ValueError for towers whose class-token pooling or attention IP-CLIP cannot re-wire faithfully."""
    if getattr(visual, "attn_pool", None) is not None:
        raise ValueError("visual: IP-CLIP does not support towers with an attentional pooler (attn_pool, CoCa)")
    pool_type = getattr(visual, "pool_type", "tok")
    if pool_type != "tok" or getattr(visual, "global_average_pool", False):
        raise ValueError(f"visual: IP-CLIP needs class-token pooling (pool_type='tok'), got {pool_type!r}")
    for i, block in enumerate(visual.transformer.resblocks):
        attn = getattr(block, "attn", None)
        if not isinstance(attn, nn.MultiheadAttention):
            raise ValueError(f"visual: block {i} has {type(attn).__name__} attention; IP-CLIP supports "
                             "open_clip ResidualAttentionBlock with nn.MultiheadAttention")
        if (not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn
                or hasattr(block, "ln_1_kv") or not isinstance(getattr(block, "ln_attn", nn.Identity()), nn.Identity)):
            raise ValueError(f"visual: block {i} uses an attention variant IP-CLIP does not support")
