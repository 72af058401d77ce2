"""Fine-tuning checkpoints: what a run trained, the config it ran with, and all that resume needs.

A checkpoint (``format: maft-finetune-v1``) holds only the trained parameters of the vision tower, by
name, plus a fingerprint of the frozen weights they sit on, so loading onto another base model (other
pretrained weights, a random tower of another seed) is caught instead of silently mixing weights. It also
holds the config, the step, the optimizer / scheduler / grad-scaler state and every RNG state, so a
resumed run continues bit-exactly on CPU.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import authors_checkpoints
from .config import ExperimentConfig, load
from .ipclip import IPCLIP, default_start_layer
from .trainable import vision_tower
from .utils.paths import atomic_write

CHECKPOINT_FORMAT = "maft-finetune-v1"


def rng_state() -> dict:
    numpy_state = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _fingerprint(visual: nn.Module, skip: set[str]) -> dict[str, list[float]]:
    """Per parameter not in ``skip``: its L2 norm and its projection on a fixed pseudo-random direction.

    Two different weight sets (other pretrained weights, a random tower with another seed) differ in
    the projection by about their norm; the same weights stored in fp16/bf16 by well under 1 % of it.
    """
    out = {}
    with torch.no_grad():
        for name, parameter in visual.named_parameters():
            if name not in skip:
                values = parameter.detach().double().flatten()
                index = torch.arange(values.numel(), dtype=torch.float64, device=values.device)
                direction = torch.cos(index * 2.399963)  # golden angle: no short period
                out[name] = [values.norm().item(), (values * direction).sum().item()]
    return out


def load_checkpoint(checkpoint: str | os.PathLike | dict, mmap: bool = False) -> dict:
    """A fine-tuning checkpoint as a dict (a dict is returned as is after a format check).

    ``mmap``: map the tensors instead of reading them, for a caller that needs only the config.
    """
    if isinstance(checkpoint, dict):
        state = checkpoint
        where = "checkpoint"
    else:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear message
            raise ValueError(f"checkpoint {str(path)!r} could not be read as a MAFT checkpoint: {error}") from None
        where = str(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where} is not a MAFT fine-tuning checkpoint (format {CHECKPOINT_FORMAT!r})")
    return state


def load_finetuned(model: nn.Module, checkpoint: str | os.PathLike | dict, config=None,
                   check_base: bool = True, other_start_layer: bool = False) -> nn.Module:
    """Apply a fine-tuning checkpoint's trained parameters to ``model`` (CLIP model, IPCLIP or tower).

    Clear ValueErrors when the checkpoint cannot belong to this model: ``config['model']`` (if given)
    names another model or weights; a parameter is missing or has another shape; (``check_base``)
    the frozen base weights differ from those it was trained on (e.g. other pretrained weights, or a
    random tower built with another seed: use :func:`maft.experiment.build_clip`); or ``model`` is an
    IP-CLIP whose start layer differs from the one it was trained with, unless ``other_start_layer``
    (the ``eval.allow_other_start_layer`` setting). Returns ``model``.
    The authors' released detectron2 checkpoints (``MAFT_Vitb.pt``) are accepted too (:mod:`maft.authors_checkpoints`).
    """
    released = authors_checkpoints.read_checkpoint(checkpoint)
    if released is not None:  # their tower names the architecture; shapes and the base CLIP are checked there
        return authors_checkpoints.apply_finetuned(model, released, check_base=check_base)
    state = load_checkpoint(checkpoint)
    source = state["model"]
    where = "checkpoint" if isinstance(checkpoint, dict) else str(checkpoint)
    if isinstance(model, IPCLIP) and not other_start_layer:
        _check_start_layer(model, source.get("start_layer"), where)
    if config is not None:
        wanted = load(config).model
        for key in ("name", "pretrained"):
            if wanted[key] != source.get(key):
                raise ValueError(f"{where} was trained from model {key} {source.get(key)!r}, but the config "
                                 f"asks for {wanted[key]!r}")
    visual = vision_tower(model)
    own = dict(visual.named_parameters())
    problems = []
    for name, value in state["params"].items():
        if name not in own:
            problems.append(f"{name} missing")
        elif tuple(own[name].shape) != tuple(value.shape):
            problems.append(f"{name} is {tuple(own[name].shape)}, checkpoint has {tuple(value.shape)}")
    if problems:
        raise ValueError(f"{where} (model {source.get('name')!r}, image_size {source.get('image_size')!r}) does "
                         f"not fit this {type(visual).__name__}: " + "; ".join(problems[:5])
                         + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""))
    if check_base and state.get("base_fingerprint"):
        _check_base(visual, state, where)
    with torch.no_grad():
        for name, value in state["params"].items():
            own[name].copy_(value)
    return model


def trained_start_layer(ipclip: IPCLIP, recorded: int | None) -> int | None:
    """The start layer a checkpoint was trained at, given its recorded ``model.start_layer`` (None is the
    default of the tower's depth; ResNet towers have none)."""
    if ipclip.kind != "vit" or recorded is not None:
        return recorded
    return default_start_layer(len(ipclip.visual.transformer.resblocks))


def _check_start_layer(ipclip: IPCLIP, recorded: int | None, where: str) -> None:
    # Layers before L ran the plain tower in training and layers from L on the masked attention: the
    # fine-tuned weights are tied to that split, so another L measures another model.
    trained = trained_start_layer(ipclip, recorded)
    if trained != ipclip.start_layer:
        raise ValueError(
            f"{where} was trained with IP-CLIP start layer {trained}, but this IP-CLIP starts at layer "
            f"{ipclip.start_layer}; set model.start_layer={trained} (maft predict: or omit --config to use the "
            "checkpoint's model settings), or set eval.allow_other_start_layer=true to evaluate it at another "
            "layer on purpose")


def _check_base(visual: nn.Module, state: dict, where: str) -> None:
    current = _fingerprint(visual, set(state["params"]))
    for name, (norm, projection) in state["base_fingerprint"].items():
        if name not in current:
            raise ValueError(f"{where}: the model has no parameter {name} that the base model had")
        now_norm, now_projection = current[name]
        tolerance = 1e-2 * norm + 1e-6
        if abs(now_norm - norm) > tolerance or abs(now_projection - projection) > tolerance:
            trained_size, size = state["model"].get("image_size"), _input_size(visual)
            if trained_size and size and int(trained_size) != size:
                # another input size resizes the positional embedding: the base differs for that reason
                raise ValueError(f"{where} was trained at image size {trained_size} px, but this model runs at "
                                 f"{size} px; set model.image_size={trained_size} (maft predict: or omit --config "
                                 "to use the checkpoint's model settings)")
            raise ValueError(
                f"{where}: the frozen base weights differ from those the checkpoint was trained on (first at "
                f"{name}); it was trained from {state['model'].get('name')!r} with pretrained="
                f"{state['model'].get('pretrained')!r} (random towers must be built with the same seed, "
                "maft.experiment.build_clip)")


def _input_size(visual: nn.Module) -> int | None:
    size = getattr(visual, "image_size", None)  # open_clip: an int or an (h, w) pair
    return int(size[0] if isinstance(size, (tuple, list)) else size) if size is not None else None


def save_checkpoint(path: Path, visual: nn.Module, trained: list[str], config: ExperimentConfig, step: int,
                    optimizer, scheduler, scaler, out_dir: Path) -> Path:
    """Write what a run trained (only those parameters), its config (in plain form: a checkpoint loads
    without maft's classes) and everything resume needs."""
    own = dict(visual.named_parameters())
    plain = config.to_dict()
    state = {
        "format": CHECKPOINT_FORMAT,
        "model": plain["model"],
        "config": plain,
        "step": step,
        "trainable": list(config.train.trainable),
        "params": {name: own[name].detach().float().cpu().clone() for name in trained},
        # the frozen weights these parameters sit on, so loading onto another base is caught
        "base_fingerprint": _fingerprint(visual, set(trained)),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "out_dir": str(out_dir),
    }
    return atomic_write(path, lambda partial: torch.save(state, partial))


# --------------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------------
RESUME_MAY_DIFFER = {("train", "out_dir"), ("train", "log_every"), ("train", "checkpoint_every"),
                     ("train", "num_workers"), ("train", "device"), ("name",), ("eval",)}


def _config_differences(a: Any, b: Any, prefix: tuple = ()) -> list[tuple]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _config_differences(a.get(key), b.get(key), prefix + (key,))
        return out
    return [] if a == b else [prefix]


def check_resume_config(config: ExperimentConfig, saved: ExperimentConfig, checkpoint: str) -> None:
    """ValueError naming every setting in which a resumed run's config differs from its checkpoint's, except
    those that cannot change the result (:data:`RESUME_MAY_DIFFER`)."""
    differ = [path for path in _config_differences(config.to_dict(), saved.to_dict())
              if not any(path[:len(allowed)] == allowed for allowed in RESUME_MAY_DIFFER)]
    if differ:
        names = ", ".join(".".join(map(str, path)) for path in differ)
        raise ValueError(f"--resume {checkpoint}: the config differs from the checkpoint's in {names}; "
                         "resume with the checkpoint's config (omit --config) or start a new run")
