"""Building blocks of the notebooks' analyses: one experiment's parts, per-proposal views, score-vs-IoU
points and the "confused region" count behind the paper's Fig. 1 finding.

Notebooks stay thin by calling these; each function is small and usable on its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from .evaluate import evaluate, region_ious
from .experiment import build_clip, build_dataset_split, build_generator, build_text_classifier, with_defaults
from .inference import Segmenter


@dataclass
class Parts:
    """Everything an analysis of one experiment config needs, built once."""

    config: dict
    model: torch.nn.Module
    tokenizer: Any
    dataset: Any
    generator: Any
    text: torch.Tensor
    image_size: int
    frozen: torch.nn.Module                      # IP-CLIP on the original weights
    classifiers: dict = field(default_factory=dict)


def build_parts(config: dict, device: str = "cpu", split_key: str = "eval_split", mode: str = "eval") -> Parts:
    """Parts for ``config``; by default on its evaluation split (``split_key="train_split", mode="train"``
    gives the zero-shot training view instead)."""
    from .ipclip import IPCLIP

    config = with_defaults(config)
    model, _, tokenizer = build_clip(config, device=device)
    dataset = build_dataset_split(config, split_key, mode=mode)
    text = build_text_classifier(config, model, tokenizer, dataset.classes, device=device)
    frozen = IPCLIP(model.visual, start_layer=config["model"]["start_layer"]).eval()
    return Parts(config, model, tokenizer, dataset, build_generator(config), text,
                 int(config["model"]["image_size"]), frozen)


def finetuned_classifier(parts: Parts, checkpoint) -> torch.nn.Module:
    """IP-CLIP on a copy of the tower with the fine-tuned parameters of ``checkpoint`` loaded."""
    import copy

    from .ipclip import IPCLIP
    from .train import load_finetuned

    classifier = IPCLIP(copy.deepcopy(parts.model.visual), start_layer=parts.config["model"]["start_layer"])
    return load_finetuned(classifier, checkpoint, config=parts.config).eval()


def crop_classifier(parts: Parts, merge: str = "mask_and_crop") -> torch.nn.Module:
    """The frozen-CLIP two-step baseline (ZegFormer's merge operations) on the same tower."""
    from .baseline import FrozenCLIP

    return FrozenCLIP(parts.model.visual, merge=merge).eval()


def segmenter(parts: Parts, classifier, class_ids: Sequence[int] | None = None) -> Segmenter:
    """CLIP-only segmenter over all classes, or over ``class_ids`` only (e.g. the seen classes, as in
    training, where the softmax runs over C_seen)."""
    if class_ids is None:
        return Segmenter(classifier, parts.generator, parts.text, parts.image_size, classes=parts.dataset.classes)
    ids = list(class_ids)
    return Segmenter(classifier, parts.generator, parts.text[ids], parts.image_size,
                     classes=[parts.dataset.classes[i] for i in ids])


def evaluate_classifier(parts: Parts, classifier, max_images: int | None = None, progress: bool = True) -> dict:
    """CLIP-only metrics (paper Table 2 setting) with upper bound and mask-awareness."""
    return evaluate(classifier, parts.generator, parts.dataset, parts.text, parts.image_size,
                    max_images=max_images, progress=progress)


@dataclass
class ProposalView:
    """One image's proposals with their scores, and a few of them picked for a figure."""

    index: int
    image: torch.Tensor
    label: torch.Tensor
    masks: torch.Tensor
    probs: torch.Tensor
    kinds: list[str]
    source_class: torch.Tensor
    picked: list[int]
    true_class: list[int]


def pick_proposals(kinds: Sequence[str], source_class: torch.Tensor,
                   order: Sequence[str] = ("whole", "part", "background", "merged")) -> list[int]:
    """For the class of the first region: its whole proposal, then one of each other kind in ``order``."""
    if not len(kinds):
        return []
    target = int(source_class[0])
    picked = []
    for kind in order:
        match = next((i for i, (k, c) in enumerate(zip(kinds, source_class.tolist())) if k == kind and c == target),
                     None)
        if match is not None:
            picked.append(match)
    return picked


@torch.no_grad()
def classify_sample(parts: Parts, classifier, index: int, class_ids: Sequence[int] | None = None) -> ProposalView:
    """Proposals of image ``index`` with A^c over all classes (or over ``class_ids``, columns in that order)."""
    sample = parts.dataset[index]
    result = segmenter(parts, classifier, class_ids)(sample)
    proposals = result.proposals
    picked = pick_proposals(proposals.kinds, proposals.source_class)
    return ProposalView(index, sample["image"], sample["label"], result.masks, result.clip_probs,
                        list(proposals.kinds), proposals.source_class, picked,
                        [int(proposals.source_class[i]) for i in picked])


def images_with_several_kinds(dataset, generator, count: int,
                              kinds: Sequence[str] = ("whole", "part", "background", "merged")) -> list[int]:
    """The first ``count`` images whose first region has a proposal of each of ``kinds``."""
    found = []
    for index in range(len(dataset)):
        proposals = generator(dataset[index])
        if len(proposals) and len(pick_proposals(proposals.kinds, proposals.source_class, kinds)) == len(kinds):
            found.append(index)
            if len(found) == count:
                break
    return found


@torch.no_grad()
def score_iou_points(parts: Parts, classifiers: dict, max_images: int | None = None) -> list[dict]:
    """For every GT-derived proposal: its IoU with its source region and the classifier's score for the
    region's class, one row per (classifier, proposal)."""
    total = len(parts.dataset) if max_images is None else min(len(parts.dataset), max_images)
    rows = []
    for name, classifier in classifiers.items():
        run = segmenter(parts, classifier)
        for index in range(total):
            sample = parts.dataset[index]
            result = run(sample)
            proposals = result.proposals
            if not len(proposals):
                continue
            sources = proposals.source_class.to(result.masks.device)
            classes = torch.unique(sources)
            ious = region_ious(result.masks, sample["label"], classes)
            row_of = {int(c): r for r, c in enumerate(classes.tolist())}
            for n, (kind, source) in enumerate(zip(proposals.kinds, sources.tolist())):
                rows.append({"classifier": name, "image": index, "class": int(source), "kind": kind,
                             "iou": float(ious[row_of[source], n]), "score": float(result.clip_probs[n, source])})
    return rows


def confused_regions(points: Sequence[dict], low_iou: float = 0.5) -> dict:
    """Regions (per classifier) where some proposal with IoU < ``low_iou`` scores at least as high as the
    region's whole proposal: the false positives of paper Fig. 1."""
    by_region: dict[tuple, list[dict]] = {}
    for p in points:
        by_region.setdefault((p["classifier"], p["image"], p["class"]), []).append(p)
    counts: dict[str, list[int]] = {}
    for (name, _, _), rows in by_region.items():
        whole = [r["score"] for r in rows if r["kind"] == "whole"]
        poor = [r["score"] for r in rows if r["iou"] < low_iou]
        if not whole or not poor:
            continue
        tally = counts.setdefault(name, [0, 0])
        tally[0] += 1
        tally[1] += max(poor) >= whole[0]
    return {name: {"regions": n, "confused": c, "confusion_rate": c / n if n else None}
            for name, (n, c) in counts.items()}


def find_checkpoint(run_root) -> str:
    """The newest ``checkpoint.pt`` of a fine-tuning run under ``run_root`` (``<root>/<name>/checkpoint.pt``)."""
    from pathlib import Path

    root = Path(run_root)
    found = sorted(list(root.glob("checkpoint.pt")) + list(root.glob("*/checkpoint.pt")),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no fine-tuned checkpoint under {root}: run notebook 03 (or `maft train`) "
                                f"first, or pass checkpoint=<path>")
    return str(found[-1])


def summary_row(name: str, metrics: dict) -> dict:
    """The headline numbers of one evaluation (percent; mask-awareness as Spearman rho)."""
    awareness = metrics.get("mask_awareness") or {}
    return {"classifier": name, "miou_seen": metrics["miou_seen"], "miou_unseen": metrics["miou_unseen"],
            "hiou": metrics["hiou"], "miou": metrics["miou"], "mask_awareness": awareness.get("mean")}


def ensemble_rows(parts: Parts, classifiers: dict, ensemble_lambda: float | None,
                  max_images: int | None = None) -> list[dict]:
    """Eq. 9 ensemble with the generator's A^p for each classifier; [] when there is nothing to ensemble
    (no lambda, or a generator without class scores)."""
    if ensemble_lambda is None or parts.generator(parts.dataset[0]).scores is None:
        return []
    rows = []
    for name, classifier in classifiers.items():
        metrics = evaluate(classifier, parts.generator, parts.dataset, parts.text, parts.image_size,
                           ensemble_lambda=ensemble_lambda, max_images=max_images)
        rows.append(summary_row(f"{name} + ensemble (lambda {ensemble_lambda})", metrics))
    return rows


def transfer_rows(config: dict, transfer: dict, checkpoint, device: str = "cpu",
                  max_images: int | None = None) -> list[dict]:
    """Open-vocabulary transfer: frozen vs fine-tuned IP-CLIP on other datasets, each given as config
    overrides of ``config`` (e.g. ``{"ade150": ["data.dataset=ade150"]}``), so the model stays the same."""
    from .config import apply_overrides

    rows = []
    for name, changes in transfer.items():
        parts = build_parts(apply_overrides(config, list(changes)), device=device)
        for label, classifier in (("frozen IP-CLIP", parts.frozen),
                                  ("MAFT IP-CLIP", finetuned_classifier(parts, checkpoint))):
            metrics = evaluate_classifier(parts, classifier, max_images=max_images)
            rows.append({"transfer": name, **summary_row(label, metrics)})
    return rows


def per_class_table(results: dict, dataset) -> list[dict]:
    """One row per class: its split and its IoU under each evaluated classifier."""
    rows = []
    for i, name in enumerate(dataset.classes):
        row = {"class": name, "split": "unseen" if i in dataset.unseen else "seen"}
        row.update({label: metrics["per_class_iou"].get(name) for label, metrics in results.items()})
        rows.append(row)
    return rows


STUDY_KEYS = ("miou_seen", "miou_unseen", "hiou", "miou", "mask_awareness")


def run_variants(config: dict, variants: dict, seeds: Sequence[int], out_dir, device: str = "cpu",
                 include_frozen: bool = True, progress: bool = True) -> dict:
    """Fine-tune and evaluate each variant (name -> config overrides) for each seed; also the frozen
    model once per seed. Returns ``{"per_seed": {seed: {variant: summary}}, "mean": ..., "std": ...}``;
    run folders and metrics JSON go under ``out_dir/seed<k>/<variant>``."""
    from pathlib import Path

    from .config import apply_overrides
    from .evaluate import evaluate_config
    from .train import finetune

    out_dir = Path(out_dir)
    per_seed = {}
    for seed in seeds:
        folder = out_dir / f"seed{seed}"
        seeded = apply_overrides(config, [f"seed={seed}"])
        entries = {}
        if include_frozen:
            metrics = evaluate_config({**seeded, "name": "frozen"}, out=folder / "frozen.json", overwrite=True,
                                      device=device, progress=progress)
            entries["frozen"] = summary_row("frozen", metrics)
        for name, changes in variants.items():
            variant = apply_overrides(seeded, list(changes) + [f"train.out_dir={folder / name}"])
            variant["name"] = name
            trained = finetune(variant, progress=progress, overwrite=True)
            metrics = evaluate_config(variant, checkpoint=trained["checkpoint"], out=folder / f"{name}.json",
                                      overwrite=True, device=device, progress=progress)
            entries[name] = summary_row(name, metrics)
        per_seed[str(seed)] = entries
    return {"per_seed": per_seed, **mean_and_std(per_seed)}


def mean_and_std(per_seed: dict) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single seed) of each headline number."""
    import numpy as np

    names = list(next(iter(per_seed.values())))
    mean, std = {}, {}
    for name in names:
        mean[name], std[name] = {}, {}
        for key in STUDY_KEYS:
            values = [entries[name][key] for entries in per_seed.values() if entries[name].get(key) is not None]
            if values:
                mean[name][key] = float(np.mean(values))
                std[name][key] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std}


def mean_std_rows(study: dict) -> list[dict]:
    """One row per variant: each headline number and its ``<key>_std``."""
    rows = []
    for name, mean in study["mean"].items():
        row = {"variant": name}
        for key in STUDY_KEYS:
            row[key] = mean.get(key)
            row[f"{key}_std"] = study["std"][name].get(key)
        rows.append(row)
    return rows


def mean_std_table(rows: Sequence[dict], digits: int = 2) -> list[dict]:
    """``mean_std_rows`` for reading: one "mean ± std" cell per headline number."""
    table = []
    for row in rows:
        cells = {"variant": row["variant"]}
        for key in STUDY_KEYS:
            if row.get(key) is not None:
                cells[key] = f"{row[key]:.{digits}f} ± {row[f'{key}_std']:.{digits}f}"
        table.append(cells)
    return table
