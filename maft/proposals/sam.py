"""Segment Anything as the proposal generator (paper Sec. 5.4 uses SAM-H): its automatic mask generator.

``segment_anything`` is imported when SAM is used, so the rest of the package never pays for it.
:func:`build_sam` builds any architecture of :data:`SAM_ARCHS` from segment_anything's own modules;
:func:`load_sam` loads an official checkpoint into it (downloading it when none is named).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..downloads.verified import sam_checkpoint
from .types import Proposals, image_hwc

SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}


@dataclass(frozen=True)
class SAMArch:
    """One SAM architecture, in the terms of segment_anything's builder (``build_sam.py``)."""

    embed_dim: int
    depth: int
    heads: int
    global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    prompt_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_hidden_dim: int = 256


SAM_ARCHS = {
    "vit_h": SAMArch(1280, 32, 16, (7, 15, 23, 31)),
    "vit_l": SAMArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_b": SAMArch(768, 12, 12, (2, 5, 8, 11)),
    # Not a released model: SAM's layout at toy widths, for the CPU tests of the SAM profiles (random
    # weights only, like the maft-test CLIP configs). Its checkpoint name is sam_maft_test_<tag>.pth.
    "maft_test": SAMArch(32, 2, 2, (1,), image_size=128, prompt_dim=32, decoder_mlp_dim=64,
                         decoder_heads=2, iou_hidden_dim=32),
}


def build_sam(model_type: str = "vit_h"):
    """An untrained ``segment_anything`` ``Sam`` of ``model_type`` (eval mode), built from its own modules
    as its ``build_sam.py`` does (the official types give the same parameters as ``sam_model_registry``)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    if model_type not in SAM_ARCHS:
        raise ValueError(f"unknown SAM model type {model_type!r}; choose from {list(SAM_ARCHS)}")
    arch = SAM_ARCHS[model_type]
    patch = 16
    grid = arch.image_size // patch
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=arch.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.heads, patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.global_attn_indexes, window_size=14,
            out_chans=arch.prompt_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim, image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=arch.prompt_dim, mlp_dim=arch.decoder_mlp_dim,
                                          num_heads=arch.decoder_heads),
            transformer_dim=arch.prompt_dim, iou_head_depth=3, iou_head_hidden_dim=arch.iou_hidden_dim),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def load_sam(model_type: str = "vit_h", checkpoint: str | os.PathLike | None = None,
             device: str | torch.device = "cpu"):
    """A ``segment_anything`` ``Sam`` of ``model_type`` with the weights of ``checkpoint`` (eval mode).

    The official checkpoints are sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth and sam_vit_b_01ec64.pth
    (github.com/facebookresearch/segment-anything); ``checkpoint=None`` takes the official one of
    ``model_type`` from the weights folder, downloading it when missing (``maft.downloads.verified.sam_checkpoint``).
    Weights are loaded on the CPU first, so a checkpoint saved from a GPU loads on a machine without one.
    """
    if model_type not in SAM_ARCHS:
        raise ValueError(f"load_sam: unknown model_type {model_type!r}; choose from {list(SAM_ARCHS)}")
    if checkpoint is None:
        checkpoint = sam_checkpoint(model_type)
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"load_sam: SAM checkpoint {str(checkpoint)!r} not found. Download the official "
            f"{model_type} weights ({SAM_CHECKPOINTS.get(model_type, model_type)}; all: "
            f"{', '.join(SAM_CHECKPOINTS.values())}) with `maft download sam {model_type}` or from "
            f"github.com/facebookresearch/segment-anything, and pass its path as checkpoint=... "
            f"(or leave it unset to download it)")
    model = build_sam(model_type)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"load_sam: {checkpoint} does not hold {model_type} weights "
                         f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval()


class SAMProposals:
    """Segment Anything's automatic mask generator (a grid of point prompts) as a proposal generator.

    Settings are those of ``segment_anything.SamAutomaticMaskGenerator`` with its defaults (tuned for
    SAM ViT-H). Masks are binary, sorted by SAM's predicted IoU (``sort_by="predicted_iou"``), its
    stability score or area, largest first; ``max_proposals`` keeps the first ones. No class scores.
    ``min_mask_region_area > 0`` needs OpenCV (``pip install opencv-python-headless``).
    """

    SORT_KEYS = ("predicted_iou", "stability_score", "area")

    def __init__(self, sam_model, points_per_side: int | None = 32, points_per_batch: int = 64,
                 pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.95,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, crop_n_layers: int = 0,
                 crop_nms_thresh: float = 0.7, crop_overlap_ratio: float = 512 / 1500,
                 crop_n_points_downscale_factor: int = 1, point_grids: list[np.ndarray] | None = None,
                 min_mask_region_area: int = 0, max_proposals: int | None = None,
                 sort_by: str = "predicted_iou"):
        from segment_anything import SamAutomaticMaskGenerator

        if sort_by not in self.SORT_KEYS:
            raise ValueError(f"SAMProposals: sort_by must be one of {self.SORT_KEYS}, got {sort_by!r}")
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("SAMProposals: give exactly one of points_per_side and point_grids")
        if min_mask_region_area > 0:
            try:
                import cv2  # noqa: F401  (segment_anything's small-region clean-up uses OpenCV)
            except ImportError:
                raise ImportError("SAMProposals: min_mask_region_area > 0 needs OpenCV; "
                                  "pip install opencv-python-headless, or set it to 0") from None
        self.sam_model = sam_model.eval()
        self.max_proposals = max_proposals
        self.sort_by = sort_by
        self.mask_generator = SamAutomaticMaskGenerator(
            sam_model, points_per_side=points_per_side, points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
            stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
            crop_n_layers=crop_n_layers, crop_nms_thresh=crop_nms_thresh,
            crop_overlap_ratio=crop_overlap_ratio,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor, point_grids=point_grids,
            min_mask_region_area=min_mask_region_area, output_mode="binary_mask")

    def __call__(self, sample: dict) -> Proposals:
        image = image_hwc(sample, "SAMProposals")
        height, width = image.shape[:2]
        records = self.mask_generator.generate(image)
        # stable sort: equal keys keep SAM's own order, so results are reproducible
        records = sorted(records, key=lambda record: -float(record[self.sort_by]))
        if self.max_proposals is not None:
            records = records[: self.max_proposals]
        if not records:
            return Proposals.empty(height, width)
        masks = np.stack([record["segmentation"] for record in records])
        return Proposals(masks=torch.from_numpy(masks).float())
