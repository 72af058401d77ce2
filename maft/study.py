"""The study layer: variants x seeds, their summaries, and the paper's Fig. 1 "confused region" count.

One module that both the notebooks (05 ablations, 01 insensitivity) and ``maft world story`` call:

- :func:`run_variants`: for each seed, the frozen model(s) evaluated and each variant (config overrides)
  fine-tuned and evaluated, through :func:`maft.train.finetune` and :func:`maft.evaluate.evaluate_config`;
- :func:`mean_and_std` (sample std over seeds) and the tables made from it;
- :func:`score_iou_points` and :func:`confused_regions`: for every GT-derived proposal, its IoU with its
  source region and its score for the region's class, and the regions where a poor proposal (IoU < 0.5)
  scores at least as high as the whole object;
- :func:`run_story`: the MAFT story in the offline world (the world CLIP, its zero-shot probe, the
  variants over seeds), written as one JSON.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import paths
from .config import apply_overrides, load
from .evaluate import evaluate_config, region_ious
from .experiment import Experiment, build_experiment
from .train import finetune
from .world import load_world_spec
from .world.pretrain import ensure_world_clip, zero_shot_accuracy

STUDY_KEYS = ("miou_seen", "miou_unseen", "hiou", "miou", "mask_awareness")


# --------------------------------------------------------------------------------------------------
# One evaluation -> one row
# --------------------------------------------------------------------------------------------------
def summary_row(name: str, metrics: dict) -> dict:
    """The headline numbers of one evaluation (percent; mask-awareness as Spearman rho)."""
    awareness = metrics.get("mask_awareness") or {}
    return {"classifier": name, "miou_seen": metrics["miou_seen"], "miou_unseen": metrics["miou_unseen"],
            "hiou": metrics["hiou"], "miou": metrics["miou"], "mask_awareness": awareness.get("mean")}


# --------------------------------------------------------------------------------------------------
# Variants x seeds
# --------------------------------------------------------------------------------------------------
def _default_summary(name: str, metrics: dict, config: dict, trained: dict | None) -> dict:
    return summary_row(name, metrics)


def run_variants(config: dict, variants: dict, seeds: Sequence[int], out_dir, device: str = "cpu",
                 frozen: dict | None = None, progress: bool = True,
                 summarize: Callable[[str, dict, dict, dict | None], dict] = _default_summary) -> dict:
    """Per seed: each frozen evaluation, then each variant fine-tuned and evaluated.

    ``variants`` and ``frozen`` map names to config overrides (``frozen`` default ``{"frozen": []}``: the
    original weights once per seed; ``{}`` for none). Run folders and metrics JSON go under
    ``out_dir/seed<k>/<name>``. ``summarize(name, metrics, config, trained)`` makes each entry
    (``trained``: the fine-tuning summary, None for frozen ones; default :func:`summary_row`).
    Returns ``{"per_seed": {seed: {name: entry}}, "mean": ..., "std": ...}``.
    """
    out_dir = Path(out_dir)
    frozen = {"frozen": []} if frozen is None else frozen
    per_seed = {}
    for seed in seeds:
        folder = out_dir / f"seed{seed}"
        seeded = apply_overrides(config, [f"seed={seed}"])
        entries = {}
        for name, changes in frozen.items():
            variant = {**apply_overrides(seeded, list(changes)), "name": name}
            metrics = evaluate_config(variant, out=folder / f"{name}.json", overwrite=True, device=device,
                                      progress=progress)
            entries[name] = summarize(name, metrics, variant, None)
        for name, changes in variants.items():
            variant = apply_overrides(seeded, list(changes) + [f"train.out_dir={folder / name}"])
            variant["name"] = name
            trained = finetune(variant, progress=progress, overwrite=True)
            metrics = evaluate_config(variant, checkpoint=trained["checkpoint"], out=folder / f"{name}.json",
                                      overwrite=True, device=device, progress=progress)
            entries[name] = summarize(name, metrics, variant, trained)
        per_seed[str(seed)] = entries
    return {"per_seed": per_seed, **mean_and_std(per_seed)}


def mean_and_std(per_seed: dict, keys: Sequence[str] = STUDY_KEYS) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) of each of ``keys``, per entry."""
    names = list(next(iter(per_seed.values())))
    mean, std = {}, {}
    for name in names:
        mean[name], std[name] = {}, {}
        for key in keys:
            values = [entries[name][key] for entries in per_seed.values() if entries[name].get(key) is not None]
            if values:
                mean[name][key] = float(np.mean(values))
                std[name][key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std}


