"""The authors' released MAFT checkpoints (``MAFT_Vitb.pt``, ``MAFT_Vitl.pt``), read without detectron2.

The authors' code (github.com/jiaosiyu1999/MAFT, ``freeseg/MAFT.py``) saves the whole detectron2
meta-architecture as ``{"model": state_dict, ...}``. Its top-level modules give the key prefixes:

==============================  ==========================================================================
``IPCLIP.``                     the fine-tuned vision tower (``build_clip_model(...).visual``): MAFT itself
``T.``                          the frozen teacher of the self-distillation loss (the original tower)
``clip_adapter.clip_model.``    the original CLIP, text tower included (``visual.`` + text keys)
``clip_adapter.*`` (other)      FreeSeg's learned "void" text embedding and prompt buffers
``backbone.``, ``sem_seg_head.``  the stage-one proposal generator (ResNet-101 + Mask2Former head)
``criterion.``                  the generator's loss buffers
==============================  ==========================================================================

The towers are OpenAI CLIP modules (``third_party/CLIP/clip/model.py`` in their repository), whose
parameter names open_clip keeps, so every key maps 1:1 onto an open_clip model built with QuickGELU
(OpenAI's activation); a key open_clip does not have is an error, never silently dropped. Two things
do differ and are handled here:

- the positional embedding is stored at the 224-px grid (14x14 for ViT-B/16, 16x16 for ViT-L/14) and
  the authors' forward interpolates it on every call, bicubic with ``align_corners=True``, to the
  runtime grid (30x30 at 480 px). open_clip's own resize uses ``align_corners=False``, which gives other
  numbers, so the tower is resized here once, the authors' way (:func:`resize_pos_embed_like_authors`);
- weights may be stored in fp16; they are cast to the model's dtype.

``maft.clip.load_clip(name, pretrained="MAFT_Vitb.pt")`` builds the model and uses :func:`load_into_clip`
(text tower and fine-tuned vision tower); ``maft.checkpoints.load_finetuned`` (every ``--checkpoint``) uses
:func:`apply_finetuned` (vision tower onto an already loaded CLIP, after checking that CLIP is the one
the checkpoint was fine-tuned from).
"""
from __future__ import annotations

import copy
import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import CustomTextCLIP, convert_to_custom_text_state_dict
from open_clip.transformer import QuickGELU
from torch import nn

__all__ = ["AuthorsCheckpoint", "read_checkpoint", "is_authors_checkpoint", "load_into_clip",
           "apply_finetuned", "resize_pos_embed_like_authors", "config_for_checkpoint"]

STUDENT = "IPCLIP."
TEACHER = "T."
CLIP = "clip_adapter.clip_model."
GENERATOR = ("backbone.", "sem_seg_head.")
# Top-level modules of the authors' MAFT meta-architecture; a "model" dict with none of them is not theirs.
FAMILY = (STUDENT, TEACHER, "clip_adapter.") + GENERATOR
RELEASED = {"MAFT_Vitb.pt": "ViT-B-16", "MAFT_Vitl.pt": "ViT-L-14"}

log = logging.getLogger(__name__)


@dataclass
class AuthorsCheckpoint:
    """The ``model`` state dict of an authors' checkpoint, split by top-level module."""

    path: str
    state: Mapping[str, torch.Tensor]

    def part(self, prefix: str) -> dict[str, torch.Tensor]:
        """Keys under ``prefix`` with the prefix removed (non-tensor entries skipped)."""
        return {k[len(prefix):]: v for k, v in self.state.items()
                if k.startswith(prefix) and isinstance(v, torch.Tensor)}

    def vision(self) -> dict[str, torch.Tensor]:
        """The fine-tuned vision tower (``IPCLIP.``); a clear error when the file has none."""
        tower = self.part(STUDENT)
        if not tower:
            has = ", ".join(f"{p} ({n})" for p, n in self.counts().items() if n) or "no known module"
            raise ValueError(
                f"{self.path}: no fine-tuned vision tower (no '{STUDENT}' keys) in this detectron2 checkpoint; "
                f"it holds {has}. A stage-one model such as FreeSeg's freeseg_model.pt has a frozen CLIP only: "
                f"use the released MAFT_Vitb.pt / MAFT_Vitl.pt, or pretrained='openai' for frozen CLIP.")
        return tower

    def reference(self) -> tuple[str, dict[str, torch.Tensor]]:
        """The original (not fine-tuned) vision tower: the teacher ``T.``, else the CLIP adapter's tower."""
        teacher = self.part(TEACHER)
        if teacher:
            return TEACHER, teacher
        return CLIP + "visual.", self.part(CLIP + "visual.")

    def text(self) -> dict[str, torch.Tensor]:
        """The text tower and logit scale (``clip_adapter.clip_model.`` minus ``visual.``)."""
        text = {k: v for k, v in self.part(CLIP).items() if not k.startswith("visual.")}
        if not text:
            raise ValueError(f"{self.path}: no text tower (no '{CLIP}' keys besides 'visual.'); load the text "
                             "tower from the original CLIP (pretrained='openai') and pass this file as --checkpoint")
        return text

    def counts(self) -> dict[str, int]:
        """Number of tensors under each top-level prefix (for messages and ``maft_source``)."""
        out: dict[str, int] = {}
        for key in self.state:
            prefix = CLIP if key.startswith(CLIP) else key.split(".", 1)[0] + ("." if "." in key else "")
            out[prefix] = out.get(prefix, 0) + 1
        return out


