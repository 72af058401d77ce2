"""MAFT: mask-aware fine-tuning of CLIP for zero-shot segmentation (Jiao et al., NeurIPS 2023).

The method is the top level of this package, one module per step of the paper's pipeline:

- ``config`` (the typed config schema and its loader) and ``experiment`` (the factory that assembles an
  experiment from one config);
- ``clip`` (CLIP loading), ``text`` and ``templates`` (text classifiers, eq. 1), ``masks`` (the one mask resize
  and threshold);
- ``ipclip`` (the IP-CLIP encoder, eq. 2) and ``crop_classifier`` (frozen CLIP's crop-and-classify);
- ``losses`` (eqs. 5-8), ``trainable`` (which units train), ``train`` with ``distributed`` and
  ``checkpoints`` (and ``authors_checkpoints``, the authors' released detectron2 files);
- ``inference`` (eq. 9, semantic maps), ``evaluate`` and ``metrics`` (mIoU, hIoU), ``predict`` (one image).

Everything else lives in a subpackage named for its role: ``data`` (datasets, class specs, your own folder,
conversion, augmentation), ``proposals`` (mask proposal generators), ``downloads``, ``world`` (the offline
world and its story), ``studies`` (variants x seeds, the cost benchmark, the paper's numbers), ``viz``
(figures, charts, the explorer), ``notebook`` (what the notebooks need around the method), ``cli`` and
``utils`` (paths, progress bars).

Layering rule (``tests/test_layering.py`` reads the import graph, imports inside functions included):

1. the top-level pipeline never imports ``studies``, ``viz``, ``notebook`` or ``cli``;
2. ``data`` and ``proposals`` never import the training or evaluation engine (``experiment``, ``train``,
   ``trainable``, ``distributed``, ``checkpoints``, ``evaluate``, ``predict``); they may use the method's
   pure functions (``masks``, ``losses.soft_iou``, ``inference.semantic_map``, ``metrics``);
3. ``utils`` imports nothing of maft's; ``viz`` never imports ``notebook``, ``studies`` or ``cli``.

The public API below is imported lazily so that ``import maft`` stays cheap; each name lives in the module
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
    "build_dataset": "maft.data.datasets",
    "SegDataset": "maft.data.datasets",
    "class_image_counts": "maft.data.datasets",
    "load_class_spec": "maft.data.class_specs",
    "available_datasets": "maft.data.class_specs",
    "check_class_names": "maft.data.class_specs",
    "DATASETS": "maft.data.datasets",
    "ConfusionMatrix": "maft.metrics",
    "segmentation_metrics": "maft.metrics",
    # proposal classifiers
    "IPCLIP": "maft.ipclip",
    "ProposalEmbeddings": "maft.ipclip",
    "class_token_attention_mask": "maft.ipclip",
    "FrozenCLIP": "maft.crop_classifier",
    # proposals, losses, training, inference
    "build_proposal_generator": "maft.proposals",
    "Proposals": "maft.proposals",
    "proposal_iou": "maft.proposals",
    "save_proposals": "maft.proposals",
    "load_proposals": "maft.proposals",
    "mask_aware_loss": "maft.losses",
    "self_distillation_loss": "maft.losses",
    "maft_objective": "maft.losses",
    "TrainAugmentation": "maft.data.augment",
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
    "run_variants": "maft.studies.variants",
    # the offline world
    "WorldDataset": "maft.world",
    "ensure_world_clip": "maft.world.pretrain",
    "run_story": "maft.world.story",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'maft' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
