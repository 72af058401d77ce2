"""Mask2Former (Hugging Face ``transformers``) as a proposal generator with class scores A^p.

``transformers`` is imported when Mask2Former is used, so the rest of the package never pays for it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .types import Proposals, image_hwc


def load_mask2former(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model, image_processor) of a ``transformers`` Mask2Former from a local folder or a hub id.

    A local folder needs ``config.json`` and the weights (``save_pretrained`` output); without a
    ``preprocessor_config.json`` the default Mask2Former image processor is used.
    """
    from transformers import Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor

    path = Path(name_or_path).expanduser()
    looks_local = path.exists() or path.is_absolute() or str(name_or_path).startswith((".", "~"))
    if looks_local:
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"load_mask2former: {str(path)!r} is not a folder holding a "
                                    f"Mask2Former config.json (save one with model.save_pretrained)")
        model = Mask2FormerForUniversalSegmentation.from_pretrained(path)
        processor = (Mask2FormerImageProcessor.from_pretrained(path)
                     if (path / "preprocessor_config.json").is_file() else Mask2FormerImageProcessor())
    else:
        try:
            model = Mask2FormerForUniversalSegmentation.from_pretrained(str(name_or_path))
            processor = Mask2FormerImageProcessor.from_pretrained(str(name_or_path))
        except OSError as error:
            raise FileNotFoundError(
                f"load_mask2former: could not load {str(name_or_path)!r}: not a local folder and not "
                f"available from the Hugging Face hub (offline or unknown id): {error}") from None
    return model.to(device).eval(), processor


class Mask2FormerProposals:
    """The per-query masks of a Mask2Former as proposals, with its class scores as A^p.

    masks: sigmoid of ``masks_queries_logits`` bilinearly upsampled (as logits) to the processed
    input, cropped to its unpadded part, and resized to the image size.
    scores: softmax of ``class_queries_logits`` over all C+1 columns, then the last ("no object")
    column dropped, as in Mask2Former's semantic inference and ZSSeg's ensemble; a row then sums to
    1 - p(no object), so proposals the model finds empty carry little class mass.
    ``renormalize=True`` drops the column first instead (rows sum to 1).
    ``max_proposals`` keeps the queries with the highest class probability (best first); otherwise
    the query order is kept. ``class_names`` default to the model's ``config.id2label``.
    """

    def __init__(self, model, image_processor=None, class_names: Sequence[str] | None = None,
                 max_proposals: int | None = None, renormalize: bool = False):
        if image_processor is None:
            from transformers import Mask2FormerImageProcessor
            image_processor = Mask2FormerImageProcessor()
        num_labels = model.config.num_labels
        if class_names is None:
            class_names = [model.config.id2label[i] for i in range(num_labels)]
        if len(class_names) != num_labels:
            raise ValueError(f"Mask2FormerProposals: {len(class_names)} class_names for a model with "
                             f"{num_labels} labels")
        self.model = model.eval()
        self.image_processor = image_processor
        self.class_names = list(class_names)
        self.max_proposals = max_proposals
        self.renormalize = renormalize

    @torch.no_grad()
    def __call__(self, sample: dict) -> Proposals:
        image = image_hwc(sample, "Mask2FormerProposals")
        height, width = image.shape[:2]
        parameter = next(self.model.parameters())
        inputs = self.image_processor(images=image, return_tensors="pt", input_data_format="channels_last")
        pixel_values = inputs["pixel_values"].to(parameter.device, parameter.dtype)
        pixel_mask = inputs.get("pixel_mask")
        pixel_mask = pixel_mask.to(parameter.device) if pixel_mask is not None else None
        outputs = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)

        logits = F.interpolate(outputs.masks_queries_logits.float(), size=pixel_values.shape[-2:],
                               mode="bilinear", align_corners=False)[0]
        if pixel_mask is not None:  # padding added by the processor lies bottom/right
            valid_rows = int(pixel_mask[0].any(1).sum())
            valid_cols = int(pixel_mask[0].any(0).sum())
            logits = logits[:, :valid_rows, :valid_cols]
        logits = F.interpolate(logits[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        masks = logits.sigmoid().cpu()

        class_logits = outputs.class_queries_logits[0].float()
        if self.renormalize:
            scores = class_logits[:, :-1].softmax(-1)
        else:
            scores = class_logits.softmax(-1)[:, :-1]
        proposals = Proposals(masks=masks, scores=scores.cpu(), classes=list(self.class_names))
        if self.max_proposals is not None and self.max_proposals < len(proposals):
            best = proposals.scores.max(1).values.argsort(descending=True, stable=True)
            proposals = proposals.select(best[: self.max_proposals])
        return proposals
