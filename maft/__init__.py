"""MAFT: mask-aware fine-tuning of CLIP for zero-shot segmentation (Jiao et al., NeurIPS 2023).

The public API is imported lazily so that ``import maft`` stays cheap; each name lives in the module
of its concept (see ``_EXPORTS``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    # CLIP loading and text classifiers
    "load_clip": "maft.clip",
    "text_classifier": "maft.text",
    "class_probabilities": "maft.text",
    "TEMPLATES": "maft.templates",
    "preprocess_images": "maft.clip",
    "set_image_size": "maft.clip",
    # datasets and metrics
    "build_dataset": "maft.datasets",
    "SegDataset": "maft.datasets",
    "class_image_counts": "maft.datasets",
    "load_class_spec": "maft.classes",
    "available_datasets": "maft.classes",
    "check_class_names": "maft.classes",
    "DATASETS": "maft.datasets",
    "ConfusionMatrix": "maft.metrics",
    "segmentation_metrics": "maft.metrics",
    # proposal classifiers
    "IPCLIP": "maft.ipclip",
    "ProposalEmbeddings": "maft.ipclip",
    "class_token_attention_mask": "maft.ipclip",
    "FrozenCLIP": "maft.baseline",
    # proposals, losses, training, inference
    "build_proposal_generator": "maft.proposals",
    "Proposals": "maft.proposals",
    "proposal_iou": "maft.proposals",
    "save_proposals": "maft.proposals",
    "load_proposals": "maft.proposals",
    "mask_aware_loss": "maft.losses",
    "self_distillation_loss": "maft.losses",
    "maft_objective": "maft.losses",
    "TrainAugmentation": "maft.augment",
    "finetune": "maft.train",
    "load_finetuned": "maft.checkpoints",
    "ensemble_scores": "maft.inference",
    "semantic_map": "maft.inference",
    "Segmenter": "maft.inference",
    "evaluate": "maft.evaluate",
    "mask_awareness": "maft.evaluate",
    "predict": "maft.predict",
    # one config -> the parts of an experiment
    "load_experiment_config": "maft.config",
    "build_experiment": "maft.experiment",
    "run_variants": "maft.study",
    # the offline world
    "WorldDataset": "maft.world",
    "ensure_world_clip": "maft.world.pretrain",
    "run_story": "maft.story",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maft' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
