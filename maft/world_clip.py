"""The world's tiny CLIP: an open_clip model pretrained contrastively on captioned world scenes.

The architecture is the open_clip config ``maft/model_configs/maft-world-vit.json`` (a 6-block ViT
with patch 8 on 64x64 scenes, a 2-block text tower with open_clip's BPE tokenizer), so the model is
a plain ``open_clip.CLIP`` and every later step (IP-CLIP, fine-tuning, evaluation) runs the same code
as for OpenAI's ViT-B/16. Training uses open_clip's own ``ClipLoss`` on (scene, caption) pairs
streamed from the world's "pretrain" split; like web captions, these name every class in a scene,
the zero-shot-unseen ones included.

:func:`ensure_world_clip` returns the checkpoint, pretraining it on first use and caching it under
``maft.paths.cache_dir("world")``; the file name holds a hash of the world specification, the model
config and the pretraining settings, so a change to any of them never reuses a stale checkpoint.
:func:`zero_shot_accuracy` is the image-level probe: single-thing and single-stuff scenes classified
by their class name, seen and unseen classes reported apart.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import paths
from .world import WorldDataset, load_world_spec

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
    from .clip import MODEL_CONFIG_DIR

    from . import world

    identity = {
        "world": load_world_spec().fingerprint,
        "generator": hashlib.sha256(Path(world.__file__).read_bytes()).hexdigest(),  # the drawing code
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
    import open_clip

    from .clip import preprocess_images

    cfg = model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    image_features = model.encode_image(preprocess_images(images, size, cfg["mean"], cfg["std"]), normalize=True)
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
    import open_clip

    from .clip import load_clip

    settings = _settings(**settings)
    out = Path(out) if out is not None else default_checkpoint_path(**settings)
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
    bar = tqdm(range(settings["steps"]), desc="pretrain world CLIP", disable=not progress)
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
        bar.set_postfix(loss=f"{loss.item():.3f}")
    pool.shutdown()
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started  # CPU time of all threads: comparable on a busy machine
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model.state_dict(), partial)
    os.replace(partial, out)  # atomic: a concurrent reader never sees half a checkpoint
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
    from .clip import load_clip, preprocess_images, text_classifier

    model, _, tokenizer = load_clip(MODEL_NAME, pretrained=str(checkpoint))
    cfg = model.visual.preprocess_cfg
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
                                       cfg["mean"], cfg["std"])
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


# --------------------------------------------------------------------------------------------------
# The story: frozen vs mask-aware fine-tuned IP-CLIP in the world, with ablations, over seeds
# --------------------------------------------------------------------------------------------------
# Fine-tuned variants besides the default ("maft"): the paper's Table 4a (self-distillation) and 4e
# (start layer L; the default is 4 of 6 blocks, as 8 of 12 in the paper).
STORY_VARIANTS = {
    "maft": [],
    "no_distill": ["train.distill_weight=0"],
    "start_layer_0": ["model.start_layer=0"],
    "start_layer_2": ["model.start_layer=2"],
    "start_layer_5": ["model.start_layer=5"],
}
# --quick: the same code path at toy sizes (CI): a few pretraining and fine-tuning steps, few images.
QUICK_PRETRAIN = {"steps": 6, "batch_size": 16, "warmup": 2}
QUICK_OVERRIDES = [
    "train.iterations=2", "train.batch_size=2", "eval.max_images=3",
    "proposals.settings.max_proposals=10", "proposals.settings.kinds=[part,background,merged]",
]
QUICK_VARIANTS = ("maft", "no_distill", "start_layer_2")
ENTRY_KEYS = ("mask_awareness", "mask_awareness_seen", "mask_awareness_unseen", "miou", "miou_seen",
              "miou_unseen", "hiou", "upper_bound_hiou", "confusion_rate")


def _entry(metrics: dict, examples: dict | None = None) -> dict:
    """The story's summary of one evaluation (metrics JSON of ``maft.evaluate``)."""
    awareness = metrics["mask_awareness"]
    entry = {
        "mask_awareness": awareness["mean"],
        "mask_awareness_seen": awareness.get("mean_seen"),
        "mask_awareness_unseen": awareness.get("mean_unseen"),
        "miou": metrics["miou"],
        "miou_seen": metrics["miou_seen"],
        "miou_unseen": metrics["miou_unseen"],
        "hiou": metrics["hiou"],
        "upper_bound_hiou": (metrics.get("upper_bound") or {}).get("hiou"),
        "eval_json": metrics.get("path"),
    }
    if examples is not None:
        entry["confusion_rate"] = examples["confusion_rate"]
        entry["examples"] = examples
    return entry


