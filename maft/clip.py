"""CLIP loading and CLIP input preprocessing.

Everything here is a thin layer over open_clip: models come from ``open_clip.create_model``, weights
are read by open_clip's own checkpoint loader, tokenizers from ``open_clip.get_tokenizer`` and the
positional-embedding resize is ``open_clip.model.resize_pos_embed``. What this module adds:

- weight resolution: a pretrained tag is taken from the local cache, or downloaded through open_clip
  and the Hugging Face hub; in offline mode (``MAFT_OFFLINE`` / ``HF_HUB_OFFLINE``) a missing file
  fails at once, naming the file and where to put it;
- ``set_image_size``: run a tower at a larger input than it was trained at (MAFT runs a 224-trained
  ViT-B/16 at 480x480, a 30x30 patch grid);
- ``preprocess_images``, ``tower_input_size``, ``clip_normalisation``: what a tower expects as input.

Text classifiers (eq. 1) live in :mod:`maft.text`.
"""
from __future__ import annotations

import contextlib
import difflib
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import huggingface_hub.constants as hub_constants
import open_clip
import torch
import torch.nn.functional as F
from huggingface_hub import try_to_load_from_cache
from open_clip.constants import HF_WEIGHTS_NAME, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import resize_pos_embed as open_clip_resize_pos_embed
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from . import authors_checkpoints
from .downloads.verified import download_clip_weights, offline_mode
from .readout import apply_class_token_readout, tower_assumptions
from .utils.paths import PACKAGE_DIR

__all__ = [
    "MODEL_CONFIG_DIR",
    "load_clip",
    "resolve_pretrained",
    "set_image_size",
    "resize_pos_embed",
    "preprocess_images",
    "tower_input_size",
    "tower_geometry",
    "clip_normalisation",
    "hub_offline",
]

MODEL_CONFIG_DIR = PACKAGE_DIR / "model_configs"
_configs_registered = False


def register_model_configs() -> None:
    """Make maft's own model configs (``maft/model_configs/*.json``) known to open_clip, once."""
    global _configs_registered
    if not _configs_registered:
        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _configs_registered = True


register_model_configs()  # so open_clip.create_model("maft-test-vit") works once maft.clip is imported


# ----------------------------------------------------------------------------------------------------
# Loading


