"""Segment Anything as the proposal generator (paper Sec. 5.4 uses SAM-H): its automatic mask generator.

``segment_anything`` is imported when SAM is used, so the rest of the package never pays for it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .types import Proposals, image_hwc

SAM_CHECKPOINTS = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}


def load_sam(model_type: str = "vit_h", checkpoint: str | os.PathLike | None = None,
             device: str | torch.device = "cpu"):
    """A ``segment_anything`` ``Sam`` of ``model_type`` with the weights of ``checkpoint`` (eval mode).

    The official checkpoints are sam_vit_h_4b8939.pth, sam_vit_l_0b3195.pth and sam_vit_b_01ec64.pth
    (github.com/facebookresearch/segment-anything). Weights are loaded on the CPU first, so a
    checkpoint saved from a GPU loads on a machine without one.
    """
    import segment_anything

    if model_type not in SAM_CHECKPOINTS:
        raise ValueError(f"load_sam: unknown model_type {model_type!r}; choose from {list(SAM_CHECKPOINTS)}")
    if checkpoint is None or not Path(checkpoint).is_file():
        raise FileNotFoundError(
            f"load_sam: SAM checkpoint {str(checkpoint)!r} not found. Download the official "
            f"{model_type} weights ({SAM_CHECKPOINTS[model_type]}; all: "
            f"{', '.join(SAM_CHECKPOINTS.values())}) from github.com/facebookresearch/segment-anything "
            f"and pass its path as checkpoint=...")
    model = segment_anything.sam_model_registry[model_type](checkpoint=None)
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
