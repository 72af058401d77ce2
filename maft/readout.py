"""A tower assumption of the world model: the class token reads the image only from a given block on.

Real CLIP ViTs read their answer out late: mean-ablating what the early attention layers write into the
class token barely moves zero-shot accuracy, the last four layers carry most of the direct effect
(Gandelsman et al., ICLR 2024). A tiny ViT pretrained from scratch on the offline world does not: it
commits early (issue 19), so masking attention from the paper's L = 8 cannot isolate a region. The world
model therefore states the property as an architectural assumption, the way open_clip's model configs
state an architecture: in blocks ``< class_token_reads_from`` the class token attends only to itself
(patch tokens are unchanged and may still attend to it). Its state before that block is then the same
for every image, and everything it knows about the image is written in the later blocks.

The assumption lives beside the open_clip config, in ``maft/model_configs/<name>.tower.json`` (open_clip
rejects unknown keys in its own config, and skips this file because it lacks ``embed_dim``):
``{"class_token_reads_from": 8}``. :func:`maft.clip.load_clip` applies it to every tower it builds,
so the plain forward (pretraining, zero-shot, crop-and-classify) and IP-CLIP (which asks
:func:`class_token_self_only` of each block it runs itself) honour it alike. Parameters and state
dicts are unchanged: the blocks only change class.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

TOWER_SUFFIX = ".tower.json"
KNOWN_KEYS = ("class_token_reads_from", "why")


class ClassTokenSelfOnlyBlock(ResidualAttentionBlock):
    """An open_clip block whose class token (position 0) attends only to itself; other tokens as before."""

    class_token_self_only = True

    def forward(self, q_x: torch.Tensor, k_x=None, v_x=None, attn_mask=None):
        if k_x is not None or v_x is not None or attn_mask is not None:  # open_clip's ViT passes neither
            raise ValueError("ClassTokenSelfOnlyBlock: cross-attention and attention masks are not supported")
        tokens = q_x.shape[1] if self.attn.batch_first else q_x.shape[0]
        # Additive float mask (open_clip casts any mask to the activations' dtype, so a boolean one
        # would become 0/1, not 0/-inf): row 0, the class token, sees column 0 only.
        blocked = torch.zeros(tokens, tokens, dtype=q_x.dtype, device=q_x.device)
        blocked[0, 1:] = float("-inf")
        return super().forward(q_x, attn_mask=blocked)


def class_token_self_only(block: torch.nn.Module) -> bool:
    """Whether this block's class token may attend only to itself (the tower assumption)."""
    return bool(getattr(block, "class_token_self_only", False))


def tower_assumptions(model_name: str, config_dir: str | Path) -> dict:
    """The assumptions file of ``model_name`` (``{}`` when it has none), checked."""
    path = Path(config_dir) / f"{model_name}{TOWER_SUFFIX}"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    unknown = sorted(set(data) - set(KNOWN_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known: {list(KNOWN_KEYS)}")
    return data


def apply_class_token_readout(visual: torch.nn.Module, reads_from: int) -> None:
    """Make the class token of blocks ``0 .. reads_from-1`` of a ViT tower attend only to itself."""
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"class_token_reads_from applies to ViT towers, got {type(visual).__name__}")
    blocks = visual.transformer.resblocks
    if not isinstance(reads_from, int) or not 0 <= reads_from <= len(blocks):
        raise ValueError(f"class_token_reads_from must be an int in [0, {len(blocks)}], got {reads_from!r}")
    for index, block in enumerate(blocks):
        if index < reads_from:
            if type(block) is not ResidualAttentionBlock and not isinstance(block, ClassTokenSelfOnlyBlock):
                raise ValueError(f"block {index} is a {type(block).__name__}, not an open_clip ResidualAttentionBlock")
            block.__class__ = ClassTokenSelfOnlyBlock
        elif isinstance(block, ClassTokenSelfOnlyBlock):
            block.__class__ = ResidualAttentionBlock
    visual.class_token_reads_from = reads_from
