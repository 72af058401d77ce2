"""The files ``maft predict --out X.png`` writes for one prediction: the coloured overlay, a legend figure, the
label map as PNG and a JSON summary. Kept out of :mod:`maft.predict` so that the pipeline never draws."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..inference import NO_PREDICTION
from ..utils.paths import check_output_path, write_json
from .figures import legend_entries, overlay, overlay_figure, save_figure

# Value of "no proposal covers this pixel" in the written label PNG (8-bit up to 254 classes, else 16-bit).
LABELS_NONE_8BIT = 255
LABELS_NONE_16BIT = 65535


def output_paths(out: str | Path) -> dict[str, Path]:
    """The files ``maft predict --out X.png`` writes: the overlay, a legend figure, the label map
    (PNG of class indices, 255 = no prediction; 16-bit with 65535 from 255 classes on) and a JSON summary."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {str(out)!r}: the overlay is written as PNG, give a .png path")
    stem = out.with_suffix("")
    return {"overlay": out, "legend": Path(f"{stem}_legend.png"), "labels": Path(f"{stem}_labels.png"),
            "summary": Path(f"{stem}.json")}


def check_outputs(out: str | Path, overwrite: bool = False, inputs: Sequence = ()) -> dict[str, Path]:
    """:func:`output_paths` after checking they can be written (:func:`maft.utils.paths.check_output_path`),
    that none of them is one of the ``inputs`` (the image, the label: even ``overwrite`` never replaces
    what the user gave) and, without ``overwrite``, that none exists; meant to run before any model is
    loaded."""
    paths = output_paths(out)
    for path in paths.values():
        check_output_path(path, "--out")
    for given in inputs:
        if not isinstance(given, (str, os.PathLike)) or not Path(given).exists():
            continue
        for kind, path in paths.items():
            if path.exists() and path.samefile(given) or path.resolve() == Path(given).resolve():
                raise ValueError(f"--out {str(out)!r}: its {kind} file {str(path)!r} is the input {str(given)!r}; "
                                 "give another --out (the input is never overwritten)")
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} exist; pass --overwrite (overwrite=True) or another --out")
    return paths


def write_outputs(result, image, out: str | Path, overwrite: bool = False, inputs: Sequence = ()) -> dict[str, Path]:
    """Write a :class:`maft.predict.PredictResult` of ``image`` (uint8 [3,H,W]) as :func:`output_paths` says;
    none of the files may be one of the ``inputs`` (:func:`check_outputs`)."""
    paths = check_outputs(out, overwrite, inputs)
    paths["overlay"].parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, result.label_map, result.classes)).save(paths["overlay"])
    labels = result.label_map.numpy()
    none_value = LABELS_NONE_8BIT if len(result.classes) < LABELS_NONE_8BIT else LABELS_NONE_16BIT
    stored = np.where(labels == NO_PREDICTION, none_value, labels)
    Image.fromarray(stored.astype(np.uint8 if none_value == LABELS_NONE_8BIT else np.uint16)).save(paths["labels"])
    fig = overlay_figure(image, result.label_map, result.classes)
    save_figure(fig, paths["legend"])
    summary = {
        "classes": result.classes,
        "labels_png_no_prediction": none_value,
        "n_proposals": int(result.probs.shape[0]),
        "legend": [{"class": name, "rgb": list(rgb), "pixel_fraction": round(share, 6)}
                   for name, rgb, share in legend_entries(result.label_map, result.classes)],
    }
    write_json(summary, paths["summary"])
    return paths
