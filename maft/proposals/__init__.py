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
:mod:`.files` (the on-disk format), :mod:`.quality` (best IoU per region, the upper bound); this module
is the factory.
"""
from __future__ import annotations

from typing import Callable

from .files import FILE_SUFFIXES, FileProposals, export_proposals, load_proposals, save_proposals
from .gt import ALL_GT_KINDS, GT_KINDS, GTProposals, sample_rng
from .mask2former import Mask2FormerProposals, load_mask2former
from .sam import SAM_CHECKPOINTS, SAMProposals, load_sam
from .segments import SegmentProposals
from .types import IGNORE_INDEX, Proposals, proposal_iou

__all__ = [
    "ALL_GT_KINDS", "FILE_SUFFIXES", "GT_KINDS", "IGNORE_INDEX", "PROPOSAL_KINDS", "SAM_CHECKPOINTS",
    "FileProposals", "GTProposals", "Mask2FormerProposals", "Proposals", "SAMProposals", "SegmentProposals",
    "build_proposal_generator", "export_proposals", "load_mask2former", "load_proposals", "load_sam",
    "proposal_iou", "sample_rng", "save_proposals",
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
    - ``"file"`` or ``"file:DIR"``: ``directory`` (unless in the kind), ``pattern``, ``max_proposals``.
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
        device = settings.pop("device", "cpu")
        if model is None:
            model = load_sam(model_type, checkpoint, device=device)
        return SAMProposals(model, **settings)
    if kind == "mask2former":
        model = settings.pop("model", None)
        name_or_path = settings.pop("name_or_path", None)
        device = settings.pop("device", "cpu")
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
