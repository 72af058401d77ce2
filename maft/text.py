"""Text classifiers (paper eq. 1): class names x prompt templates -> one text embedding per class.

``text_classifier`` encodes every (template, class) prompt with the CLIP text tower, L2-normalises each
embedding, averages over templates and normalises again (the ViLD / ZSSeg / MAFT recipe); results are
cached on disk keyed by everything they depend on. ``class_probabilities`` is eq. 1:
``softmax_c(logit_scale * cos(embedding, text_c))``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data.class_specs import check_class_names
from .templates import TEMPLATES
from .utils import paths
from .utils.progress import progress_bar

# Bump when the way text classifiers are computed changes, so old cache entries are never reused.
_TEXT_CACHE_VERSION = 1


def readable_name(class_name: str) -> str:
    """An optional prompt name: '_' and '-' become spaces ('wall-concrete' -> 'wall concrete').

    Not applied by default (names are used exactly as given); pass ``prompt_name=readable_name`` to
    :func:`text_classifier` to use it. It does not split glued words such as 'pottedplant'; give a
    dict for those.
    """
    return " ".join(class_name.replace("_", " ").replace("-", " ").split())


def _resolve_templates(templates) -> list[str]:
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise ValueError(f"unknown template set {templates!r}; choose one of {sorted(TEMPLATES)} or give a list")
        return list(TEMPLATES[templates])
    resolved = list(templates)
    if not resolved:
        raise ValueError("templates is empty")
    for template in resolved:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"each template needs exactly one '{{}}' for the class name, got {template!r}")
    return resolved


def _prompt_names(names: list[str], prompt_name) -> list[str]:
    if prompt_name is None:
        return names
    if callable(prompt_name):
        return [prompt_name(name) for name in names]
    if isinstance(prompt_name, Mapping):
        return [prompt_name.get(name, name) for name in names]
    raise ValueError(f"prompt_name must be None, a callable or a dict, got {type(prompt_name).__name__}")


def text_weights_fingerprint(model: nn.Module) -> str:
    """A hash of every weight outside the vision tower (the text tower and logit scale).

    Part of the text-classifier cache key, so a model whose text weights changed (another checkpoint,
    a fine-tune) never reuses stale embeddings, while fine-tuning only the vision tower (as MAFT
    does) keeps hitting the cache.
    """
    digest = hashlib.sha1()
    for key, value in sorted(model.state_dict().items()):
        if key.startswith("visual."):
            continue
        flat = value.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{key}:{flat.dtype}:{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def _text_cache_key(model, tokenizer, prompt_names: list[str], templates: list[str]) -> tuple[str, dict]:
    source = getattr(model, "maft_source", {"name": type(model).__name__, "pretrained": None})
    identity = {
        "version": _TEXT_CACHE_VERSION,
        "model": source.get("name"),
        "pretrained": source.get("pretrained"),
        "text_weights": text_weights_fingerprint(model),
        "tokenizer": f"{type(tokenizer).__name__}:{getattr(tokenizer, 'context_length', None)}",
        "templates": templates,
        "class_names": prompt_names,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:32]
    return key, identity


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()  # not inference_mode: the result is later multiplied with tensors that need grad
def _encode_prompts(model, tokenizer, prompts: list[str], device, batch_size: int) -> torch.Tensor:
    was_training = model.training
    model.eval()
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for start in progress_bar(starts, desc="text classifier", unit="batch", disable=len(starts) <= 1, leave=False):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(model.encode_text(tokens).float())
    model.train(was_training)
    return torch.cat(chunks)


def _read_text_cache(path: Path) -> dict | None:
    """A cache entry, or None when there is none or it cannot be read (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a damaged entry is only a miss, never a wrong answer
        logging.getLogger(__name__).warning("ignoring unreadable text-classifier cache %s: %s", path, error)
        return None


def text_classifier(
    model: nn.Module,
    tokenizer: Callable,
    class_names: Sequence[str],
    templates: str | Sequence[str] = "vild",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    prompt_name: Callable[[str], str] | Mapping[str, str] | None = None,
) -> torch.Tensor:
    """Text embedding per class: ``[C, D]`` float32, rows L2-normalised.

    For each class, every template is filled with the class name and encoded by the CLIP text tower;
    each template's embedding is L2-normalised, the embeddings are averaged over templates and the
    mean is normalised again (the ViLD/ZSSeg/MAFT recipe).

    Args:
        templates: "vild" (14, MAFT's choice), "imagenet" (80), "single", or a list of format strings.
        cache: reuse/store the result on disk under ``cache_dir`` (default
            ``maft.utils.paths.cache_dir("text")``), keyed by model name, pretrained weights, a hash of the
            text weights, tokenizer, templates and prompt names.
        device: where the result goes (default: the model's device); encoding runs on the model's
            device.
        prompt_name: optional mapping from class name to the text put into the templates (a dict, or a
            callable such as :func:`readable_name`); by default names are used exactly as given.
    """
    names = check_class_names(class_names)
    template_list = _resolve_templates(templates)
    prompt_names = _prompt_names(names, prompt_name)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    model_device = _model_device(model)
    device = torch.device(device) if device is not None else model_device

    cache_file = None
    if cache:
        key, identity = _text_cache_key(model, tokenizer, prompt_names, template_list)
        folder = Path(cache_dir) if cache_dir is not None else paths.cache_dir("text")
        cache_file = folder / f"{key}.pt"
        stored = _read_text_cache(cache_file)
        if stored is not None and stored.get("identity") == identity:
            return stored["embeddings"].to(device)

    prompts = [template.format(name) for name in prompt_names for template in template_list]
    embeddings = _encode_prompts(model, tokenizer, prompts, model_device, batch_size)
    per_template = F.normalize(embeddings.view(len(names), len(template_list), -1), dim=-1)
    classifier = F.normalize(per_template.mean(dim=1), dim=-1)

    if cache_file is not None:
        entry = {"identity": identity, "embeddings": classifier.cpu()}
        paths.atomic_write(cache_file, lambda partial: torch.save(entry, partial))
    return classifier.to(device)


def class_probabilities(embeddings: torch.Tensor, text: torch.Tensor, logit_scale: float = 100.0) -> torch.Tensor:
    """Paper eq. 1: ``softmax_c(logit_scale * cos(embeddings_n, text_c))`` -> ``[N, C]``.

    ``embeddings`` ``[N, D]`` need not be normalised (both sides are normalised here); N may be 0.
    Computed in float32; gradients flow to ``embeddings`` (and ``text`` if it needs them).
    """
    if embeddings.ndim != 2 or text.ndim != 2:
        raise ValueError(
            f"embeddings must be [N, D] and text [C, D], got {tuple(embeddings.shape)} and {tuple(text.shape)}"
        )
    if embeddings.shape[1] != text.shape[1]:
        raise ValueError(
            f"embedding width {embeddings.shape[1]} differs from text width {text.shape[1]} "
            "(text classifier built with another CLIP?)"
        )
    if text.shape[0] == 0:
        raise ValueError("text has no classes (C = 0)")
    # float32 even under autocast: logits of scale 100 lose ~0.5 to bfloat16 rounding.
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        image = F.normalize(embeddings.float(), dim=-1)
        classes = F.normalize(text.float().to(image.device), dim=-1)
        return (logit_scale * image @ classes.T).softmax(dim=-1)
