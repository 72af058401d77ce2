"""Which parameters of a vision tower MAFT trains: the units of the paper's Table 4d, by name pattern.

The default, ``["attn", "norm"]``, is the authors' code, the "+ proj." row of Tab. 4d: every block's
attention and both layer norms and the final norm train; the patch embedding (with ``ln_pre``), class
and positional embeddings, MLPs and the projection stay frozen. The paper's default row ("+ conv.")
also trains the projection: ``["attn", "norm", "proj"]``.
"""
from __future__ import annotations

import re
from typing import Sequence

from open_clip.modified_resnet import ModifiedResNet
from torch import nn

# Trainable units (paper Tab. 4d) -> parameter-name patterns of the open_clip vision tower.
VIT_UNITS = {
    "conv": r"conv1\.",
    "cls": r"class_embedding$",
    "pos": r"positional_embedding$",
    "mlp": r"transformer\.resblocks\.\d+\.mlp\.",
    "attn": r"transformer\.resblocks\.\d+\.attn\.",
    # The authors train both norms of every block and the final norm, and keep ln_pre frozen with the
    # patch embedding it normalises: ln_pre is its own unit so the default matches them exactly.
    "norm": r"(ln_post|transformer\.resblocks\.\d+\.ln_[12])\.",
    "pre_norm": r"ln_pre\.",
    "proj": r"proj$",
}
# ModifiedResNet towers (IP-CLIP masks their attention pool): the closest equivalents.
RESNET_UNITS = {
    "conv": r"(conv[123]\.|layer\d\.\d+\.(conv[123]|downsample\.0)\.)",
    "cls": r"$^",
    "pos": r"attnpool\.positional_embedding$",
    "mlp": r"$^",
    "attn": r"attnpool\.[qkv]_proj\.",
    "norm": r"(bn[123]\.|layer\d\.\d+\.(bn[123]|downsample\.1)\.)",
    "pre_norm": r"$^",
    "proj": r"attnpool\.c_proj\.",
}
UNITS = tuple(VIT_UNITS)


def vision_tower(model: nn.Module) -> nn.Module:
    """The open_clip vision tower of a CLIP model, an IPCLIP or a tower itself."""
    inner = getattr(model, "visual", None)
    return inner if isinstance(inner, nn.Module) else model


def _unit_patterns(visual: nn.Module) -> dict[str, str]:
    return RESNET_UNITS if isinstance(visual, ModifiedResNet) else VIT_UNITS


def trainable_parameter_names(visual: nn.Module, units: Sequence[str]) -> list[str]:
    """Names (relative to the tower) of the parameters that belong to ``units``."""
    bad = [u for u in units if u not in UNITS]
    if bad:
        raise ValueError(f"unknown trainable units {bad}; choose from {list(UNITS)}")
    patterns = _unit_patterns(visual)
    regex = re.compile("|".join(f"(?:^{patterns[u]})" for u in units))
    names = [name for name, _ in visual.named_parameters() if regex.match(name)]
    if not names:
        raise ValueError(f"trainable units {list(units)} select no parameter of this {type(visual).__name__}")
    return names


NORM_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)


def norm_parameter_names(visual: nn.Module) -> list[str]:
    """Names of the parameters that belong to normalisation layers (LayerNorm, BatchNorm, GroupNorm ...),
    by module type as the authors' optimiser finds them; they get ``train.norm_weight_decay``."""
    return [f"{module_name}.{name}" if module_name else name
            for module_name, module in visual.named_modules() if isinstance(module, NORM_MODULES)
            for name, _ in module.named_parameters(recurse=False)]


def set_trainable(visual: nn.Module, units: Sequence[str]) -> list[str]:
    """Freeze the tower except ``units``; returns the trainable names."""
    names = trainable_parameter_names(visual, units)
    chosen = set(names)
    for name, parameter in visual.named_parameters():
        parameter.requires_grad_(name in chosen)
    return names
