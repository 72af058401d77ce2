"""What a notebook profile needs before its notebooks run, fetched once: `maft notebooks` calls
:func:`fetch_profile` first, so a fresh GPU machine with internet needs only the profile's name.

For every experiment config the profile runs (its ``config``, its ``transfer_config`` and each
``transfer`` dataset, all with the profile's ``overrides``):

- the dataset: when no prepared copy is found (``data.root``, ``$MAFT_DATA``, ``data/``,
  ``../shared/data``), its official archives are downloaded, verified and prepared into ``data.root``
  (default ``data/``) by :func:`maft.downloads.dataset_recipes.download_dataset`;
- Segment Anything's proposals of the evaluation images: the checkpoint is downloaded when missing and
  every image's proposals are computed once into the proposal cache (:mod:`maft.proposals.cache`), with
  progress; a re-run finds them there. Of the training images, only the ones fine-tuning's steps draw
  (:func:`maft.train.drawn_images`: 1,000 steps of 16 draw at most 16,000 of COCO's 118,287 images).

CLIP weights are left to :func:`maft.clip.load_clip`, which downloads them on first use. Worlds and random
towers need nothing. Offline (``MAFT_OFFLINE=1``) a missing file fails here, before any notebook runs,
naming the file and how to provide it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import load
from ..downloads.dataset_recipes import download_dataset
from ..downloads.registry import load_registry
from ..experiment import build_dataset_split, build_generator, proposal_section
from ..proposals import CachedProposals
from ..train import drawn_images
from ..utils import paths


@dataclass
class Step:
    """One thing :func:`fetch_profile` did or found: e.g. ("voc20 val", "SAM proposals", "12 computed")."""

    what: str
    kind: str
    result: str


def profile_configs(parameters: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, config) for every experiment config the profile's notebooks run."""
    if not parameters.get("config"):
        return []  # the notebooks' own default (the world)
    overrides = list(parameters.get("overrides") or []) + [f"seed={parameters.get('seed', 0)}"]
    configs = [("config", load(parameters["config"], overrides))]
    transfer_base = parameters.get("transfer_config") or parameters["config"]
    if parameters.get("transfer_config"):
        configs.append(("transfer_config", load(transfer_base, overrides)))
    for name, extra in (parameters.get("transfer") or {}).items():
        configs.append((f"transfer {name}", load(transfer_base, overrides + list(extra))))
    return configs


def _downloadable(benchmark: str) -> bool:
    registry = load_registry()
    return any(benchmark in recipe.benchmarks for recipe in registry.datasets.values())


def ensure_dataset(config: dict[str, Any], split_key: str, mode: str, progress: bool = True):
    """The dataset of ``data[split_key]``, downloaded and prepared first when it is not found."""
    try:
        return build_dataset_split(config, split_key, mode)
    except FileNotFoundError:
        benchmark = str(config["data"]["dataset"])
        if not _downloadable(benchmark):
            raise
    root = config["data"]["root"] or paths.REPO_ROOT / "data"
    download_dataset(benchmark, dst=root, progress=progress)
    return build_dataset_split(config, split_key, mode)


def fetch_profile(parameters: dict[str, Any], progress: bool = True) -> list[Step]:
    """Fetch and precompute what the profile's configs need (module doc); returns what was done."""
    steps: list[Step] = []
    seen: set[tuple[str, str]] = set()
    for label, config in profile_configs(parameters):
        data = config["data"]
        uses_sam = "sam" in (proposal_section(config, "train")["kind"], proposal_section(config, "eval")["kind"])
        if not uses_sam and not _downloadable(str(data["dataset"])):
            continue  # a world or a user's folder: nothing to fetch
        # the eval split always; the train split only where this config is fine-tuned (not a transfer row)
        splits = [("eval_split", "eval")] + ([("train_split", "train")] if not label.startswith("transfer ") else [])
        for split_key, mode in splits:
            key = (str(data["dataset"]), str(data[split_key]))
            if key in seen:
                continue
            seen.add(key)
            dataset = ensure_dataset(config, split_key, mode, progress)
            steps.append(Step(f"{key[0]} {key[1]}", "dataset", f"{len(dataset)} images"))
            split = "eval" if mode == "eval" else "train"
            if proposal_section(config, split)["kind"] != "sam":
                continue
            generator = build_generator(config, split)
            if not isinstance(generator, CachedProposals):
                continue
            if split == "eval":
                limit = parameters.get("max_images")  # the images the notebooks evaluate
                indices = list(range(len(dataset) if limit is None else min(int(limit), len(dataset))))
            else:
                indices = drawn_images(config, len(dataset))  # the images fine-tuning will draw
            computed = generator.fill(dataset, indices, desc=f"SAM proposals ({key[0]} {key[1]})",
                                      progress=progress)
            steps.append(Step(f"{key[0]} {key[1]}", "SAM proposals",
                              f"{computed} computed, {len(indices) - computed} cached in {generator.directory}"))
    return steps


def describe_steps(steps: list[Step]) -> str:
    """One line per step, for the runner's output."""
    return "\n".join(f"  {step.what}: {step.kind}: {step.result}" for step in steps)
