"""Mask proposal generators: one interface, five sources.

A generator is a callable ``generator(sample) -> Proposals``. ``sample`` is a dataset sample
(``image``: uint8 [3,H,W] RGB; ``label``: int64 [H,W], 255 = ignore, needed by GT-derived proposals
only; ``id``: str). The result holds N soft masks at image resolution and, where the generator
classifies its proposals (Mask2Former), their class probabilities A^p over the generator's own class
list (the paper's Sec. 3 and Appendix A).

Sources (``build_proposal_generator(kind, **settings)``):

- ``"gt"``: :class:`GTProposals`, ground-truth regions plus realistic corruptions covering the whole
  IoU range, seeded per (seed, sample id); for training the mask-aware loss and for analysis.
- ``"segments"``: :class:`SegmentProposals`, class-agnostic proposals that read only the image
  (graph-based segments and their merges): test-time proposals that never saw a label.
- ``"sam"``: :class:`SAMProposals`, Segment Anything's automatic mask generator around any ``Sam``
  (Sec. 5.4 of the paper uses SAM-H); :func:`load_sam` builds one from an official checkpoint.
- ``"mask2former"``: :class:`Mask2FormerProposals`, the per-query masks and class scores of a
  ``transformers`` Mask2Former; :func:`load_mask2former` loads one.
- ``"file"``: :class:`FileProposals`, proposals precomputed by anything else, stored per image.

Layout: :mod:`.types` (the result type), :mod:`.gt`, :mod:`.segments`, :mod:`.sam`, :mod:`.mask2former`,
:mod:`.files` (the on-disk format), :mod:`.cache` (computed once per image, keyed by the settings),
:mod:`.quality` (best IoU per region, the upper bound); this module is the factory.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from ..utils.devices import check_device
from .cache import CachedProposals, settings_digest
from .files import FILE_SUFFIXES, FileProposals, export_proposals, load_proposals, save_proposals
from .gt import ALL_GT_KINDS, GT_KINDS, GTProposals, sample_rng
from .mask2former import Mask2FormerProposals, load_mask2former
from .sam import SAM_ARCHS, SAM_CHECKPOINTS, SAMProposals, build_sam, load_sam
from .segments import SegmentProposals
from .types import IGNORE_INDEX, Proposals, proposal_iou

__all__ = [
    "ALL_GT_KINDS", "FILE_SUFFIXES", "GT_KINDS", "IGNORE_INDEX", "PROPOSAL_KINDS", "SAM_ARCHS", "SAM_CHECKPOINTS",
    "CachedProposals", "FileProposals", "GTProposals", "Mask2FormerProposals", "Proposals", "SAMProposals",
    "SegmentProposals", "build_proposal_generator", "build_sam", "export_proposals", "generator_record",
    "load_mask2former", "load_proposals", "load_sam", "proposal_iou", "sample_rng", "save_proposals",
    "settings_digest",
]

PROPOSAL_KINDS = ("gt", "segments", "sam", "mask2former", "file")


def build_proposal_generator(kind: str, **settings) -> Callable[[dict], Proposals]:
    """A proposal generator by name; ``settings`` are the keyword arguments of its class.

    - ``"gt"``: :class:`GTProposals` settings.
    - ``"segments"``: :class:`SegmentProposals` settings.
    - ``"sam"``: ``model`` (a ``Sam``) or ``checkpoint`` (+ ``model_type``, default vit_h; ``device``),
      then :class:`SAMProposals` settings.
    - ``"mask2former"``: ``model`` (+ ``image_processor``) or ``name_or_path`` (+ ``device``), then
      :class:`Mask2FormerProposals` settings.
    - ``"file"`` or ``"file:DIR"``: ``directory`` (unless in the kind), ``pattern``, ``max_proposals``,
      ``scores`` ("probabilities", checked, or "logits", softmaxed; see :mod:`.files`).
    """
    if kind.startswith("file:"):
        settings = {"directory": kind[len("file:"):], **settings}
        kind = "file"
    if kind == "gt":
        return GTProposals(**settings)
    if kind == "segments":  # label-free: graph segments of the image and their merges
        return SegmentProposals(**settings)
    if kind == "sam":
        model = settings.pop("model", None)
        model_type = settings.pop("model_type", "vit_h")
        checkpoint = settings.pop("checkpoint", None)
        device = check_device(settings.pop("device", "cpu"), "proposals.settings.device")
        if model is None:
            model = load_sam(model_type, checkpoint, device=device)
        return SAMProposals(model, **settings)
    if kind == "mask2former":
        model = settings.pop("model", None)
        name_or_path = settings.pop("name_or_path", None)
        device = check_device(settings.pop("device", "cpu"), "proposals.settings.device")
        if model is None:
            if name_or_path is None:
                raise ValueError("build_proposal_generator('mask2former') needs model=... or "
                                 "name_or_path=...")
            model, processor = load_mask2former(name_or_path, device=device)
            settings.setdefault("image_processor", processor)
        return Mask2FormerProposals(model, **settings)
    if kind == "file":
        if "directory" not in settings:
            raise ValueError("build_proposal_generator('file') needs directory=... (or kind 'file:DIR')")
        return FileProposals(**settings)
    raise ValueError(f"unknown proposal generator kind {kind!r}; choose from {list(PROPOSAL_KINDS)} "
                     f"or 'file:DIR'")


# Settings that never change what a generator outputs, so they do not key a cache.
_RUNTIME_SETTINGS = {"device", "points_per_batch"}


def generator_record(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that determine ``kind``'s proposals, defaults filled in (so a changed default never
    reuses an old cache): what :class:`CachedProposals` records and keys its folder by. A SAM
    checkpoint is recorded by file name and size (official names carry their md5 prefix)."""
    record: dict[str, Any] = {"kind": kind}
    if kind == "sam":
        model_type = settings.get("model_type", "vit_h")
        record["model_type"] = model_type
        checkpoint = settings.get("checkpoint")
        if checkpoint is None:
            record["checkpoint"] = SAM_CHECKPOINTS.get(model_type, f"sam_{model_type}")
        else:
            path = Path(checkpoint)
            record["checkpoint"] = path.name
            record["checkpoint_bytes"] = path.stat().st_size if path.is_file() else None
        defaults = {name: parameter.default for name, parameter in
                    inspect.signature(SAMProposals.__init__).parameters.items()
                    if name not in ("self", "sam_model")}
        given = {k: v for k, v in settings.items() if k not in ("model_type", "checkpoint")}
        unknown = sorted(set(given) - set(defaults) - _RUNTIME_SETTINGS)
        if unknown:
            raise ValueError(f"unknown SAM proposal settings {unknown}; known: "
                             f"{sorted(set(defaults) | {'model_type', 'checkpoint', 'device', 'cache'})}")
        record.update({**defaults, **given})
    else:
        record.update(settings)
    return {k: v for k, v in record.items() if k not in _RUNTIME_SETTINGS}
