"""The world's tiny CLIP: an open_clip model pretrained contrastively on captioned world scenes.

The architecture is the open_clip config ``maft/model_configs/maft-world-vit12.json`` (a 12-block ViT
of width 64 with patch 8 on 64x64 scenes, a 2-block text tower with open_clip's BPE tokenizer; the
resolution regime is in ``maft/assets/world.yaml`` and ``maft/configs/world.yaml``), so the model is
a plain ``open_clip.CLIP`` and every later step (IP-CLIP, fine-tuning, evaluation) runs the same code
as for OpenAI's ViT-B/16. Training uses open_clip's own ``ClipLoss`` on (scene, caption) pairs
streamed from the world's "pretrain" split; like web captions, these name every class in a scene,
the zero-shot-unseen ones included.

:func:`ensure_world_clip` returns the checkpoint: the one kept in the repository
(``maft/assets/world_clip/``, rebuilt bit for bit by ``maft world pretrain --out
maft/assets/world_clip/maft-world-vit12.pt --force``) when its recorded identity matches the current
world, model config and settings, else one pretrained on first use and cached under
``maft.utils.paths.cache_dir("world")``. The identity (:func:`checkpoint_identity`) holds the world
specification's fingerprint, a hash of the first pretraining scenes and captions (a change to the
drawing code shows, moving that code between modules does not), the model config and the pretraining
settings. Weights are stored in float16 (the kept file must stay under 10 MB; the 49408-token
embedding of the text tower is most of it) and loaded into float32. :func:`zero_shot_accuracy` is the
image-level probe: single-thing and single-stuff scenes classified by their class name, seen and
unseen classes reported apart.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import open_clip
import torch

from ..clip import MODEL_CONFIG_DIR, clip_normalisation, load_clip, preprocess_images, tower_input_size
from ..readout import tower_assumptions
from ..text import text_classifier
from ..utils import paths
from ..utils.progress import progress_bar
from .dataset import WorldDataset
from .spec import load_world_spec

MODEL_NAME = "maft-world-vit12"
PRETRAIN_DEFAULTS = {
    "seed": 0,
    "steps": 1500,
    "batch_size": 128,
    "lr": 1.0e-3,
    "weight_decay": 0.1,
    "warmup": 100,
    "threads": 1,  # torch CPU threads: summation order, hence the bits, depend on it (1: also the
                   # fastest on a shared machine, where a second thread mostly waits for the first)
}
KEPT_DIR = paths.ASSETS_DIR / "world_clip"
FINGERPRINT_SCENES = 128  # pretraining scenes hashed into the identity


def _settings(**overrides) -> dict:
    unknown = sorted(set(overrides) - set(PRETRAIN_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown pretraining settings {unknown}; known: {sorted(PRETRAIN_DEFAULTS)}")
    settings = {**PRETRAIN_DEFAULTS, **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("steps", "batch_size", "warmup", "threads"):
        if not isinstance(settings[key], int) or settings[key] < (0 if key == "warmup" else 1):
            raise ValueError(f"pretraining setting {key} must be a positive int, got {settings[key]!r}")
    return settings


@lru_cache(maxsize=4)
def pretraining_data_fingerprint(count: int = FINGERPRINT_SCENES) -> str:
    """sha256 of the first ``count`` pretraining scenes (pixels) and captions: what the drawing code
    makes of the spec. A change of the drawing shows here; a move of the code to another module not."""
    dataset = WorldDataset("pretrain")
    digest = hashlib.sha256()
    for index in range(count):
        sample = dataset[index]
        digest.update(sample["image"].numpy().tobytes())
        digest.update(sample["caption"].encode())
    return digest.hexdigest()


def checkpoint_identity(settings: dict) -> dict:
    """Everything the checkpoint depends on: world spec, pretraining data, model config and tower
    assumptions, settings."""
    return {
        "world": load_world_spec().fingerprint,
        "data": pretraining_data_fingerprint(),
        "model": json.loads((MODEL_CONFIG_DIR / f"{MODEL_NAME}.json").read_text()),
        "tower": tower_assumptions(MODEL_NAME, MODEL_CONFIG_DIR),  # e.g. the class token's readout block
        "model_name": MODEL_NAME,
        "settings": settings,
    }


def checkpoint_key(settings: dict) -> str:
    """Hash of :func:`checkpoint_identity`."""
    return hashlib.sha256(json.dumps(checkpoint_identity(settings), sort_keys=True).encode()).hexdigest()[:12]


def default_checkpoint_path(**settings) -> Path:
    settings = _settings(**settings)
    return paths.cache_dir("world") / f"{MODEL_NAME}-{checkpoint_key(settings)}.pt"


def kept_checkpoint_path() -> Path:
    """The world CLIP kept in the repository (pretrained with :data:`PRETRAIN_DEFAULTS`)."""
    return KEPT_DIR / f"{MODEL_NAME}.pt"


def kept_checkpoint_matches(path: str | os.PathLike | None = None, settings: dict | None = None) -> bool:
    """Whether the kept file exists, is intact (sha256) and was pretrained for the current identity."""
    path = Path(path) if path is not None else kept_checkpoint_path()
    log_file = Path(f"{path}.json")
    if not (path.is_file() and log_file.is_file()):
        return False
    log = json.loads(log_file.read_text())
    return (log.get("key") == checkpoint_key(_settings(**(settings or {})))
            and log.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest())


def find_world_clip(**settings) -> Path:
    """The kept checkpoint when it matches these settings, else the cache path for them."""
    if kept_checkpoint_matches(settings=settings):
        return kept_checkpoint_path()
    return default_checkpoint_path(**settings)


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

    Settings (see :data:`PRETRAIN_DEFAULTS`): seed, steps, batch_size, lr, weight_decay, warmup,
    threads. Step ``k`` sees pretrain scenes ``k*B .. k*B+B-1``, and torch runs on ``threads`` CPU
    threads, so on one kind of CPU and torch build a run is a pure function of its settings, bit for
    bit (the file is float16; ``tests/test_world_clip_kept.py`` checks two short runs are identical).
    Returns the log dict (``path``, ``losses``, ``seconds``, ``seconds_per_step``, ...).
    """
    settings = _settings(**settings)
    out = Path(out) if out is not None else default_checkpoint_path(**settings)
    paths.check_output_path(out, "world CLIP checkpoint (--out)")  # before the pretraining, not after
    paths.check_output_path(f"{out}.json", "world CLIP log (--out + .json)")
    threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    try:
        return _pretrain(out, progress, settings)
    finally:
        torch.set_num_threads(threads)