def _torchscript(path: str) -> bool:
    # An OpenAI JIT archive would make torch.load fall back to torch.jit.load (slow, full model); skip it.
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.split("/", 2)[1:2] == ["code"] or name.endswith("/constants.pkl")
                       for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, IndexError):
        return False


def _load(path: str):
    try:  # mmap: a multi-GB checkpoint is only mapped, and only the tensors used are read
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def read_checkpoint(checkpoint: str | os.PathLike | Mapping) -> AuthorsCheckpoint | None:
    """The authors' checkpoint in ``checkpoint`` (a path or an already loaded dict), or None if not one.

    A file that torch cannot read (safetensors, another format) is simply not one; loading it is then
    left to whoever else reads it. A "model" dict is the authors' when it has keys under their modules
    (``IPCLIP.``, ``T.``, ``clip_adapter.``, ``backbone.``, ``sem_seg_head.``); DDP's ``module.`` is dropped.
    """
    if isinstance(checkpoint, Mapping):
        data, where = checkpoint, "checkpoint"
    else:
        where = os.fspath(checkpoint)
        if not os.path.isfile(where) or _torchscript(where):
            return None
        try:
            data = _load(where)
        except Exception:  # noqa: BLE001 - unreadable by torch: not ours to judge here
            return None
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping) or not model:
        return None
    keys = [k for k in model if isinstance(k, str)]
    if keys and all(k.startswith("module.") for k in keys):
        model = {k[len("module."):]: v for k, v in model.items()}
        keys = list(model)
    if not any(k.startswith(FAMILY) for k in keys):
        return None
    return AuthorsCheckpoint(where, model)


def is_authors_checkpoint(checkpoint) -> bool:
    """Whether ``checkpoint`` (path or dict) is an authors' detectron2 MAFT checkpoint."""
    return checkpoint is not None and read_checkpoint(checkpoint) is not None


# ----------------------------------------------------------------------------------------------------
# Positional embedding


def _square_grid(length: int, where: str) -> int:
    grid = math.isqrt(length - 1)
    if grid * grid != length - 1:
        raise ValueError(f"{where}: positional embedding of {length} positions is not 1 + a square grid")
    return grid