@torch.no_grad()
def proposal_examples(config: dict, checkpoint: str | None = None, max_images: int | None = None,
                      low_iou: float = 0.5, top: int = 6) -> dict:
    """Where a poor proposal scores as high as the whole object (the paper's Fig. 1 finding).

    For each ground-truth region with a "whole" proposal and at least one proposal made from it with
    IoU < ``low_iou`` (a part, the object with much background, a merge...), the region is "confused"
    when one of those scores at least as high as the whole object for the region's class.
    ``confusion_rate`` = confused / such regions; ``examples`` = the ``top`` largest score margins;
    ``by_kind``: per proposal kind, the mean score for the source region's class and the mean IoU.
    """
    from .evaluate import build_classifier, region_ious
    from .experiment import build_clip, build_dataset_split, build_generator, build_text_classifier, with_defaults
    from .inference import Segmenter

    full = with_defaults(config)
    model, _, tokenizer = build_clip(config)
    dataset = build_dataset_split(config, "eval_split", mode="eval")
    text = build_text_classifier(config, model, tokenizer, dataset.classes)
    classifier = build_classifier(config, model, checkpoint)
    segmenter = Segmenter(classifier, build_generator(config), text, full["model"]["image_size"])
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    regions = confused = 0
    found = []
    by_kind: dict[str, list[tuple[float, float]]] = {}  # kind -> (score for the source class, IoU)
    for index in range(total):
        sample = dataset[index]
        result = segmenter(sample)
        kinds, sources = result.proposals.kinds, result.proposals.source_class
        for k in sources.unique().tolist():
            members = (sources == k).nonzero().flatten().tolist()
            whole = [i for i in members if kinds[i] == "whole"]
            if not whole:
                continue
            ious = region_ious(result.masks[members], sample["label"], torch.tensor([k]))[0]
            for i, iou in zip(members, ious.tolist()):
                by_kind.setdefault(kinds[i], []).append((result.clip_probs[i, k].item(), iou))
            poor = [(i, iou) for i, iou in zip(members, ious.tolist()) if iou < low_iou]
            if not poor:
                continue
            regions += 1
            whole_score = result.clip_probs[whole[0], k].item()
            margins = [(result.clip_probs[i, k].item() - whole_score, i, iou) for i, iou in poor]
            best = max(margins)
            confused += best[0] >= 0
            found.append({"id": sample["id"], "class": dataset.classes[k], "kind": kinds[best[1]],
                          "iou": round(best[2], 3), "score": round(best[0] + whole_score, 4),
                          "whole_score": round(whole_score, 4), "margin": round(best[0], 4)})
    found.sort(key=lambda e: -e["margin"])
    summary = {kind: {"score": sum(p[0] for p in pairs) / len(pairs), "iou": sum(p[1] for p in pairs) / len(pairs),
                      "n": len(pairs)} for kind, pairs in sorted(by_kind.items())}
    return {"regions": regions, "confused": int(confused),
            "confusion_rate": confused / regions if regions else None, "low_iou": low_iou,
            "by_kind": summary, "examples": found[:top]}


