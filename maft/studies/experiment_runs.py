"""Building blocks of the notebooks' analyses of one experiment: per-proposal views, example picks,
evaluation rows, ensemble and transfer rows, per-class tables.

Each function takes an :class:`maft.experiment.Experiment` (``build_experiment(config)``) and stays small,
so the notebooks stay thin. The variants-over-seeds studies and the Fig. 1 count are :mod:`maft.studies.variants`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..config import apply_overrides, load
from ..evaluate import evaluate
from ..experiment import Experiment, build_experiment
from ..train import finetune
from .variants import summary_row


def evaluate_classifier(experiment: Experiment, classifier, max_images: int | None = None,
                        progress: bool = True) -> dict:
    """CLIP-only metrics (paper Table 2 setting) with upper bound and mask-awareness."""
    return evaluate(classifier, experiment.generator, experiment.dataset, experiment.text, experiment.image_size,
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
def classify_sample(experiment: Experiment, classifier, index: int,
                    class_ids: Sequence[int] | None = None) -> ProposalView:
    """Proposals of image ``index`` with A^c over all classes (or over ``class_ids``, columns in that order)."""
    sample = experiment.dataset[index]
    result = experiment.segmenter(classifier, class_ids)(sample)
    proposals = result.proposals
    if proposals.kinds is None:  # a generator that knows no regions (SAM, files): nothing to pick by kind
        return ProposalView(index, sample["image"], sample["label"], result.masks, result.clip_probs,
                            ["proposal"] * len(proposals), None, [], [])
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
        if (len(proposals) and proposals.kinds is not None
                and len(pick_proposals(proposals.kinds, proposals.source_class, kinds)) == len(kinds)):
            found.append(index)
            if len(found) == count:
                break
    return found


def find_checkpoint(run_root) -> str:
    """The newest ``checkpoint.pt`` of a fine-tuning run under ``run_root`` (``<root>/<name>/checkpoint.pt``)."""
    root = Path(run_root)
    found = sorted(list(root.glob("checkpoint.pt")) + list(root.glob("*/checkpoint.pt")),
                   key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no fine-tuned checkpoint under {root}: run notebook 03 (or `maft train`) "
                                f"first, or pass checkpoint=<path>")
    return str(found[-1])


def ensemble_rows(experiment: Experiment, classifiers: dict, ensemble_lambda: float | None,
                  max_images: int | None = None) -> list[dict]:
    """Eq. 9 ensemble with the generator's A^p for each classifier; [] when there is nothing to ensemble
    (no lambda, or a generator without class scores)."""
    if ensemble_lambda is None or experiment.generator(experiment.dataset[0]).scores is None:
        return []
    rows = []
    for name, classifier in classifiers.items():
        metrics = evaluate(classifier, experiment.generator, experiment.dataset, experiment.text,
                           experiment.image_size, ensemble_lambda=ensemble_lambda, max_images=max_images)
        rows.append(summary_row(f"{name} + ensemble (lambda {ensemble_lambda})", metrics))
    return rows


TRANSFER_RUN = "train_transfer"  # where notebook 03 fine-tunes the profile's transfer_config


def finetune_transfer_model(transfer_config, overrides, output_dir, progress: bool = True) -> dict:
    """Fine-tune the model the transfer rows use (paper Table 3: trained on every class of the source
    dataset, e.g. ``coco_stuff171_vitb16_openvocab``) into ``<output_dir>/train_transfer``."""
    config = load(transfer_config, list(overrides) + [f"train.out_dir={Path(output_dir) / TRANSFER_RUN}"])
    return finetune(config, progress=progress, overwrite=True)


def transfer_model(config: dict, checkpoint, transfer_config, overrides, output_dir) -> tuple[dict, str]:
    """(config, checkpoint) of the transfer rows: the profile's ``transfer_config`` and the checkpoint
    notebook 03 trained for it, or, without one, the notebook's own config and checkpoint."""
    if transfer_config is None:
        return config, checkpoint
    return load(transfer_config, list(overrides)), find_checkpoint(Path(output_dir) / TRANSFER_RUN)


def transfer_rows(config: dict, transfer: dict, checkpoint, device: str = "cpu",
                  max_images: int | None = None) -> list[dict]:
    """Open-vocabulary transfer: frozen vs fine-tuned IP-CLIP on other datasets, each given as config
    overrides of ``config`` (e.g. ``{"ade150": ["data.dataset=ade150"]}``), so the model stays the same."""
    rows = []
    for name, changes in transfer.items():
        experiment = build_experiment(apply_overrides(config, list(changes)), device=device)
        for label, classifier in (("frozen IP-CLIP", experiment.frozen),
                                  ("MAFT IP-CLIP", experiment.finetuned(checkpoint))):
            metrics = evaluate_classifier(experiment, classifier, max_images=max_images)
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


def picked_proposal_stats(pairs: Sequence[tuple[ProposalView, ProposalView]]) -> dict:
    """How two classifiers score the picked proposals of :func:`classify_sample` views (same image and
    proposals, e.g. frozen vs MAFT): how often the true class is top-1, and the mean score for the
    region's class of its whole proposal and of the poorer ones (part, background, merged)."""
    stats = {"proposals": 0, "frozen_top1": 0, "maft_top1": 0}
    scores = {"frozen_whole": [], "frozen_poor": [], "maft_whole": [], "maft_poor": []}
    for before, after in pairs:
        for n, target in zip(before.picked, before.true_class):
            stats["proposals"] += 1
            for name, view in (("frozen", before), ("maft", after)):
                stats[f"{name}_top1"] += int(int(view.probs[n].argmax()) == target)
                kind = "whole" if view.kinds[n] == "whole" else "poor"
                scores[f"{name}_{kind}"].append(float(view.probs[n, target]))
    stats.update({key: sum(values) / len(values) if values else float("nan") for key, values in scores.items()})
    return stats
