"""The world's tiny CLIP: an open_clip model pretrained contrastively on captioned world scenes.

The architecture is the open_clip config ``maft/model_configs/maft-world-vit.json`` (a 6-block ViT
with patch 8 on 64x64 scenes, a 2-block text tower with open_clip's BPE tokenizer), so the model is
a plain ``open_clip.CLIP`` and every later step (IP-CLIP, fine-tuning, evaluation) runs the same code
as for OpenAI's ViT-B/16. Training uses open_clip's own ``ClipLoss`` on (scene, caption) pairs
streamed from the world's "pretrain" split; like web captions, these name every class in a scene,
the zero-shot-unseen ones included.

:func:`ensure_world_clip` returns the checkpoint, pretraining it on first use and caching it under
``maft.paths.cache_dir("world")``; the file name holds a hash of the world specification, the drawing
code, the model config and the pretraining settings, so a change to any of them never reuses a stale
checkpoint. :func:`zero_shot_accuracy` is the image-level probe: single-thing and single-stuff scenes
classified by their class name, seen and unseen classes reported apart.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import open_clip
import torch

from .. import paths
from ..clip import MODEL_CONFIG_DIR, clip_normalisation, load_clip, preprocess_images, tower_input_size
from ..progress import progress_bar
from ..text import text_classifier
from . import draw
from .dataset import WorldDataset
from .spec import load_world_spec

MODEL_NAME = "maft-world-vit"
PRETRAIN_DEFAULTS = {
    "seed": 0,
    "steps": 400,
    "batch_size": 128,
    "lr": 1.0e-3,
    "weight_decay": 0.1,
    "warmup": 50,
}


def _settings(**overrides) -> dict:
    unknown = sorted(set(overrides) - set(PRETRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown pretraining settings {unknown}; known: {sorted(PRETRAIN_DEFAULTS)}")
    settings = {**PRETRAIN_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("steps", "batch_size", "warmup"):
        if not isinstance(settings[key], int) or settings[key] < (0 if key == "warmup" else 1):
            raise ValueError(f"pretraining setting {key} must be a positive int, got {settings[key]!r}")
    return settings


def checkpoint_key(settings: dict) -> str:
    """Hash of everything the checkpoint depends on: world spec and code, model config, settings."""
    identity = {
        "world": load_world_spec().fingerprint,
        "generator": hashlib.sha256(Path(draw.__file__).read_bytes()).hexdigest(),  # the drawing code
        "model": (MODEL_CONFIG_DIR / f"{MODEL_NAME}.json").read_text(),
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def default_checkpoint_path(**settings) -> Path:
    settings = _settings(**settings)
    return paths.cache_dir("world") / f"{MODEL_NAME}-{checkpoint_key(settings)}.pt"


def captioned_batch(dataset: WorldDataset, start: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """Scenes ``start .. start+count-1`` of ``dataset`` as (uint8 [B,3,H,W], captions)."""
    samples = [dataset[i] for i in range(start, start + count)]
    return torch.stack([s["image"] for s in samples]), [s["caption"] for s in samples]


def contrastive_loss(model, tokenizer, images: torch.Tensor, captions: list[str], loss_fn=None) -> torch.Tensor:
    """open_clip's symmetric InfoNCE (``ClipLoss``) of a batch of uint8 scenes and their captions."""
    pixels = preprocess_images(images, tower_input_size(model.visual), *clip_normalisation(model.visual))
    image_features = model.encode_image(pixels, normalize=True)
    text_features = model.encode_text(tokenizer(captions), normalize=True)
    return (loss_fn or open_clip.ClipLoss())(image_features, text_features, model.logit_scale.exp())


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; gains, biases, embeddings' scale and logit scale are exempt
    (the convention of open_clip's training script)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.ndim < 2 or "logit_scale" in name or "ln" in name or "bn" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, settings: dict) -> float:
    """Linear warm-up, then cosine decay to zero."""
    if step < settings["warmup"]:
        return settings["lr"] * (step + 1) / settings["warmup"]
    progress = (step - settings["warmup"]) / max(1, settings["steps"] - settings["warmup"])
    return 0.5 * settings["lr"] * (1 + math.cos(math.pi * progress))


def pretrain_world_clip(out: str | os.PathLike | None = None, progress: bool = True, **settings) -> dict:
    """Pretrain the world CLIP from random init; writes the state dict to ``out`` (default: the
    cache path of these settings) and ``<out>.json`` with the loss curve and timings.

    Settings (see :data:`PRETRAIN_DEFAULTS`): seed, steps, batch_size, lr, weight_decay, warmup.
    Step ``k`` sees pretrain scenes ``k*B .. k*B+B-1``, so a run is a pure function of its settings
    (up to floating-point summation order, which depends on the number of CPU threads).
    Returns the log dict (``path``, ``losses``, ``seconds``, ``seconds_per_step``, ...).
    """
    settings = _settings(**settings)
    out = Path(out) if out is not None else default_checkpoint_path(**settings)
    paths.check_output_path(out, "world CLIP checkpoint (--out)")  # before the pretraining, not after
    paths.check_output_path(f"{out}.json", "world CLIP log (--out + .json)")
    torch.manual_seed(settings["seed"])
    model, _, tokenizer = load_clip(MODEL_NAME)
    model.train()
    dataset = WorldDataset("pretrain")
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, settings["weight_decay"]), lr=settings["lr"],
                                  betas=(0.9, 0.98), eps=1e-6)
    losses, data_seconds = [], 0.0
    started, cpu_started = time.perf_counter(), time.process_time()
    batch = settings["batch_size"]
    bar = progress_bar(range(settings["steps"]), desc="pretrain world CLIP", disable=not progress)
    # Scenes of the next step are drawn in a thread while this step computes (torch releases the
    # GIL); the data depend only on the step, so this changes nothing but the time.
    pool = ThreadPoolExecutor(max_workers=1)
    upcoming = pool.submit(captioned_batch, dataset, 0, batch)
    for step in bar:
        tick = time.perf_counter()
        images, captions = upcoming.result()
        if step + 1 < settings["steps"]:
            upcoming = pool.submit(captioned_batch, dataset, (step + 1) * batch, batch)
        data_seconds += time.perf_counter() - tick  # time spent waiting for scenes
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, settings)
        loss = contrastive_loss(model, tokenizer, images, captions, loss_fn)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"world CLIP pretraining: loss is {loss.item()} at step {step}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # open_clip's training script bounds the temperature the same way
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(round(loss.item(), 5))
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)  # the interval decides redraws
    pool.shutdown()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # CPU time of all threads: comparable on a busy machine
    model.eval()
    state = model.state_dict()
    paths.atomic_write(out, lambda partial: torch.save(state, partial))  # a reader never sees half of it
    log = {
        "path": str(out),
        "model": MODEL_NAME,
        "settings": settings,
        "world": dataset.spec.fingerprint,
        "losses": losses,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / settings["steps"], 4),
        "data_seconds": round(data_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "logit_scale": round(model.logit_scale.exp().item(), 3),
    }
    Path(f"{out}.json").write_text(json.dumps(log, indent=1))
    return log


