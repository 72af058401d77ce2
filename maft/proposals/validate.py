"""Checks of proposal files written by other programs, before their contents are used.

A generator's ``scores`` must be class probabilities: finite and in [0, 1]. Logits (negative values)
or infinities would make the geometric ensemble of :func:`maft.inference.ensemble_scores` NaN (a
negative number to a fractional power), and NaN spreads to every pixel. Files holding logits can be
read with the ``scores: logits`` setting (``proposals.settings.scores=logits``), which applies a softmax
over each proposal's classes.

COCO RLE records are checked for types and lengths before pycocotools decodes them: it trusts the
counts, and decodes a too-short RLE from uninitialised memory.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SCORE_KINDS = ("probabilities", "logits")


def check_score_kind(kind: str) -> str:
    if kind not in SCORE_KINDS:
        raise ValueError(f"proposal files: scores={kind!r} is not one of {SCORE_KINDS} "
                         "(the setting says what the files' 'scores' hold)")
    return kind


def checked_scores(scores: torch.Tensor | None, path: Path, kind: str = "probabilities") -> torch.Tensor | None:
    """``scores`` [N, C] as probabilities: checked (``kind="probabilities"``) or softmaxed (``"logits"``)."""
    if scores is None:
        return None
    scores = scores.float()
    if scores.numel() and not torch.isfinite(scores).all():
        bad = scores[~torch.isfinite(scores)][0].item()
        raise ValueError(f"{path}: 'scores' holds a non-finite value ({bad}); scores must be finite class "
                         "probabilities in [0, 1]")
    if kind == "logits":
        return scores.softmax(dim=-1) if scores.ndim == 2 else scores
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"{path}: 'scores' range over [{scores.min().item():.4g}, {scores.max().item():.4g}] but "
                         "must be class probabilities in [0, 1]; if they are logits, apply a softmax over the "
                         "classes when writing, or read them with proposals.settings.scores=logits")
    return scores


def json_scores(values: list, path: Path) -> torch.Tensor:
    """The per-record ``scores`` lists of a JSON file as one [N, C] tensor; ragged or non-numeric lists
    are refused naming the file and the record."""
    width = None
    for i, row in enumerate(values):
        if not isinstance(row, list) or not all(_is_number(v) for v in row):
            raise ValueError(f"{path}: record {i} 'scores' must be a list of numbers, got {_short(row)}")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise ValueError(f"{path}: record {i} has {len(row)} 'scores' but record 0 has {width}; every record "
                             "scores the same classes")
    return torch.tensor(values, dtype=torch.float)


def checked_rle(rle: dict, path: Path, index: int) -> dict:
    """A COCO RLE ``{"size": [H, W], "counts": str | [int]}`` checked and ready for pycocotools' decode
    (compressed counts as bytes). The runs must cover exactly H * W pixels."""
    where = f"{path}: record {index}"
    size = rle["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ValueError(f"{where}: RLE 'size' must be [height, width], two positive integers, got {_short(size)}")
    height, width = size
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE: run lengths, starting with a run of 0s
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
            raise ValueError(f"{where}: uncompressed RLE 'counts' must be non-negative integers")
        runs = counts
    elif isinstance(counts, str):
        try:
            runs = decode_counts(counts)
        except ValueError as error:
            raise ValueError(f"{where}: RLE 'counts' is not a COCO RLE string ({error})") from None
    else:
        raise ValueError(f"{where}: RLE 'counts' must be a COCO RLE string or a list of run lengths, "
                         f"got {type(counts).__name__} {_short(counts)}")
    if sum(runs) != height * width:
        raise ValueError(f"{where}: RLE runs cover {sum(runs)} pixels but its size {height}x{width} has "
                         f"{height * width}; the mask is truncated or its size is wrong")
    if isinstance(counts, str):
        return {"size": [height, width], "counts": counts.encode("ascii")}
    return {"size": [height, width], "counts": list(counts)}


def decode_counts(text: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in Python):
    6-bit groups offset by 48, 5 value bits and a continuation bit, runs from the third on stored as a
    difference to the run two before."""
    runs: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(text):
                raise ValueError("the string ends inside a run length")
            code = ord(text[position]) - 48
            if not 0 <= code < 64:
                raise ValueError(f"character {text[position]!r} at {position} is outside '0'..'o'")
            value |= (code & 0x1F) << (5 * shift)
            more = bool(code & 0x20)
            position += 1
            shift += 1
            if not more and code & 0x10:
                value |= -1 << (5 * shift)  # sign extension
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} has negative length {value}")
        runs.append(value)
    return runs


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)  # NaN/inf: checked_scores


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