def resize_pos_embed_like_authors(pos_embed: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """``[1 + g*g, C]`` -> ``[1 + gh*gw, C]`` as the authors' forward does: class position kept, the grid
    interpolated bicubically with ``align_corners=True`` (no antialiasing). Same grid: returned as is."""
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    stored = _square_grid(pos_embed.shape[0], "resize_pos_embed_like_authors")
    if (stored, stored) == (gh, gw):
        return pos_embed
    width = pos_embed.shape[1]
    patches = pos_embed[1:].float().T.reshape(1, width, stored, stored)
    patches = F.interpolate(patches, size=(gh, gw), mode="bicubic", align_corners=True)
    resized = torch.cat([pos_embed[:1].float(), patches.reshape(width, gh * gw).T])
    return resized.to(pos_embed.dtype)


def _pos_key(visual: nn.Module) -> str:
    return "attnpool.positional_embedding" if hasattr(visual, "attnpool") else "positional_embedding"


def _grid_of(visual: nn.Module) -> tuple[int, int]:
    if hasattr(visual, "attnpool"):
        grid = _square_grid(visual.attnpool.positional_embedding.shape[0], type(visual).__name__)
        return grid, grid
    return tuple(visual.grid_size)


def _tower_state(tower: dict[str, torch.Tensor], visual: nn.Module, where: str) -> dict[str, torch.Tensor]:
    """The checkpoint's tower in the names, shapes and dtypes of ``visual`` (an open_clip tower)."""
    own = visual.state_dict()
    key = _pos_key(visual)
    tower = dict(tower)
    if key in tower:  # the grid is free to differ (stored at 224 px); everything else must match
        tower[key] = resize_pos_embed_like_authors(tower[key], _grid_of(visual))
    unexpected = sorted(set(tower) - set(own))
    missing = sorted(set(own) - set(tower))
    wrong = [f"{k}: checkpoint {tuple(tower[k].shape)}, model {tuple(own[k].shape)}"
             for k in sorted(set(tower) & set(own)) if tower[k].shape != own[k].shape]
    if unexpected or missing or wrong:
        problems = ([f"not in the model: {', '.join(unexpected[:4])}"] if unexpected else []) + \
                   ([f"missing: {', '.join(missing[:4])}"] if missing else []) + wrong[:4]
        raise ValueError(f"{where}: the vision tower ({describe_tower(tower)}) does not fit this "
                         f"{type(visual).__name__} ({describe_tower(own)}): " + "; ".join(problems)
                         + _name_hint(tower))
    return {k: v.to(own[k].dtype) for k, v in tower.items()}


def describe_tower(state: Mapping[str, torch.Tensor]) -> str:
    """'ViT width 768, 12 blocks, patch 16' (or the ResNet's stage depths) from a tower's state dict."""
    if "conv1.weight" in state and "transformer.resblocks.0.attn.in_proj_weight" in state:
        blocks = sum(1 for k in state if k.startswith("transformer.resblocks.") and k.endswith(".attn.in_proj_weight"))
        conv = state["conv1.weight"]
        return f"ViT width {conv.shape[0]}, {blocks} blocks, patch {conv.shape[-1]}"
    if "attnpool.positional_embedding" in state:
        stages = [len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in (1, 2, 3, 4)]
        return f"ModifiedResNet stages {stages}, width {state['layer1.0.conv1.weight'].shape[1]}"
    return f"{len(state)} tensors"


def _name_hint(tower: Mapping[str, torch.Tensor]) -> str:
    """' (this tower looks like ViT-L-14: pass that model name)' when an OpenAI architecture matches."""
    if "conv1.weight" not in tower or "proj" not in tower:
        return ""
    conv = tower["conv1.weight"]
    blocks = sum(1 for k in tower if k.endswith(".attn.in_proj_weight"))
    for name, tag in open_clip.list_pretrained():
        vision = (open_clip.get_model_config(name) or {}).get("vision_cfg", {})
        if (tag == "openai" and not name.endswith("-quickgelu") and vision.get("width") == conv.shape[0]
                and vision.get("layers") == blocks and vision.get("patch_size") == conv.shape[-1]):
            return f" (this tower looks like {name}: pass that model name, model.name in the config)"
    return ""


# ----------------------------------------------------------------------------------------------------
# Loading


def _source(checkpoint: AuthorsCheckpoint, visual: nn.Module, stored_grid: int) -> dict:
    counts = checkpoint.counts()
    ignored = {p: n for p, n in counts.items() if p not in (STUDENT, CLIP)}
    grid = _grid_of(visual)
    return {
        "format": "authors-detectron2",
        "loaded": f"authors' MAFT checkpoint: vision tower from {STUDENT} (fine-tuned), text from {CLIP}",
        "ignored": ignored,
        "pos_embed": (f"stored {stored_grid}x{stored_grid}, used at {grid[0]}x{grid[1]}"
                      + ("" if (stored_grid, stored_grid) == grid else " (bicubic, align_corners=True, as the authors)")),
    }


_announced: set[str] = set()


def _announce_ignored(checkpoint: AuthorsCheckpoint) -> None:
    # One line per file and process: eval loads CLIP from the file and then applies its tower again.
    if checkpoint.path in _announced:
        return
    _announced.add(checkpoint.path)
    counts = checkpoint.counts()
    generator = sum(counts.get(p, 0) for p in GENERATOR)
    others = sorted(p for p in counts if p not in (STUDENT, CLIP) + GENERATOR)
    log.warning("%s: authors' MAFT checkpoint; ignoring its proposal generator (%d tensors under %s)%s",
                Path(checkpoint.path).name, generator, " / ".join(GENERATOR),
                f"; also unused: {', '.join(others)}" if others else "")


def load_into_clip(model: nn.Module, checkpoint: AuthorsCheckpoint) -> nn.Module:
    """Fill an open_clip model built with QuickGELU (and already resized to its input size) with the text
    tower of ``clip_adapter.clip_model.`` and the fine-tuned vision tower of ``IPCLIP.`` (positional
    embedding resized to the tower's grid the authors' way). ``model.maft_source`` says what was
    loaded. Called by :func:`maft.clip.load_clip`, which builds the model."""
    vision, text = checkpoint.vision(), checkpoint.text()  # both checked before anything is copied
    name = getattr(model, "maft_source", {}).get("name", type(model).__name__)
    where = f"{checkpoint.path} ({STUDENT})"
    state = {f"visual.{k}": v for k, v in _tower_state(vision, model.visual, where).items()}
    state.update(text)
    if isinstance(model, CustomTextCLIP):
        state = convert_to_custom_text_state_dict(state)
    own = model.state_dict()
    text_problems = sorted(k for k in set(own) ^ set(state) if not k.startswith("visual."))
    text_problems += [k for k in own if k in state and not k.startswith("visual.") and own[k].shape != state[k].shape]
    if text_problems:
        raise ValueError(f"{checkpoint.path}: the text tower under {CLIP} does not fit open_clip {name} "
                         f"(first keys: {', '.join(text_problems[:4])})" + _name_hint(vision))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    _announce_ignored(checkpoint)
    stored = _square_grid(vision[_pos_key(model.visual)].shape[0], checkpoint.path)
    model.maft_source = {"name": name, "pretrained": checkpoint.path,
                         "checkpoint": str(Path(checkpoint.path).resolve()),
                         **_source(checkpoint, model.visual, stored)}
    return model


def _uses_quick_gelu(visual: nn.Module) -> bool:
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:  # ModifiedResNet: ReLU throughout, nothing to check
        return True
    return isinstance(blocks[0].mlp.gelu, QuickGELU)


def apply_finetuned(model: nn.Module, checkpoint: AuthorsCheckpoint, check_base: bool = True) -> nn.Module:
    """Load the fine-tuned tower (``IPCLIP.``) into ``model`` (a CLIP model, an IPCLIP or a tower).

    The positional embedding is resized the authors' way to the tower's current grid. With
    ``check_base``, the tower's frozen weights (those equal in the teacher and the fine-tuned tower)
    must already equal the checkpoint's: only then is the CLIP around it (its text tower) the one the
    tower was fine-tuned with. The tower must use QuickGELU, as OpenAI's CLIP does. Returns ``model``.
    """
    visual = getattr(model, "visual", None)
    visual = visual if isinstance(visual, nn.Module) else model
    where = checkpoint.path
    if not _uses_quick_gelu(visual):
        raise ValueError(f"{where}: the authors' towers use QuickGELU (OpenAI CLIP), but this tower uses "
                         f"{type(visual.transformer.resblocks[0].mlp.gelu).__name__}; build CLIP with "
                         f"pretrained='openai' or pretrained='{where}' (model.pretrained in the config)")
    state = _tower_state(checkpoint.vision(), visual, f"{where} ({STUDENT})")
    if check_base:
        _check_base(visual, state, checkpoint)
    with torch.no_grad():
        own = visual.state_dict()
        for key, value in state.items():
            own[key].copy_(value)
    _announce_ignored(checkpoint)
    return model


def _check_base(visual: nn.Module, state: dict, checkpoint: AuthorsCheckpoint) -> None:
    prefix, reference = checkpoint.reference()
    if not reference:
        log.warning("%s: no %s or %svisual. tower to check the base CLIP against; loading the tower unchecked",
                    checkpoint.path, TEACHER, CLIP)
        return
    own = visual.state_dict()
    pos = _pos_key(visual)
    student = checkpoint.vision()
    for key in sorted(state):
        if key == pos or key not in reference or not torch.equal(reference[key], student[key]):
            continue  # trained (or resized) in MAFT: free to differ
        value, expected = own[key].detach().float().cpu(), reference[key].float()
        tolerance = 1e-3 * expected.abs().max().item() + 1e-6  # fp16 storage vs fp32 weights
        if value.shape != expected.shape or (value - expected).abs().max().item() > tolerance:
            raise ValueError(
                f"{checkpoint.path}: this model's frozen vision weights differ from the CLIP the checkpoint "
                f"was fine-tuned from (first at {key}, compared with {prefix}{key}), so its text tower would "
                f"not fit the fine-tuned tower. Build CLIP with pretrained='{checkpoint.path}' (both towers from "
                f"the checkpoint) or with the weights it started from (pretrained='openai').")


def config_for_checkpoint(config, checkpoint):
    """``config`` with ``model.pretrained`` set to ``checkpoint`` when that is an authors' file.

    Their file holds the whole CLIP (text tower included), so eval/predict load both towers from it and
    need no separate OpenAI download; any other checkpoint leaves the config as it is.
    """
    if checkpoint is None or isinstance(checkpoint, Mapping) or not is_authors_checkpoint(checkpoint):
        return config
    config = copy.deepcopy(config)
    if config.model.pretrained != os.fspath(checkpoint):
        log.warning("%s is an authors' MAFT checkpoint: CLIP (both towers) is loaded from it instead of "
                    "model.pretrained=%r", checkpoint, config.model.pretrained)
    config.model["pretrained"] = os.fspath(checkpoint)
    return config