def ensure_world_clip(progress: bool = True, **settings) -> Path:
    """Path of the pretrained world CLIP for these settings, pretraining it first if not cached."""
    path = default_checkpoint_path(**settings)
    if not path.is_file():
        pretrain_world_clip(out=path, progress=progress, **settings)
    return path


@torch.no_grad()
def zero_shot_accuracy(checkpoint: str | os.PathLike, templates="vild", batch_size: int = 100,
                       max_scenes: int | None = None) -> dict:
    """Image-level zero-shot accuracy of a world CLIP: each "single" scene (one thing on 1-2 stuff
    bands) classified among the thing names, each "stuff_only" scene among the stuff names.
    Accuracy is averaged per class, then over seen and unseen classes apart."""
    model, _, tokenizer = load_clip(MODEL_NAME, pretrained=str(checkpoint))
    mean, std = clip_normalisation(model.visual)
    result = {"checkpoint": str(checkpoint), "templates": templates}
    for kind, split in (("things", "single"), ("stuff", "stuff_only")):
        dataset = WorldDataset(split, max_images=max_scenes)
        spec = dataset.spec
        class_ids = list(spec.thing_ids if kind == "things" else spec.stuff_ids)
        text = text_classifier(model, tokenizer, [spec.classes[c] for c in class_ids], templates=templates)
        correct = {c: 0 for c in class_ids}
        total = {c: 0 for c in class_ids}
        for start in range(0, len(dataset), batch_size):
            samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            images = preprocess_images(torch.stack([s["image"] for s in samples]), spec.image_size,
                                       mean, std)
            predicted = (model.encode_image(images) @ text.T).argmax(1)
            for sample, guess in zip(samples, predicted.tolist()):
                truth = _probe_class(spec, sample, kind)
                total[truth] += 1
                correct[truth] += int(class_ids[guess] == truth)
        per_class = {spec.classes[c]: correct[c] / total[c] for c in class_ids if total[c]}
        seen = [per_class[spec.classes[c]] for c in class_ids if c in spec.seen and total[c]]
        unseen = [per_class[spec.classes[c]] for c in class_ids if c in spec.unseen and total[c]]
        result[kind] = {
            "scenes": len(dataset),
            "chance": 1 / len(class_ids),
            "accuracy_seen": sum(seen) / len(seen),
            "accuracy_unseen": sum(unseen) / len(unseen),
            "per_class": per_class,
        }
    return result


def _probe_class(spec, sample: dict, kind: str) -> int:
    """The class a probe scene is about: its thing, or its single stuff region."""
    present = set(sample["label"].unique().tolist())
    ids = spec.thing_ids if kind == "things" else spec.stuff_ids
    found = [c for c in ids if c in present]
    if len(found) != 1:
        raise ValueError(f"probe scene {sample['id']} has {len(found)} {kind} classes, expected one")
    return found[0]