def _canonical_model_name(name: str) -> str:
    """open_clip spells 'ViT-B/16' as 'ViT-B-16'; accept both. Unknown names list close matches."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if name.startswith(("hf-hub:", "local-dir:")):
        return name
    canonical = name.replace("/", "-")
    known = open_clip.list_models()
    if canonical not in known:
        close = difflib.get_close_matches(canonical, known, n=6, cutoff=0.5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ValueError(
            f"unknown CLIP model name {name!r}.{hint} All names: open_clip.list_models() "
            f"(maft's tiny test models: maft-test-vit, maft-test-rn)."
        )
    return canonical


def cached_tag_file(pretrained_cfg: dict, cache_dir: str | None) -> tuple[str | None, list[str]]:
    """Where open_clip would have put the weights of a tag, if they are already there.

    Returns (path or None, places looked at). Mirrors ``open_clip.pretrained.download_pretrained``:
    the Hugging Face Hub copy is preferred (a .safetensors twin first), else the URL's file in
    ``~/.cache/clip`` (or ``cache_dir``). Only the local cache is read.
    """
    looked = []
    if pretrained_cfg.get("file"):
        path = pretrained_cfg["file"]
        return (path if os.path.isfile(path) else None), [path]
    hf_hub = pretrained_cfg.get("hf_hub", "")
    if hf_hub:
        hub_cache = cache_dir or hub_constants.HF_HUB_CACHE
        repo_id, filename = os.path.split(hf_hub)
        filename = filename or HF_WEIGHTS_NAME
        candidates = list(open_clip.pretrained._get_safe_alternatives(filename)) + [filename]
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            looked.append(f"{repo_id}/{candidate} in the Hugging Face cache {hub_cache}")
            if isinstance(found, str) and os.path.isfile(found):
                return found, looked
    url = pretrained_cfg.get("url", "")
    if url:
        path = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        looked.append(path)
        if os.path.isfile(path):
            return path, looked
    return None, looked


@contextlib.contextmanager
def hub_offline():
    """Keep the Hugging Face libraries off the network (tokenizers, HF text towers) inside the block.

    Their own offline switch is read once at import (``HF_HUB_OFFLINE``), so flip the flag they
    consult at call time and restore it afterwards.
    """
    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _missing_weights_message(name: str, pretrained: str, tag_cfg: dict, looked: list[str], why: str) -> str:
    """Which file is missing, why it was not downloaded, and the two ways to provide it."""
    sources = []
    if tag_cfg.get("hf_hub"):
        repo_id, filename = os.path.split(tag_cfg["hf_hub"])
        sources.append(f"https://huggingface.co/{repo_id}/resolve/main/{filename or HF_WEIGHTS_NAME}")
    if tag_cfg.get("url"):
        sources.append(f"{tag_cfg['url']} (open_clip also finds this one at {looked[-1]})")
    # OpenAI weights need QuickGELU, which open_clip only switches on for the tag itself.
    quick_gelu = (
        f" and name='{name}-quickgelu' (these weights were trained with QuickGELU)"
        if tag_cfg.get("quick_gelu") and not name.endswith("-quickgelu")
        else ""
    )
    return (
        f"weights for CLIP {name} / {pretrained!r} are not in the local cache, and {why}. Looked for: "
        f"{'; '.join(looked)}. To provide them, either run `maft download clip {name} {pretrained}` with "
        f"network access and the offline switch unset (it fills the cache), or fetch "
        f"{' or '.join(sources)} on a machine with network access, then pass "
        f"pretrained='/path/to/that/file'{quick_gelu} (model.pretrained / model.name in the "
        f"experiment config)."
    )


def resolve_pretrained(name: str, pretrained: str | os.PathLike | None, cache_dir: str | None = None):
    """Turn ``pretrained`` (None, an open_clip tag or a file path) into a local checkpoint file.

    Returns ``(checkpoint_path or None, pretrained_cfg)`` where ``pretrained_cfg`` is open_clip's
    config of the tag (preprocessing, quick_gelu) or ``{}``. A tag whose weights are not in the local
    cache is downloaded by open_clip (the Hugging Face hub's download, cache and progress bar). In
    offline mode (``MAFT_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``) it raises FileNotFoundError at once
    instead, naming the file and how to provide it; a failed download raises the same error.
    """
    if pretrained is None:
        return None, {}
    if isinstance(pretrained, os.PathLike):
        pretrained = os.fspath(pretrained)
    if not isinstance(pretrained, str) or not pretrained:
        raise ValueError(f"pretrained must be None, an open_clip tag or a file path, got {pretrained!r}")
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        path, looked = cached_tag_file(tag_cfg, cache_dir)
        if path is None and offline_mode():
            raise FileNotFoundError(_missing_weights_message(
                name, pretrained, tag_cfg, looked, "offline mode is on (MAFT_OFFLINE or HF_HUB_OFFLINE)"))
        if path is None:
            try:
                path = download_clip_weights(tag_cfg, cache_dir)
            except Exception as error:  # the hub and urllib raise many types; the message says what happened
                raise FileNotFoundError(_missing_weights_message(
                    name, pretrained, tag_cfg, looked, f"downloading them failed: {error}")) from error
        return path, tag_cfg
    if os.path.isdir(pretrained):
        raise FileNotFoundError(
            f"pretrained={pretrained!r} is a folder; give the checkpoint file inside it, or load an "
            f"open_clip model folder as name='local-dir:{pretrained}'"
        )
    if not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise FileNotFoundError(
            f"pretrained={pretrained!r}: no such checkpoint file, and not an open_clip tag of {name} "
            f"(its tags: {', '.join(tags) if tags else 'none'})"
        )
    return pretrained, {}


def load_clip(
    name: str,
    pretrained: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    image_size: int | tuple[int, int] | None = None,
    cache_dir: str | None = None,
):
    """Load an open_clip model by name; returns ``(model, preprocess, tokenizer)``.

    Args:
        name: an open_clip model name ("ViT-B-16", "ViT-B/16" is accepted too), one of maft's configs
            ("maft-test-vit", "maft-test-rn") or "local-dir:<folder>".
        pretrained: None (random init), an open_clip tag ("openai"), or a checkpoint file: open_clip's,
            or the authors' released detectron2 ``MAFT_Vitb.pt`` / ``MAFT_Vitl.pt`` (text tower and
            fine-tuned vision tower, see :mod:`maft.authors_checkpoints`). A tag whose weights are not cached is
            downloaded through open_clip / the Hugging Face hub, unless offline mode is on
            (MAFT_OFFLINE=1 or HF_HUB_OFFLINE=1): then it fails at once.
        device: where the model goes.
        image_size: run the vision tower at this input size (positional embedding resized with
            open_clip's own bicubic resize, see :func:`set_image_size`).
        cache_dir: the open_clip/Hugging Face cache to look in (default: their defaults).

    The model is returned in eval mode. ``preprocess`` is open_clip's PIL transform for the final
    image size; ``model.maft_source`` records name and weights (used by the text-classifier cache).
    """
    register_model_configs()
    name = _canonical_model_name(name)
    if name.startswith("hf-hub:"):
        raise ValueError(
            f"{name!r}: Hugging Face Hub models are not loaded by maft because that downloads; "
            "download the folder once and use name='local-dir:<folder>'"
        )
    if name.startswith("local-dir:"):
        if pretrained is not None:
            raise ValueError(f"{name!r} brings its own weights; leave pretrained=None (got {pretrained!r})")
        checkpoint, tag_cfg = None, {}
    else:
        checkpoint, tag_cfg = resolve_pretrained(name, pretrained, cache_dir)
    # The authors' detectron2 checkpoints hold OpenAI towers under their own prefixes: build the model
    # with OpenAI's QuickGELU, random weights, and let maft.authors_checkpoints fill both towers.
    released = authors_checkpoints.read_checkpoint(checkpoint) if checkpoint is not None and not tag_cfg else None
    if released is not None:
        checkpoint, tag_cfg = None, {"quick_gelu": True}
    # A tag carries the preprocessing and activation its weights were trained with (OpenAI weights
    # need QuickGELU); open_clip applies these only when it resolves the tag itself, so pass them on.
    preprocess_overrides = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
    with hub_offline():
        model = open_clip.create_model(
            name,
            pretrained=checkpoint,
            device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess_overrides,
            pretrained_text=False,  # never fetch Hugging Face text-tower weights behind the user's back
        )
        tokenizer = open_clip.get_tokenizer(name)
    model.eval()
    # A stated assumption of the tower (maft/readout.py), part of the model's config: honoured by every
    # forward of every model built from this name.
    assumptions = tower_assumptions(name, MODEL_CONFIG_DIR) if not name.startswith("local-dir:") else {}
    if "class_token_reads_from" in assumptions:
        apply_class_token_readout(model.visual, assumptions["class_token_reads_from"])
    if image_size is not None:
        if hasattr(model.visual, "positional_embedding") and hasattr(model.visual, "patch_size"):
            # the pretraining-size embedding, so a crop-and-classify copy at that size gets it back
            # exactly (maft.crop_classifier) instead of a resize of a resize
            model.visual.maft_native = {"image_size": _size_pair(model.visual.image_size),
                                        "positional_embedding": model.visual.positional_embedding.detach().clone()}
        set_image_size(model.visual, image_size)
    preprocess = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    model.maft_source = {
        "name": name,
        "pretrained": None if pretrained is None else os.fspath(pretrained),
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
    }
    if released is not None:
        authors_checkpoints.load_into_clip(model, released)  # weights at the final grid, maft_source filled in
        model.to(device).eval()
    return model, preprocess, tokenizer


# ----------------------------------------------------------------------------------------------------
# Positional-embedding resizing


def _size_pair(size, argument: str = "image_size") -> tuple[int, int]:
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and s > 0 for s in pair):
        raise ValueError(f"{argument} must be a positive int or a pair of them, got {size!r}")
    return pair


def resize_pos_embed(
    pos_embed: torch.Tensor, grid_size: int | tuple[int, int], interpolation: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """Resize a ``[1 + g*g, C]`` positional embedding (class position first) to a new grid.

    This calls ``open_clip.model.resize_pos_embed`` itself (same interpolation, same antialias
    default), so a tower resized here equals one open_clip resizes when it loads a checkpoint into a
    model of another image size. The class position is kept as is. Returns a new tensor.
    """
    grid = _size_pair(grid_size, "grid_size")
    if pos_embed.ndim != 2:
        raise ValueError(f"pos_embed must be [1 + grid*grid, C], got shape {tuple(pos_embed.shape)}")
    state = {"visual.positional_embedding": pos_embed.detach().float()}
    open_clip_resize_pos_embed(
        state, SimpleNamespace(visual=SimpleNamespace(grid_size=grid)), interpolation=interpolation, antialias=antialias
    )
    return state["visual.positional_embedding"].to(pos_embed.dtype)


def _replace_parameter(owner: nn.Module, attr: str, value: torch.Tensor) -> None:
    old = getattr(owner, attr)
    setattr(owner, attr, nn.Parameter(value.to(old.device), requires_grad=old.requires_grad))


def set_image_size(visual: nn.Module, image_size: int | tuple[int, int]) -> nn.Module:
    """Make an open_clip vision tower run at ``image_size`` (in place; returns the tower).

    ViT: the patch-grid positional embedding is resized bicubically (class position kept), e.g.
    14x14 -> 30x30 for a 224-trained ViT-B/16 at 480; ``image_size``/``grid_size`` are updated so
    open_clip's ``encode_image`` works at that size. ModifiedResNet: the attention-pool positional
    embedding is resized the same way (grid = size / 32). timm towers use their ``set_input_size``.
    Resizing to the current size changes nothing.
    """
    height, width = _size_pair(image_size)
    if hasattr(visual, "positional_embedding") and hasattr(visual, "patch_size"):  # open_clip ViT
        patch_h, patch_w = _size_pair(visual.patch_size, "patch_size")
        if height % patch_h or width % patch_w:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {visual.patch_size}")
        grid = (height // patch_h, width // patch_w)
        if tuple(visual.grid_size) != grid:
            _replace_parameter(visual, "positional_embedding", resize_pos_embed(visual.positional_embedding, grid))
        visual.grid_size = grid
        visual.image_size = (height, width)
    elif hasattr(visual, "attnpool"):  # open_clip ModifiedResNet: stem /4, then three stride-2 stages
        if height != width or height % 32:
            raise ValueError(f"ModifiedResNet needs a square image_size divisible by 32, got {image_size}")
        pool = visual.attnpool
        grid = height // 32
        if pool.positional_embedding.shape[0] != grid * grid + 1:
            _replace_parameter(pool, "positional_embedding", resize_pos_embed(pool.positional_embedding, grid))
        visual.image_size = height
    elif hasattr(visual, "set_input_size"):  # timm towers resize themselves
        visual.set_input_size((height, width))
    else:
        raise ValueError(f"do not know how to resize the input of a {type(visual).__name__} tower")
    if isinstance(getattr(visual, "preprocess_cfg", None), dict):
        visual.preprocess_cfg["size"] = (height, width) if height != width else height
    return visual


# ----------------------------------------------------------------------------------------------------
# Images


def preprocess_images(
    images: Sequence[torch.Tensor] | torch.Tensor,
    size: int,
    mean: Sequence[float] = OPENAI_DATASET_MEAN,
    std: Sequence[float] = OPENAI_DATASET_STD,
) -> torch.Tensor:
    """uint8 RGB images -> CLIP input: whole image resized to ``size x size``, then normalised.

    ``images`` is a list of uint8 ``[3, H, W]`` tensors (sizes may differ) or a uint8 ``[B, 3, H, W]``
    tensor. The resize is bicubic with antialiasing (PyTorch's PIL-like kernel), clamped to the uint8
    range as PIL does but not rounded. Returns float32 ``[B, 3, size, size]`` on the images' device.
    No crop: the proposal masks cover the whole image, so the whole image must reach CLIP.
    """
    if not isinstance(size, int) or size <= 0:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean!r} std={std!r}")
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(
                f"images must be a [B, 3, H, W] tensor or a list of [3, H, W] tensors, got shape "
                f"{tuple(images.shape)} (wrap a single image in a list)"
            )
        batch = [images]
    else:
        if len(images) == 0:
            raise ValueError("images is empty")
        batch = []
        for index, image in enumerate(images):
            if not isinstance(image, torch.Tensor) or image.ndim != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise ValueError(f"images[{index}] must be a uint8 [3, H, W] tensor, got {shape}")
            batch.append(image[None])
    resized = []
    for index, chunk in enumerate(batch):
        if chunk.dtype != torch.uint8:
            raise ValueError(
                f"images must be uint8 RGB (0..255), got {chunk.dtype} at {index}; CLIP normalisation "
                "is applied here, so pass raw images"
            )
        if chunk.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels, got {chunk.shape[1]} at {index}")
        if chunk.shape[2] == 0 or chunk.shape[3] == 0:
            where = (f"images has shape {tuple(chunk.shape)}" if isinstance(images, torch.Tensor)
                     else f"images[{index}] has shape {tuple(chunk.shape[1:])}")
            raise ValueError(f"{where}: an image of {chunk.shape[2]}x{chunk.shape[3]} pixels cannot be resized "
                             "for CLIP")
        out = F.interpolate(chunk.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        resized.append(out.clamp_(0, 255))
    pixels = torch.cat(resized) / 255.0
    mean_t = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def tower_input_size(visual: nn.Module) -> int:
    """The square input size a tower runs at (open_clip stores an int or an (h, w) pair)."""
    size = getattr(visual, "image_size", None)
    if size is None:
        raise ValueError(f"visual: {type(visual).__name__} has no image_size; pass the input size explicitly")
    if isinstance(size, (tuple, list)):
        if size[0] != size[1]:
            raise ValueError(f"visual: non-square tower input size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def clip_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image mean/std of a tower, or of the tower inside a classifier or CLIP model (open_clip stores
    them on the tower); OpenAI's values when the tower records none."""
    visual = model if hasattr(model, "preprocess_cfg") else getattr(model, "visual", None)
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = cfg.get("mean") or getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN
    std = cfg.get("std") or getattr(visual, "image_std", None) or OPENAI_DATASET_STD
    return tuple(mean), tuple(std)


def tower_geometry(name: str) -> tuple[int | None, int] | None:
    """(depth, patch size) of a model's vision tower from its open_clip config, without building it:
    depth None for a ModifiedResNet (patch 32, its total stride). None when open_clip has no config for
    ``name`` (a hub model, a typo): that is reported when the model is built."""
    register_model_configs()
    cfg = open_clip.get_model_config(str(name).replace("/", "-"))
    vision = (cfg or {}).get("vision_cfg")
    if not vision:
        return None
    layers = vision.get("layers")
    if isinstance(layers, (list, tuple)):
        return None, 32
    patch = vision.get("patch_size", 16)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    return int(layers), int(patch)