def _pretrain(out: Path, progress: bool, settings: dict) -> dict:
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
    # float16 on disk (half the size; the model loads it into float32). Saved through a buffer:
    # torch.save names the archive after the file, and the bytes must not depend on a file name.
    buffer = io.BytesIO()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, buffer)
    paths.atomic_write(out, lambda partial: partial.write_bytes(buffer.getvalue()))  # never half a file
    log = {
        "path": _repo_relative(out),
        "model": MODEL_NAME,
        "settings": settings,
        "key": checkpoint_key(settings),
        "identity": checkpoint_identity(settings),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "rebuild": f"maft world pretrain --out {_repo_relative(out)} --force"
                   + "".join(f" --{k.replace('_', '-')} {v}" for k, v in settings.items()
                             if k in ("seed", "steps", "batch_size") and v != PRETRAIN_DEFAULTS[k]),
        "torch": torch.__version__,
        "world": dataset.spec.fingerprint,
        "losses": losses,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / settings["steps"], 4),
        "data_seconds": round(data_seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "logit_scale": round(model.logit_scale.exp().item(), 3),
    }
    paths.write_json(log, f"{out}.json", indent=1)
    return log


def _repo_relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(paths.REPO_ROOT))
    except ValueError:
        return str(path)


def ensure_world_clip(progress: bool = True, **settings) -> Path:
    """Path of the pretrained world CLIP for these settings: the kept one when it matches, else the
    cached one, pretraining it first if not cached."""
    path = find_world_clip(**settings)
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