def mean_std_rows(study: dict, keys: Sequence[str] = STUDY_KEYS) -> list[dict]:
    """One row per variant: each headline number and its ``<key>_std``."""
    rows = []
    for name, mean in study["mean"].items():
        row = {"variant": name}
        for key in keys:
            row[key] = mean.get(key)
            row[f"{key}_std"] = study["std"][name].get(key)
        rows.append(row)
    return rows


def mean_std_table(rows: Sequence[dict], digits: int = 2, keys: Sequence[str] = STUDY_KEYS) -> list[dict]:
    """``mean_std_rows`` for reading: one "mean ± std" cell per headline number."""
    table = []
    for row in rows:
        cells = {"variant": row["variant"]}
        for key in keys:
            if row.get(key) is not None:
                cells[key] = f"{row[key]:.{digits}f} ± {row[f'{key}_std']:.{digits}f}"
        table.append(cells)
    return table


# --------------------------------------------------------------------------------------------------
# Score against IoU, and the confused regions of paper Fig. 1
# --------------------------------------------------------------------------------------------------
@torch.no_grad()
def score_iou_points(experiment: Experiment, classifiers: dict, max_images: int | None = None) -> list[dict]:
    """For every GT-derived proposal: its IoU with its source region and the classifier's score for the
    region's class, one row per (classifier, proposal)."""
    dataset = experiment.dataset
    total = len(dataset) if max_images is None else min(len(dataset), max_images)
    rows = []
    for name, classifier in classifiers.items():
        run = experiment.segmenter(classifier)
        for index in range(total):
            sample = dataset[index]
            result = run(sample)
            proposals = result.proposals
            if not len(proposals):
                continue
            sources = proposals.source_class.to(result.masks.device)
            classes = torch.unique(sources)
            ious = region_ious(result.masks, sample["label"], classes)
            row_of = {int(c): r for r, c in enumerate(classes.tolist())}
            for n, (kind, source) in enumerate(zip(proposals.kinds, sources.tolist())):
                rows.append({"classifier": name, "image": index, "id": sample.get("id"), "class": int(source),
                             "proposal": n, "kind": kind, "iou": float(ious[row_of[source], n]),
                             "score": float(result.clip_probs[n, source])})
    return rows


def confused_regions(points: Sequence[dict], low_iou: float = 0.5, top: int = 6,
                     class_names: Sequence[str] | None = None) -> dict:
    """Per classifier: the regions where some proposal with IoU < ``low_iou`` scores at least as high as
    the region's whole proposal (the false positives of paper Fig. 1).

    Only regions with a "whole" proposal count; ``regions`` are those that also have a poor one,
    ``confusion_rate`` = confused / regions. ``by_kind``: per proposal kind, the mean score for the source
    region's class and the mean IoU over every region with a whole proposal. ``examples``: the ``top``
    largest margins (best poor score minus the whole object's score).
    """
    by_region: dict[tuple, list[dict]] = {}
    for p in points:
        by_region.setdefault((p["classifier"], p["image"], p["class"]), []).append(p)
    out: dict[str, dict] = {}
    for (name, _, class_id), rows in by_region.items():
        summary = out.setdefault(name, {"regions": 0, "confused": 0, "low_iou": low_iou, "_kinds": {},
                                        "examples": []})
        whole = [r for r in rows if r["kind"] == "whole"]
        if not whole:
            continue
        for r in rows:
            summary["_kinds"].setdefault(r["kind"], []).append((r["score"], r["iou"]))
        poor = [r for r in rows if r["iou"] < low_iou]
        if not poor:
            continue
        whole_score = whole[0]["score"]
        margin, _, worst = max((r["score"] - whole_score, r["proposal"], r) for r in poor)
        summary["regions"] += 1
        summary["confused"] += int(margin >= 0)
        summary["examples"].append({
            "id": worst["id"], "class": class_names[class_id] if class_names else class_id, "kind": worst["kind"],
            "iou": round(worst["iou"], 3), "score": round(worst["score"], 4),
            "whole_score": round(whole_score, 4), "margin": round(margin, 4)})
    for summary in out.values():
        kinds = summary.pop("_kinds")
        summary["by_kind"] = {kind: {"score": sum(p[0] for p in pairs) / len(pairs),
                                     "iou": sum(p[1] for p in pairs) / len(pairs), "n": len(pairs)}
                              for kind, pairs in sorted(kinds.items())}
        summary["examples"] = sorted(summary["examples"], key=lambda e: -e["margin"])[:top]
        summary["confusion_rate"] = summary["confused"] / summary["regions"] if summary["regions"] else None
    return out


# --------------------------------------------------------------------------------------------------
# The story in the offline world
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
# The two entries the story runs the Fig. 1 analysis for (it costs another pass over the images).
EXAMPLE_ENTRIES = ("frozen", "maft")


