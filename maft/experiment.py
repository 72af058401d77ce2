"""Wiring shared by train, eval, predict and the world story: one experiment config -> the parts.

A config is the YAML mapping described in ``maft/configs/*.yaml``; every builder here reads only its own
section so that the same file drives ``maft train``, ``maft eval`` and ``maft predict``.
"""
from __future__ import annotations

import copy
from typing import Any

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "model": {"name": "ViT-B-16", "pretrained": "openai", "image_size": 480, "start_layer": None},
    "data": {"dataset": "voc20", "root": None, "train_split": "train", "eval_split": "val", "max_images": None},
    "proposals": {"kind": "gt", "settings": {}},
    "text": {"templates": "vild"},
}


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` with every missing section/key taken from :data:`DEFAULTS`."""
    merged = copy.deepcopy(config)
    for section, values in DEFAULTS.items():
        if isinstance(values, dict):
            given = merged.get(section) or {}
            if not isinstance(given, dict):
                raise ValueError(f"config section {section!r} must be a mapping, got {given!r}")
            merged[section] = {**copy.deepcopy(values), **given}
        else:
            merged.setdefault(section, values)
    return merged


def build_clip(config: dict[str, Any], device: str = "cpu"):
    """(model, preprocess, tokenizer) for ``config['model']``, tower resized to ``image_size``.

    Random initialisation (``pretrained: null``) is seeded by ``config['seed']`` (the global RNG is left
    untouched), so training, evaluation and every notebook rebuild the same random tower.
    """
    import torch

    from .clip import load_clip

    config = with_defaults(config)
    model_cfg = config["model"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(config["seed"]))
        return load_clip(model_cfg["name"], pretrained=resolve_pretrained(model_cfg), device=device,
                         image_size=model_cfg["image_size"])


def build_dataset_split(config: dict[str, Any], split_key: str, mode: str):
    """The dataset for ``data[split_key]`` (``train_split`` or ``eval_split``) in ``mode``."""
    from .datasets import build_dataset

    data = with_defaults(config)["data"]
    return build_dataset(data["dataset"], data[split_key], root=data["root"], mode=mode,
                         max_images=data["max_images"])


def build_generator(config: dict[str, Any], **extra):
    """The proposal generator of ``config['proposals']`` (``extra`` overrides its settings)."""
    from .proposals import build_proposal_generator

    config = with_defaults(config)
    proposals = config["proposals"]
    settings = {**(proposals.get("settings") or {}), **extra}
    if proposals["kind"] == "gt":
        settings.setdefault("seed", config["seed"])  # GT corruptions follow the experiment's seed
    return build_proposal_generator(proposals["kind"], **settings)


def build_text_classifier(config: dict[str, Any], model, tokenizer, class_names, device: str = "cpu"):
    """Text embeddings [C, D] for ``class_names`` with the config's prompt templates."""
    from .clip import text_classifier

    templates = with_defaults(config)["text"]["templates"]
    return text_classifier(model, tokenizer, class_names, templates=templates, device=device)


def load(name_or_path, overrides=()) -> dict[str, Any]:
    """An experiment config (shipped name or YAML path) with overrides applied and defaults filled."""
    from .config import load_config

    return with_defaults(load_config(name_or_path, overrides))


def resolve_pretrained(model_cfg: dict[str, Any]):
    """``pretrained`` as load_clip takes it; the tag ``world`` is the world CLIP, built on first use."""
    if model_cfg["pretrained"] == "world":
        from .world_clip import MODEL_NAME, ensure_world_clip

        if model_cfg["name"] != MODEL_NAME:
            raise ValueError(f"pretrained 'world' exists only for model {MODEL_NAME!r}, not {model_cfg['name']!r}")
        return str(ensure_world_clip())
    return model_cfg["pretrained"]


def describe(config: dict[str, Any]) -> str:
    """A few lines saying what the experiment runs (for notebooks and logs)."""
    config = with_defaults(config)
    model, data, proposals = config["model"], config["data"], config["proposals"]
    lines = [
        f"model:      {model['name']} (weights: {model['pretrained'] or 'random init'}) at {model['image_size']} px, "
        f"IP-CLIP start layer {model['start_layer'] if model['start_layer'] is not None else 'default'}",
        f"data:       {data['dataset']} (train: {data['train_split']}, evaluation: {data['eval_split']})",
        f"proposals:  {proposals['kind']} {proposals.get('settings') or ''}".rstrip(),
        f"text:       {config['text']['templates']} templates",
    ]
    if "train" in config:
        train = config["train"]
        lines.append(f"fine-tune:  {train.get('iterations')} iterations x batch {train.get('batch_size')}, "
                     f"lr {train.get('lr')}, trainable {train.get('trainable')}, "
                     f"loss {train.get('loss')} + {train.get('distill_weight')} x self-distillation")
    return "\n".join(lines)


def environment_summary(device: str = "cpu") -> dict[str, Any]:
    """Versions and hardware that decide whether a run reproduces."""
    import platform

    import open_clip
    import torch

    summary = {"python": platform.python_version(), "torch": torch.__version__,
               "open_clip": open_clip.__version__, "device": device, "cpu_threads": torch.get_num_threads(),
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        summary["gpu"] = torch.cuda.get_device_name(0)
    return summary
