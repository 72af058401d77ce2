"""The authors' training augmentation, applied to image, label and proposals together (torchvision v2).

The authors train with detectron2's MaskFormer semantic mapper and these settings (their released
config, github.com/jiaosiyu1999/MAFT ``out/MAFT/config.yaml``), in this order:

1. shortest-edge resize to a size drawn from 320, 384, ..., 960 (``choice``), the longer side at most
   2560; the image bilinearly (PIL, antialiased), the label with nearest neighbours (torch's
   ``"nearest"``, which puts the label up to half a source pixel up and left of the image; here the
   centre-aligned ``NEAREST_EXACT`` keeps the two aligned pixel for pixel);
2. a random 640 x 640 crop (smaller sides are kept whole; ``SINGLE_CATEGORY_MAX_AREA: 1.0``, so no
   category constraint);
3. SSD colour distortion (``COLOR_AUG_SSD``): brightness +U(-32, 32), then in random order contrast
   x U(0.5, 1.5) and saturation x U(0.5, 1.5) / hue +U(-18, 18) degrees of OpenCV's 180, each with
   probability 1/2;
4. a horizontal flip with probability 1/2;
5. padding to 640 x 640 at the bottom and right: image 128, label the ignore value.

The 640 x 640 image then goes, whole, to CLIP at 480 x 480 (``train.py`` resizes it like any other).
:class:`TrainAugmentation` does the same with ``torchvision.transforms.v2`` kernels on ``tv_tensors``
(one set of drawn parameters for image, label and, for proposals read from files, their masks). Two
steps differ in form, not in range: saturation blends with the grey image (torchvision) instead of
scaling HSV saturation (OpenCV), and values are truncated to uint8 after each step as OpenCV's
``astype`` does only for brightness and contrast.

Randomness comes from a generator seeded by (seed, position in the image stream)
(:func:`stream_generator`), not from a global RNG, so the same image at the same step gets the same
augmentation on any number of ranks, DataLoader workers, or after a resume.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ..masks import resize_masks

# detectron2's MIN_SIZE_TRAIN of the authors' config: 320..960 in steps of 64
AUTHORS_AUGMENTATION: dict[str, Any] = {
    "short_edge": list(range(320, 961, 64)),
    "max_size": 2560,   # MAX_SIZE_TRAIN
    "crop": 640,        # CROP.SIZE (absolute); null = no crop and no padding
    "color": True,      # COLOR_AUG_SSD
    "flip": True,       # RANDOM_FLIP: horizontal
    "pad_value": 128,   # the image's padding value (labels pad with the ignore value)
}


def augmentation_settings(value) -> dict[str, Any] | None:
    """``train.augmentation`` as the settings of :class:`TrainAugmentation`, or None when off.

    ``true`` = the authors' settings; ``false``/``null`` = off (whole images, as at evaluation); a
    mapping = the authors' settings with these keys replaced. Bad values raise a ValueError naming the key.
    """
    if value is None or value is False:
        return None
    if value is True:
        return copy.deepcopy(AUTHORS_AUGMENTATION)
    if not isinstance(value, dict):
        raise ValueError(f"train.augmentation must be true, false or a mapping of {sorted(AUTHORS_AUGMENTATION)}, "
                         f"got {value!r}")
    unknown = sorted(set(value) - set(AUTHORS_AUGMENTATION))
    if unknown:
        raise ValueError(f"train.augmentation: unknown keys {unknown}; known: {sorted(AUTHORS_AUGMENTATION)}")
    settings = {**copy.deepcopy(AUTHORS_AUGMENTATION), **value}
    sizes = settings["short_edge"]
    sizes = [sizes] if isinstance(sizes, int) and not isinstance(sizes, bool) else sizes
    if not isinstance(sizes, (list, tuple)) or not sizes or not all(_positive_int(s) for s in sizes):
        raise ValueError(f"train.augmentation.short_edge must be a positive integer or a list of them, "
                         f"got {settings['short_edge']!r}")
    settings["short_edge"] = list(sizes)
    for key in ("max_size", "crop"):
        if settings[key] is not None and not _positive_int(settings[key]):
            raise ValueError(f"train.augmentation.{key} must be null or a positive integer, got {settings[key]!r}")
    for key in ("color", "flip"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"train.augmentation.{key} must be true or false, got {settings[key]!r}")
    pad = settings["pad_value"]
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= 255:
        raise ValueError(f"train.augmentation.pad_value must be an integer in 0..255, got {settings['pad_value']!r}")
    return settings


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def stream_generator(seed: int, position: int) -> torch.Generator:
    """A torch generator seeded by (seed, position of the image in the training stream)."""
    state = np.random.SeedSequence([int(seed), int(position)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _coin(generator: torch.Generator) -> bool:
    return bool(torch.randint(2, (), generator=generator))


@dataclass
class AugmentParams:
    """The draws for one image: resize target, crop box, colour steps, flip."""

    size: tuple[int, int]
    top: int
    left: int
    crop: tuple[int, int] | None
    color: list[tuple[str, float]]
    flip: bool


class TrainAugmentation:
    """The authors' augmentation (see the module doc) for one dataset's ignore value."""

    def __init__(self, ignore_index: int = 255, **settings):
        settings = augmentation_settings(settings or True)
        self.ignore_index = int(ignore_index)
        self.short_edge = settings["short_edge"]
        self.max_size, self.crop = settings["max_size"], settings["crop"]
        self.color, self.flip, self.pad_value = settings["color"], settings["flip"], settings["pad_value"]

    def output_size(self, height: int, width: int, short: int) -> tuple[int, int]:
        """detectron2's ResizeShortestEdge: the shorter side to ``short``, the longer at most max_size."""
        scale = short / min(height, width)
        new_h, new_w = height * scale, width * scale
        if self.max_size is not None and max(new_h, new_w) > self.max_size:
            shrink = self.max_size / max(new_h, new_w)
            new_h, new_w = new_h * shrink, new_w * shrink
        return int(new_h + 0.5), int(new_w + 0.5)

    def draw(self, height: int, width: int, generator: torch.Generator) -> AugmentParams:
        short = self.short_edge[int(torch.randint(len(self.short_edge), (), generator=generator))]
        size = self.output_size(height, width, short)
        top = left = 0
        crop = None
        if self.crop is not None:
            crop = (min(self.crop, size[0]), min(self.crop, size[1]))
            top = int(torch.randint(size[0] - crop[0] + 1, (), generator=generator))
            left = int(torch.randint(size[1] - crop[1] + 1, (), generator=generator))
        flip = self.flip and _coin(generator)
        # drawn last, so switching colour off leaves the geometry of every image as it was
        color = self._draw_color(generator) if self.color else []
        return AugmentParams(size, top, left, crop, color, flip)

    @staticmethod
    def _draw_color(generator: torch.Generator) -> list[tuple[str, float]]:
        """The SSD distortion's steps in order, each already decided (a skipped step is left out)."""
        steps = []
        if _coin(generator):
            steps.append(("brightness", _uniform(generator, -32.0, 32.0)))
        contrast_first = _coin(generator)
        contrast = [("contrast", _uniform(generator, 0.5, 1.5))] if _coin(generator) else []
        saturation = [("saturation", _uniform(generator, 0.5, 1.5))] if _coin(generator) else []
        hue = [("hue", float(torch.randint(-18, 19, (), generator=generator)))] if _coin(generator) else []
        return steps + (contrast + saturation + hue if contrast_first else saturation + hue + contrast)

    def __call__(self, sample: dict, generator: torch.Generator) -> dict:
        """A copy of ``sample`` with ``image``, ``label`` (and ``proposals``, if present) augmented."""
        image, label = sample["image"], sample["label"]
        params = self.draw(image.shape[-2], image.shape[-1], generator)
        image = TF.resize(tv_tensors.Image(image), list(params.size), InterpolationMode.BILINEAR, antialias=True)
        # nearest with pixel centres aligned (PIL's nearest) so the label sits on the bilinear image; the
        # authors' detectron2 resizes float labels with torch's "nearest", shifted by up to half a pixel
        label = TF.resize(tv_tensors.Mask(label), list(params.size), InterpolationMode.NEAREST_EXACT)
        image = self._geometry(image, params)
        for step, value in params.color:  # before padding, as the authors: the padding stays 128
            image = _COLOR_STEPS[step](image, value)
        image = self._pad(image, params, self.pad_value)
        label = self._pad(self._geometry(label, params), params, self.ignore_index)
        out = {**sample, "image": image.as_subclass(torch.Tensor), "label": label.as_subclass(torch.Tensor)}
        if "proposals" in sample:
            out["proposals"] = self._proposals(sample["proposals"], params)
        return out

    @staticmethod
    def _geometry(x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Crop and flip: the same box and flip for every tensor of the sample."""
        if params.crop is not None:
            x = TF.crop(x, params.top, params.left, *params.crop)
        return TF.horizontal_flip(x) if params.flip else x

    def _pad(self, x: torch.Tensor, params: AugmentParams, fill: float) -> torch.Tensor:
        """Pad a smaller crop to crop x crop at the bottom and right (detectron2's size divisibility)."""
        if params.crop is None:
            return x
        bottom, right = self.crop - params.crop[0], self.crop - params.crop[1]
        return TF.pad(x, [0, 0, right, bottom], fill=fill) if bottom or right else x

    def _proposals(self, proposals, params: AugmentParams):
        """Proposals read from files (made on the original image) moved along: bilinear like every
        proposal resize (maft.masks), then the same crop, flip and padding (0: outside every proposal)."""
        masks = resize_masks(proposals.masks.float(), params.size)
        masks = self._pad(self._geometry(masks, params), params, 0.0)
        return type(proposals)(masks=masks, scores=proposals.scores, classes=proposals.classes,
                               kinds=proposals.kinds, source_class=proposals.source_class)


def _brightness(image: torch.Tensor, delta: float) -> torch.Tensor:
    return (image.float() + delta).clamp_(0, 255).to(torch.uint8)  # truncates, as OpenCV's astype


def _contrast(image: torch.Tensor, alpha: float) -> torch.Tensor:
    return (image.float() * alpha).clamp_(0, 255).to(torch.uint8)  # SSD's "contrast" scales the values


_COLOR_STEPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": lambda image, alpha: TF.adjust_saturation(image, alpha),
    "hue": lambda image, degrees: TF.adjust_hue(image, degrees / 180.0),  # OpenCV hue spans 0..180
}


class AugmentedDataset(torch.utils.data.Dataset):
    """Training samples through :class:`TrainAugmentation`; keys are ``(index, stream position)``.

    ``precomputed``: a proposal generator whose proposals do not depend on the image's pixels (files
    made on the original image); they are read before augmenting and moved with the image. Other
    generators (GT-derived, SAM, Mask2Former) run afterwards on the augmented sample, as the authors'
    proposal generator runs on the augmented image.
    """

    def __init__(self, dataset, augmentation: TrainAugmentation, seed: int, precomputed: Callable | None = None):
        self.dataset, self.augmentation, self.seed, self.precomputed = dataset, augmentation, int(seed), precomputed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        index, position = key
        sample = self.dataset[index]
        if self.precomputed is not None:
            sample = {**sample, "proposals": self.precomputed(sample)}
        return self.augmentation(sample, stream_generator(self.seed, position))
