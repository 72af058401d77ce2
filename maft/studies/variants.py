"""The study layer: variants x seeds, their summaries, and the paper's Fig. 1 "confused region" count.

What the notebooks (05 ablations, 01 insensitivity) and ``maft world story`` (:mod:`maft.world.story`) build on:

- :func:`run_variants`: for each seed, the frozen model(s) evaluated and each variant (config overrides)
  fine-tuned and evaluated, through :func:`maft.train.finetune` and :func:`maft.evaluate.evaluate_config`;
- :func:`mean_and_std` (sample std over seeds) and the tables made from it;
- :func:`score_iou_points` and :func:`confused_regions`: for every GT-derived proposal, its IoU with its
  source region and its score for the region's class, and the regions where a poor proposal (IoU < 0.5)
  scores at least as high as the whole object.

The MAFT story in the offline world (the paper's Table 4 on label-free proposals) builds on these in
:mod:`maft.world.story`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import apply_overrides
from ..evaluate import evaluate_config
from ..experiment import Experiment
from ..proposals.quality import region_ious
from ..train import finetune

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
def evaluate_variant(name: str, config, folder: Path, trained: dict | None, device: str = "cpu",
                     progress: bool = True) -> dict:
    """The default measurement of one run: evaluated on its test proposals (``trained``: the fine-tuning
    summary, None for the original weights), metrics JSON in ``folder/<name>.json``, the headline row."""
    checkpoint = None if trained is None else trained["checkpoint"]
    metrics = evaluate_config(config, checkpoint=checkpoint, out=folder / f"{name}.json", overwrite=True,
                              device=device, progress=progress)
    return summary_row(name, metrics)


def run_variants(config, variants: dict, seeds: Sequence[int], out_dir, device: str = "cpu",
                 frozen: dict | None = None, progress: bool = True,
                 measure: Callable[[str, dict, Path, dict | None], dict] | None = None,
                 keys: Sequence[str] = STUDY_KEYS, folder_prefix: str = "") -> dict:
    """The one study engine: per seed, each frozen entry measured, then each variant fine-tuned and measured.

    ``variants`` and ``frozen`` map names to config overrides (``frozen`` default ``{"frozen": []}``: the
    original weights once per seed; ``{}`` for none). Run folders and metrics go under
    ``out_dir/<folder_prefix>seed<k>/<name>``. ``measure(name, config, folder, trained)`` makes each entry
    (``trained``: the fine-tuning summary, None for frozen entries; default :func:`evaluate_variant`).
    Returns ``{"per_seed": {seed: {name: entry}}, "mean": ..., "std": ...}`` (mean and std of ``keys``).
    """
    out_dir = Path(out_dir)
    frozen = {"frozen": []} if frozen is None else frozen
    if measure is None:
        def measure(name, variant, folder, trained):
            return evaluate_variant(name, variant, folder, trained, device=device, progress=progress)
    per_seed = {}
    for seed in seeds:
        folder = out_dir / f"{folder_prefix}seed{seed}"
        seeded = apply_overrides(config, [f"seed={seed}"])
        entries = {}
        for name, changes in frozen.items():
            entries[name] = measure(name, {**apply_overrides(seeded, list(changes)), "name": name}, folder, None)
        for name, changes in variants.items():
            variant = {**apply_overrides(seeded, list(changes) + [f"train.out_dir={folder / name}"]), "name": name}
            trained = finetune(variant, progress=progress, overwrite=True)
            entries[name] = measure(name, variant, folder, trained)
        per_seed[str(seed)] = entries
    return {"per_seed": per_seed, **mean_and_std(per_seed, keys)}


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


def format_mean_std(mean: float | None, std: float | None, digits: int = 1) -> str:
    """The one way a mean over seeds is printed: "12.3 ± 0.4" ("n/a" without a mean)."""
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f} ± {std or 0.0:.{digits}f}"


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
                cells[key] = format_mean_std(row[key], row[f"{key}_std"], digits)
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
            if proposals.source_class is None:
                raise ValueError("score_iou_points needs GT-derived proposals (they know their source region); "
                                 "build the experiment with proposals='gt'")
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