def _mean_std(entries: list[dict]) -> tuple[dict, dict]:
    """Mean and sample standard deviation (ddof 1; 0 for one seed) of each numeric story field."""
    import numpy as np

    mean, std = {}, {}
    for key in ENTRY_KEYS:
        values = [e[key] for e in entries if e.get(key) is not None]
        if values:
            mean[key] = float(np.mean(values))
            std[key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return mean, std


def run_story(seeds: int = 3, out: str | os.PathLike | None = None, quick: bool = False,
              config: str | dict = "world", overrides=(), variants=None, pretrain: dict | None = None,
              checkpoint: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """The MAFT story in the world, written as JSON to ``out`` (default outputs/world/story.json).

    Once: the world CLIP (cached, see :func:`ensure_world_clip`) and its image-level zero-shot
    accuracy. Per seed (the experiment seed: fine-tuning data order and proposal corruptions; the
    CLIP itself is pretrained once): IP-CLIP frozen, then fine-tuned on seen classes with each
    variant of :data:`STORY_VARIANTS`, each evaluated CLIP-only on the eval split through
    ``maft.train.finetune`` and ``maft.evaluate.evaluate_config``. Then mean and std over seeds.
    Run folders (checkpoints, per-run metrics) go to ``<out stem>_runs/`` beside ``out``.
    ``checkpoint``: use this world CLIP instead of the cached one of ``pretrain`` settings.
    """
    from .config import apply_overrides, load_config
    from .evaluate import evaluate_config
    from .train import finetune

    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    started = time.perf_counter()
    out = Path(out) if out is not None else paths.outputs_dir("world") / "story.json"
    runs = out.parent / f"{out.stem}_runs"
    pretrain = {**(QUICK_PRETRAIN if quick else {}), **(pretrain or {})}
    names = list(variants or (QUICK_VARIANTS if quick else STORY_VARIANTS))
    unknown = [n for n in names if n not in STORY_VARIANTS]
    if unknown:
        raise ValueError(f"unknown story variants {unknown}; known: {list(STORY_VARIANTS)}")

    if checkpoint is None:
        checkpoint = ensure_world_clip(progress=progress, **pretrain)
    elif not Path(checkpoint).is_file():
        raise FileNotFoundError(f"world CLIP checkpoint {checkpoint} not found (maft world pretrain makes one)")
    log_file = Path(f"{checkpoint}.json")
    pretrain_log = json.loads(log_file.read_text()) if log_file.is_file() else {"losses": [None]}
    clip_seconds = time.perf_counter() - started
    zero_shot = zero_shot_accuracy(checkpoint, max_scenes=50 if quick else None)
    base = load_config(config) if isinstance(config, (str, Path)) else config
    base = apply_overrides(base, list(QUICK_OVERRIDES if quick else []) + list(overrides))
    base["model"]["pretrained"] = str(checkpoint)

    per_seed = {}
    for seed in range(seeds):
        folder = runs / f"seed{seed}"
        seeded = apply_overrides(base, [f"seed={seed}"])
        examples_images = seeded["eval"].get("max_images")

        def evaluate(cfg, name, ckpt=None):
            metrics = evaluate_config({**cfg, "name": name}, checkpoint=ckpt, out=folder / f"{name}.json",
                                      overwrite=True, progress=progress)
            # the Fig. 1 analysis for the two entries the story compares (it costs another pass)
            examples = proposal_examples(cfg, ckpt, max_images=examples_images) if name in ("frozen", "maft") else None
            return _entry(metrics, examples)

        entries = {"frozen": evaluate(seeded, "frozen")}
        # frozen IP-CLIP at each ablated start layer too: what fine-tuning adds at that L
        for layer in sorted({int(o.split("=")[1]) for n in names for o in STORY_VARIANTS[n]
                             if o.startswith("model.start_layer=")}):
            name = f"frozen_start_layer_{layer}"
            entries[name] = evaluate(apply_overrides(seeded, [f"model.start_layer={layer}"]), name)
        for name in names:
            variant = apply_overrides(seeded, STORY_VARIANTS[name] + [f"train.out_dir={folder / name}"])
            variant["name"] = name
            summary = finetune(variant, progress=progress, overwrite=True)
            entries[name] = evaluate(variant, name, summary["checkpoint"])
            entries[name]["train_step_time_s"] = summary["step_time_s"]
        per_seed[str(seed)] = entries

    mean, std = {}, {}
    for name in per_seed["0"]:
        mean[name], std[name] = _mean_std([per_seed[s][name] for s in per_seed])
    spec = load_world_spec()
    story = {
        "world": {"classes": list(spec.classes), "seen": list(spec.seen), "unseen": list(spec.unseen),
                  "image_size": spec.image_size, "fingerprint": spec.fingerprint},
        "clip": {"checkpoint": str(checkpoint), "pretrain": {k: v for k, v in pretrain_log.items() if k != "losses"},
                 "final_loss": pretrain_log["losses"][-1], "zero_shot": zero_shot},
        "settings": {"seeds": seeds, "quick": quick, "variants": names, "config": base},
        "per_seed": per_seed,
        "mean": mean,
        "std": std,
        "seconds": {"clip": round(clip_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(story, indent=1))
    return story
