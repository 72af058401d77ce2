"""The paper's procedure for the start layer L (Table 4e): fine-tune at each candidate L, measure on a
validation split, keep the best. The paper chose L = 8 of 12 this way; the world does the same on its
``val`` split (never the test split the story reports), with the config's label-free evaluation
proposals, and :mod:`maft.world.story` then tells the story at the selected L and at the paper's L = 8.

``maft world sweep`` runs :func:`sweep_start_layer` and writes its JSON; the selected L is what
``maft/configs/world.yaml`` sets as ``model.start_layer`` (tests/test_story.py checks they agree).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

from ..config import apply_overrides, load
from ..evaluate import evaluate_config
from ..train import finetune
from ..utils import paths
from .pretrain import ensure_world_clip

CANDIDATES = (0, 2, 4, 6, 8, 10)   # the paper's Table 4e rows
SELECTION_METRIC = "hiou"


def select(rows: Sequence[dict], metric: str = SELECTION_METRIC) -> int:
    """The candidate with the highest ``metric``; on a tie the one nearest the paper's L = 8."""
    if not rows:
        raise ValueError("no start-layer rows to select from")
    best = max(row[metric] for row in rows)
    tied = [row["start_layer"] for row in rows if row[metric] == best]
    return min(tied, key=lambda layer: (abs(layer - 8), layer))


def sweep_start_layer(config: str | dict = "world", candidates: Sequence[int] = CANDIDATES, seed: int = 0,
                      split: str = "val", out: str | os.PathLike | None = None, overrides=(),
                      checkpoint: str | os.PathLike | None = None, quick: bool = False,
                      progress: bool = True) -> dict:
    """Fine-tune (L_ma + L_dis, the config's settings) at every candidate L with ``seed``, evaluate each on
    ``split``; returns and writes (``out``, default outputs/world/start_layer_sweep.json) the rows and
    the selected L."""
    started = time.perf_counter()
    out = Path(out) if out is not None else paths.outputs_dir("world") / "start_layer_sweep.json"
    runs = out.parent / f"{out.stem}_runs"
    paths.check_output_path(out, "sweep out")
    paths.check_output_path(runs, "sweep out (its run folder)", directory=True)
    if not candidates or not all(isinstance(layer, int) for layer in candidates):
        raise ValueError(f"candidates must be a non-empty list of ints, got {candidates!r}")
    base = load(config)
    if quick:
        from .story import QUICK_OVERRIDES  # the story's toy sizes (imported late: story imports this module)
        overrides = list(QUICK_OVERRIDES) + list(overrides)
    base = apply_overrides(base, [f"seed={seed}", f"data.eval_split={split}"] + list(overrides))
    if base["model"].get("pretrained") == "world" or checkpoint is not None:
        base["model"]["pretrained"] = str(checkpoint or ensure_world_clip(progress=progress))
    rows = []
    for layer in candidates:
        name = f"start_layer_{layer}"
        variant = {**apply_overrides(base, [f"model.start_layer={layer}", "train.checkpoint_every=0",
                                            f"train.out_dir={runs / name}"]), "name": name}
        trained = finetune(variant, progress=progress, overwrite=True)
        metrics = evaluate_config(variant, checkpoint=trained["checkpoint"], out=runs / f"{name}.json",
                                  overwrite=True, progress=progress)
        rows.append({"start_layer": layer, **{k: metrics[k] for k in ("miou_seen", "miou_unseen", "hiou")}})
    result = {"split": split, "seed": seed, "metric": SELECTION_METRIC, "candidates": list(candidates),
              "proposals": (base["eval"].get("proposals") or base["proposals"])["kind"],
              "images": base["eval"].get("max_images"), "iterations": base["train"]["iterations"],
              "rows": rows, "selected": select(rows), "quick": quick,
              "seconds": round(time.perf_counter() - started, 1)}
    paths.write_json(result, out, indent=1)
    return result


def attach(story_path: str | os.PathLike, sweep: dict) -> dict:
    """Keep the sweep in a story JSON told at the L it selected (``start_layer_sweep``); ValueError when
    the story was told at another L. Rewrites the file; returns the story."""
    story_path = Path(story_path)
    story = json.loads(story_path.read_text())
    if story["selected_start_layer"] != sweep["selected"]:
        raise ValueError(f"{story_path} is told at L = {story['selected_start_layer']}, the sweep selected "
                         f"L = {sweep['selected']}")
    story["start_layer_sweep"] = sweep
    paths.write_json(story, story_path, indent=1)
    return story