def story_entry(metrics: dict, examples: dict | None = None) -> dict:
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


def proposal_examples(config: dict, checkpoint=None, max_images: int | None = None) -> dict:
    """:func:`confused_regions` of the classifier ``config`` evaluates (fine-tuned by ``checkpoint``)."""
    experiment = build_experiment(config)
    points = score_iou_points(experiment, {"classifier": experiment.classifier(checkpoint)}, max_images)
    return confused_regions(points, class_names=experiment.classes)["classifier"]


def _story_summary(max_images):
    def summarize(name: str, metrics: dict, config: dict, trained: dict | None) -> dict:
        examples = None
        if name in EXAMPLE_ENTRIES:
            examples = proposal_examples(config, trained and trained["checkpoint"], max_images=max_images)
        entry = story_entry(metrics, examples)
        if trained is not None:
            entry["train_step_time_s"] = trained["step_time_s"]
        return entry
    return summarize


def run_story(seeds: int = 3, out: str | os.PathLike | None = None, quick: bool = False,
              config: str | dict = "world", overrides=(), variants=None, pretrain: dict | None = None,
              checkpoint: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """The MAFT story in the world, written as JSON to ``out`` (default outputs/world/story.json).

    Once: the world CLIP (cached, see :func:`maft.world.pretrain.ensure_world_clip`) and its image-level
    zero-shot accuracy. Per seed (the experiment seed: fine-tuning data order and proposal corruptions;
    the CLIP itself is pretrained once): IP-CLIP frozen (also at each ablated start layer), then
    fine-tuned on seen classes with each variant of :data:`STORY_VARIANTS`, each evaluated CLIP-only on
    the eval split (:func:`run_variants`). Then mean and std over seeds. Run folders (checkpoints,
    per-run metrics) go to ``<out stem>_runs/`` beside ``out``. ``checkpoint``: use this world CLIP
    instead of the cached one of ``pretrain`` settings.
    """
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive int, got {seeds!r}")
    started = time.perf_counter()
    out = Path(out) if out is not None else paths.outputs_dir("world") / "story.json"
    # both are written after minutes of work (the world CLIP, every fine-tuning run): check them first
    paths.check_output_path(out, "story out")
    paths.check_output_path(out.parent / f"{out.stem}_runs", "story out (its run folder)", directory=True)
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
    base = load(config) if isinstance(config, (str, Path)) else config
    base = apply_overrides(base, list(QUICK_OVERRIDES if quick else []) + list(overrides))
    base["model"]["pretrained"] = str(checkpoint)

    # frozen IP-CLIP at each ablated start layer too: what fine-tuning adds at that L
    layers = sorted({int(o.split("=")[1]) for n in names for o in STORY_VARIANTS[n]
                     if o.startswith("model.start_layer=")})
    frozen = {"frozen": [], **{f"frozen_start_layer_{layer}": [f"model.start_layer={layer}"] for layer in layers}}
    study = run_variants(base, {name: STORY_VARIANTS[name] for name in names}, range(seeds),
                         out.parent / f"{out.stem}_runs", frozen=frozen, progress=progress,
                         summarize=_story_summary(base["eval"].get("max_images")))
    spec = load_world_spec()
    story = {
        "world": {"classes": list(spec.classes), "seen": list(spec.seen), "unseen": list(spec.unseen),
                  "image_size": spec.image_size, "fingerprint": spec.fingerprint},
        "clip": {"checkpoint": str(checkpoint), "pretrain": {k: v for k, v in pretrain_log.items() if k != "losses"},
                 "final_loss": pretrain_log["losses"][-1], "zero_shot": zero_shot},
        "settings": {"seeds": seeds, "quick": quick, "variants": names, "config": base},
        "per_seed": study["per_seed"],
        **mean_and_std(study["per_seed"], ENTRY_KEYS),
        "seconds": {"clip": round(clip_seconds, 1), "total": round(time.perf_counter() - started, 1)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(story, indent=1))
    return story


def format_story(story: dict) -> str:
    """A plain-text table of the story's mean +- std over seeds."""
    keys = ("mask_awareness", "miou_seen", "miou_unseen", "hiou", "confusion_rate")
    lines = [f"{'entry':<15}" + "".join(f"{k:>22}" for k in keys)]
    for name, mean in story["mean"].items():
        std = story["std"][name]
        cells = "".join(f"{mean[k]:>14.3f} ± {std[k]:<5.3f}" if k in mean else f"{'n/a':>22}" for k in keys)
        lines.append(f"{name:<15}{cells}")
    return "\n".join(lines)
