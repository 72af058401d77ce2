"""The "frozen CLIP" proposal classifier that MAFT replaces (paper Appendix A; ZegFormer's merge operations).

Each mask proposal is merged with its image into a sub-image, every sub-image is resized to the tower's
input size and encoded by a separate CLIP forward. Three merge operations (ZegFormer, paper Fig. 6):

* ``"mask"``: pixels outside the proposal are set to 0 in normalised space (= the CLIP mean colour); the
  whole image is kept.
* ``"crop"``: the proposal's bounding box is cut out of the image, pixels outside the proposal kept.
* ``"mask_and_crop"``: both (the best of the three in ZegFormer, and the default).

Conventions (decided here, tested in tests/test_baseline.py):

* Masks are resized to the image size with :func:`maft.masks.binarize_masks` (bilinear,
  ``align_corners=False``; a pixel is *on* when the resized value is ``>= mask_threshold``, 0.5, the same
  rule IP-CLIP applies on its patch grid, :func:`maft.masks.mask_on`).
* The bounding box is the tight box of the on pixels, optionally grown by ``crop_margin`` (a fraction of
  the box height/width on each side, clipped to the image).
* Sub-images are resized straight to ``input_size x input_size`` (aspect ratio not kept, as the paper's
  "all sub-images are resized to h x w"), bicubic with antialias like :func:`maft.clip.preprocess_images`.
* An empty proposal (no pixel on) becomes the all-zero image (the CLIP mean colour, which is also what
  ``"mask"`` gives for it); its embedding is finite and ``result.empty`` flags it.
* Sub-images of all images are encoded together in chunks of ``batch_size``.

Gradients are not blocked here: wrap calls in ``torch.no_grad()`` when the tower is frozen.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .clip import set_image_size, tower_input_size
from .ipclip import ProposalEmbeddings, check_images, check_masks
from .masks import MASK_THRESHOLD, binarize_masks

MERGE_MODES = ("mask", "crop", "mask_and_crop")


def mask_boxes(binary: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Bounding boxes of bool masks ``[N, H, W]`` as int64 ``[N, 4]`` = (top, left, bottom, right), end exclusive.

    ``margin`` grows each side by that fraction of the box height (top/bottom) or width (left/right),
    clipped to the image. An empty mask gets the whole image (its sub-image is blanked anyway).
    """
    n, height, width = binary.shape
    rows, cols = binary.any(dim=2), binary.any(dim=1)
    # argmax returns the first maximum: first on row/column from each end.
    top = rows.int().argmax(dim=1)
    bottom = height - rows.flip(1).int().argmax(dim=1)
    left = cols.int().argmax(dim=1)
    right = width - cols.flip(1).int().argmax(dim=1)
    boxes = torch.stack([top, left, bottom, right], dim=1)
    if margin:
        grow_y = torch.round((bottom - top).float() * margin).long()
        grow_x = torch.round((right - left).float() * margin).long()
        boxes = torch.stack([(top - grow_y).clamp(min=0), (left - grow_x).clamp(min=0),
                             (bottom + grow_y).clamp(max=height), (right + grow_x).clamp(max=width)], dim=1)
    empty = ~rows.any(dim=1)
    boxes[empty] = torch.tensor([0, 0, height, width], device=binary.device)
    return boxes


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[3, h, w]`` -> ``[3, size, size]``, bicubic with antialias (the CLIP preprocessing resize)."""
    if tuple(image.shape[1:]) == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False,
                         antialias=True)[0]


def merge_proposal(image: torch.Tensor, binary: torch.Tensor, box: Sequence[int], merge: str,
                   size: int, empty: bool | None = None) -> torch.Tensor:
    """One sub-image ``[3, size, size]`` from a normalised image ``[3, H, W]`` and its bool mask ``[H, W]``.

    ``empty``: whether the mask has no pixel on, if the caller already knows (saves a device sync).
    """
    if empty is None:
        empty = not bool(binary.any())
    if empty:
        return image.new_zeros(3, size, size)
    if merge in ("mask", "mask_and_crop"):
        image = image * binary.to(image.dtype)  # outside -> 0 in normalised space = CLIP mean colour
    if merge in ("crop", "mask_and_crop"):
        top, left, bottom, right = (int(v) for v in box)
        image = image[:, top:bottom, left:right]
    return resize_square(image, size)


class FrozenCLIP(nn.Module):
    """Crop-and-classify with a CLIP vision tower: one tower forward per proposal sub-image.

    ``frozen(images [B,3,H,W] normalised, masks: list of B tensors [N_b,h,w])`` -> :class:`ProposalEmbeddings`
    (same call and result as :class:`maft.ipclip.IPCLIP`; ``empty[b]`` flags masks with no pixel on).

    ``input_size``: side of the square sub-images; default the tower's own input size (``visual.image_size``,
    so a tower loaded with ``load_clip(..., image_size=480)`` crops to 480). Another size makes a resized
    copy of the tower here (:func:`maft.clip.set_image_size`; the caller's tower is untouched). For the
    classic baseline load the tower at its pretraining size (224 for ViT-B/16) rather than resizing a
    480 tower back, which would interpolate its positional embedding twice.
    """

    def __init__(self, visual: nn.Module, merge: str = "mask_and_crop", input_size: int | None = None,
                 batch_size: int = 64, mask_threshold: float = MASK_THRESHOLD, crop_margin: float = 0.0,
                 max_proposals: int = 1024):
        super().__init__()
        if merge not in MERGE_MODES:
            raise ValueError(f"merge must be one of {MERGE_MODES}, got {merge!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_margin < 0:
            raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
        if max_proposals < 1:
            raise ValueError(f"max_proposals must be >= 1, got {max_proposals}")
        native = tower_input_size(visual)
        self.input_size = native if input_size is None else int(input_size)
        if self.input_size < 1:
            raise ValueError(f"input_size must be >= 1, got {input_size}")
        if self.input_size != native:
            visual = _resized_copy(visual, self.input_size)
        self.visual = visual
        self.merge = merge
        self.batch_size = int(batch_size)
        self.mask_threshold = float(mask_threshold)
        self.crop_margin = float(crop_margin)
        self.max_proposals = int(max_proposals)

    @property
    def output_dim(self) -> int:
        return int(self.visual.output_dim)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The tower's own forward on whole images (already at ``input_size``), [B, D]."""
        check_images(images)
        out = self.visual(images)
        return out[0] if isinstance(out, tuple) else out

    def sub_images(self, images: torch.Tensor, masks: Sequence[torch.Tensor]):
        """All merged sub-images ``[sum N_b, 3, S, S]`` (image-major order) and per-image empty flags.

        Meant for inspection and small inputs; :meth:`forward` builds them chunk by chunk instead.
        """
        binaries, boxes, empty = self._prepare(images, masks)
        items = [(b, n) for b, binary in enumerate(binaries) for n in range(binary.shape[0])]
        return self._build(images, binaries, boxes, empty, items), empty

    def forward(self, images: torch.Tensor, masks: Sequence[torch.Tensor]) -> ProposalEmbeddings:
        binaries, boxes, empty = self._prepare(images, masks)
        items = [(b, n) for b, binary in enumerate(binaries) for n in range(binary.shape[0])]
        chunks = []
        for start in range(0, len(items), self.batch_size):
            subs = self._build(images, binaries, boxes, empty, items[start:start + self.batch_size])
            chunks.append(self.encode_image(subs.to(_tower_dtype(self.visual))))
        dtype, device = _tower_dtype(self.visual), images.device
        flat = torch.cat(chunks) if chunks else torch.zeros(0, self.output_dim, dtype=dtype, device=device)
        embeddings = list(flat.split([binary.shape[0] for binary in binaries]))
        return ProposalEmbeddings(embeddings, empty)

    def _prepare(self, images, masks):
        check_images(images)
        check_masks(masks, images.shape[0], self.max_proposals)
        size = tuple(images.shape[2:])
        binaries = [binarize_masks(m.to(images.device), size, self.mask_threshold) for m in masks]
        boxes = [mask_boxes(binary, self.crop_margin).tolist() for binary in binaries]
        empty = [~binary.flatten(1).any(dim=1) for binary in binaries]
        return binaries, boxes, empty

    def _build(self, images, binaries, boxes, empty, items) -> torch.Tensor:
        if not items:
            return images.new_zeros(0, 3, self.input_size, self.input_size)
        flags = [e.tolist() for e in empty]  # one device sync for all proposals, not one each
        return torch.stack([merge_proposal(images[b], binaries[b][n], boxes[b][n], self.merge, self.input_size,
                                           empty=flags[b][n]) for b, n in items])


def _tower_dtype(visual: nn.Module) -> torch.dtype:
    return next(visual.parameters()).dtype


def _resized_copy(visual: nn.Module, size: int) -> nn.Module:
    """A copy of the tower with its positional embedding resized to ``size`` (the original is untouched)."""
    resized = copy.deepcopy(visual)
    set_image_size(resized, size)
    native = getattr(visual, "maft_native", None)  # recorded by maft.clip.load_clip
    if native is not None and tuple(native["image_size"]) == (size, size):
        # back at the pretraining size: the original embedding, not an interpolation of one
        resized.positional_embedding = nn.Parameter(native["positional_embedding"].clone().to(
            resized.positional_embedding.device), requires_grad=resized.positional_embedding.requires_grad)
    return resized
