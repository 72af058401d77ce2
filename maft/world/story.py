"""The MAFT story in the offline world: the paper's Table 4 (a, c, e) over seeds, on test proposals that
never saw a label. ``maft world story`` and notebook 05 (demo profile) both run :func:`run_story`.

Rows (Table 4a): ``crop`` (frozen CLIP classifying mask & crop sub-images, the pipeline MAFT replaces),
``frozen`` (frozen IP-CLIP), ``ma_only`` (IP-CLIP fine-tuned with L_ma only) and ``maft``
(L_ma + L_dis), each with mIoU-seen / -unseen / hIoU, mask-awareness and the CLIP image encoder's
GFLOPs per image. Table 4c: the maft run's intermediate checkpoints. Table 4e: fine-tuned at other
start layers L (the maft row is the default L), and frozen IP-CLIP over the whole depth.

Which proposals each number uses:

- segmentation metrics (mIoU, hIoU): the config's ``eval.proposals``, label-free in the world
  (``segments``: graph segments of the image and their merges, maft/proposals/segments.py);
- mask-awareness and the confused-region rate: GT-derived proposals of known quality (the config's
  ``proposals``, seeded per seed), because they need proposals whose IoU spans the whole range;
- fine-tuning: GT-derived proposals, as the paper's training scores the generator's proposals against
  the ground truth.

The world CLIP and the label-free proposals hold no randomness, so ``crop``, ``frozen`` and the frozen
start-layer sweep are segmented once; their mask-awareness, on seeded GT proposals, per seed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..clip import clip_normalisation, preprocess_images
from ..config import apply_overrides, load
from ..evaluate import evaluate_config
from ..experiment import Experiment, build_experiment, build_ipclip, proposal_section
from ..inference import classify_proposals
from ..notebook.report import markdown_table
from ..studies.bench import count_flops
from ..studies.paper_results import paper_value
from ..studies.variants import confused_regions, format_mean_std, mean_and_std, run_variants, score_iou_points
from ..utils import paths
from . import load_world_spec
from .pretrain import ensure_world_clip, zero_shot_accuracy

EVALUATED = {"crop": ["eval.classifier=frozen"], "frozen": []}        # Table 4a rows without training
FINETUNED = {"ma_only": ["train.distill_weight=0"], "maft": []}        # Table 4a rows fine-tuned
ROWS = tuple(EVALUATED) + tuple(FINETUNED)
PAPER_ROWS = {"crop": "FreeSeg", "frozen": "+ IP-CLIP", "ma_only": "+ ft (L_ma)", "maft": "+ ft (L_ma + L_dis)"}
START_LAYERS = (0, 4, 10)             # Table 4e: fine-tuned at these L too; maft is the default L
PAPER_START_LAYER = 8                 # the paper's L: its rows are told there too when the selected L differs
FROZEN_START_LAYERS = (0, 2, 4, 6, 8, 10, 12)  # frozen IP-CLIP over the whole depth
ITERATION_POINTS = 5                  # Table 4c: checkpoints at 1/5, 2/5, ... of the maft run
CONFUSION_ROWS = ("frozen", "maft")   # the Fig. 1 count before and after MAFT (one more pass each)
SEGMENTATION_KEYS = ("miou", "miou_seen", "miou_unseen", "hiou", "upper_bound_hiou")
AWARENESS_KEYS = ("mask_awareness", "mask_awareness_seen", "mask_awareness_unseen", "confusion_rate")
ENTRY_KEYS = SEGMENTATION_KEYS + AWARENESS_KEYS + ("gflops",)
# --quick: the same code path at toy sizes (CI): few fine-tuning steps, few images and proposals.
QUICK_OVERRIDES = [
    "train.iterations=2", "train.batch_size=2", "eval.max_images=2",
    "proposals.settings.max_proposals=8", "proposals.settings.kinds=[part,background]",
    "eval.proposals.settings.max_proposals=8",
]
QUICK = {"start_layers": (0,), "frozen_start_layers": (0, 12), "points": 2}


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------
def _segmentation(metrics: dict) -> dict:
    return {"miou": metrics["miou"], "miou_seen": metrics["miou_seen"], "miou_unseen": metrics["miou_unseen"],
            "hiou": metrics["hiou"], "upper_bound_hiou": (metrics.get("upper_bound") or {}).get("hiou"),
            "proposals_per_image": metrics["n_proposals"] / max(metrics["n_images"], 1)}


def _awareness(metrics: dict) -> dict:
    awareness = metrics["mask_awareness"]
    return {"mask_awareness": awareness["mean"], "mask_awareness_seen": awareness.get("mean_seen"),
            "mask_awareness_unseen": awareness.get("mean_unseen")}


def _evaluate(config: dict, name: str, folder: Path, checkpoint=None, on_gt: bool = False,
              progress: bool = True) -> dict:
    """Metrics of ``config`` (fine-tuned by ``checkpoint``) on its test proposals, or on the GT-derived
    ones (``on_gt``: mask-awareness, and for :data:`CONFUSION_ROWS` the Fig. 1 confused-region rate)."""
    config = {**apply_overrides(config, ["eval.proposals=null"] if on_gt else []), "name": name}
    metrics = evaluate_config(config, checkpoint=checkpoint, out=folder / f"{name}.json", overwrite=True,
                              progress=progress)
    if not on_gt:
        return _segmentation(metrics)
    entry = _awareness(metrics)
    if name.removesuffix("_gt") in CONFUSION_ROWS:  # another pass: the points need the proposals' kinds
        experiment = build_experiment(config)  # proposals: the GT-derived ones (eval.proposals is null)
        points = score_iou_points(experiment, {name: experiment.classifier(checkpoint)},
                                  config["eval"].get("max_images"))
        entry["confusion_rate"] = confused_regions(points)[name]["confusion_rate"]
    return entry


@torch.no_grad()
def encoder_gflops(experiment: Experiment, images: int = 5) -> dict:
    """GFLOPs of the CLIP image encoder per test image on its test proposals (mean over ``images``):
    IP-CLIP (one pass; the same for frozen and fine-tuned) and crop-and-classify (one pass per proposal)."""
    crop = experiment.crop()
    classifiers = {"ipclip": experiment.frozen, "crop": crop}
    totals = {name: [] for name in classifiers}
    for index in range(min(images, len(experiment.dataset))):
        sample = experiment.dataset[index]
        masks = experiment.generator(sample).masks
        for name, classifier in classifiers.items():
            mean, std = clip_normalisation(classifier)
            totals[name].append(count_flops(lambda: classify_proposals(
                classifier, sample["image"], masks, experiment.text, experiment.image_size, mean, std)) / 1e9)
    return {name: float(np.mean(values)) for name, values in totals.items()}


@torch.no_grad()
def context_cosine(experiment: Experiment, layers: Sequence[int], images: int = 20) -> list[dict]:
    """For frozen IP-CLIP at each start layer L: the mean cosine similarity between a proposal's embedding
    and the plain image embedding. Near 1, every proposal is described as the whole scene."""
    config = experiment.config
    visual = experiment.model.visual
    mean, std = clip_normalisation(visual)
    samples = [experiment.dataset[i] for i in range(min(images, len(experiment.dataset)))]
    rows = []
    for layer in layers:
        ipclip = build_ipclip(apply_overrides(config, [f"model.start_layer={layer}"]), visual)
        values = []
        for sample in samples:
            masks = experiment.generator(sample).masks
            if not len(masks):
                continue
            pixels = preprocess_images([sample["image"]], experiment.image_size, mean, std)
            plain = torch.nn.functional.normalize(ipclip.encode_image(pixels), dim=-1)
            proposals = torch.nn.functional.normalize(ipclip(pixels, [masks])[0], dim=-1)
            values.append(float((proposals @ plain.T).mean()))
        rows.append({"start_layer": layer, "cosine_to_image": float(np.mean(values))})
    return rows


# --------------------------------------------------------------------------------------------------
# The story
# --------------------------------------------------------------------------------------------------
def _seed_list(seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise ValueError(f"seeds must be a positive int or a list of ints, got {seeds!r}")
        return list(range(seeds))
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a positive int or a non-empty list of ints, got {seeds!r}")
    return seeds


def _tell_seeds(base, seeds, runs: Path, evaluated: dict, start_layers, points: int, progress: bool,
                folder_prefix: str = "") -> dict:
    """Every seed of the story through the study engine (:func:`maft.studies.variants.run_variants`): the
    GT-proposal measures of the frozen rows (their test-proposal metrics, ``evaluated``, are seed-free),
    then every fine-tuned run and its evaluations. Returns ``{seed: {name: entry, "iterations": [...]}}``."""
    iterations = int(load(base).train.iterations)
    every = max(1, iterations // points)
    runs_to_train = {name: list(changes) + [f"train.checkpoint_every={every if name == 'maft' else 0}"]
                     for name, changes in FINETUNED.items()}
    runs_to_train.update({f"start_layer_{layer}": [f"model.start_layer={layer}", "train.checkpoint_every=0"]
                          for layer in start_layers})

    def measure(name: str, variant, folder: Path, trained: dict | None) -> dict:
        if trained is None:  # a frozen row: its seeded GT-proposal measures beside the test metrics
            return {**evaluated[name], **_evaluate(variant, f"{name}_gt", folder, on_gt=True, progress=progress)}
        entry = _evaluate(variant, name, folder, trained["checkpoint"], progress=progress)
        if name in FINETUNED:
            entry.update(_evaluate(variant, f"{name}_gt", folder, trained["checkpoint"], on_gt=True,
                                   progress=progress))
        entry["train_step_time_s"] = trained["step_time_s"]
        if name == "maft":  # Table 4c: the intermediate checkpoints of this run
            entry["iterations"] = [
                {"iterations": int(path.stem.split("_")[1]),
                 **_evaluate(variant, f"maft_{path.stem}", folder, str(path), progress=progress)}
                for path in sorted((folder / name / "checkpoints").glob("step_*.pt"))
            ] + [{"iterations": iterations, **{k: entry[k] for k in SEGMENTATION_KEYS}}]
        return entry

    told = run_variants(base, runs_to_train, seeds, runs, frozen=EVALUATED, progress=progress, measure=measure,
                        keys=(), folder_prefix=folder_prefix)["per_seed"]
    for entries in told.values():
        entries["iterations"] = entries["maft"].pop("iterations")
    return told


def _mean_std_lists(per_seed: dict, key: str, by: str) -> tuple[list, list]:
    """Mean and std over seeds of a per-seed list of points (``iterations``, ``start_layer``)."""
    keys = ("miou_seen", "miou_unseen", "hiou")
    values = {}
    for entries in per_seed.values():
        for point in entries[key]:
            values.setdefault(point[by], []).append(point)
    mean, std = [], []
    for position, points in sorted(values.items()):
        mean.append({by: position, **{k: float(np.mean([p[k] for p in points])) for k in keys}})
        std.append({by: position, **{k: float(np.std([p[k] for p in points], ddof=1)) if len(points) > 1 else 0.0
                                     for k in keys}})
    return mean, std


def _summary(per_seed: dict) -> dict:
    """Mean and std over seeds of the Table 4a rows, the iteration points and the start-layer points."""
    rows_only = {seed: {name: entries[name] for name in ROWS} for seed, entries in per_seed.items()}
    summary = mean_and_std(rows_only, ENTRY_KEYS)
    for key, by in (("iterations", "iterations"), ("start_layer", "start_layer")):
        summary["mean"][key], summary["std"][key] = _mean_std_lists(per_seed, key, by)
    return summary


def _probe_summary(probe: dict | None) -> dict | None:
    """The probe's numbers of issue 19 item 2 (targets, readout curve, context MI), without the per-class detail."""
    if probe is None:
        return None
    readout = probe["readout"]
    return {"targets": probe["targets"], "full_accuracy": readout["full_accuracy"], "ablation": readout["ablation"],
            "cosine_to_final": readout["cosine_to_final"], "class_token_reads_from": readout["class_token_reads_from"],
            "patch_probe": probe["patch_probe"]["accuracy_by_layer"],
            "context": {"world_surroundings": probe["context"]["world_surroundings"],
                        "world_cooccurrence": probe["context"]["world_cooccurrence"],
                        "real": probe["context"]["real"]}}


def paper_table4() -> dict:
    """The paper's Table 4a rows (as the story names them), 4c and 4e, for printing beside ours."""
    metrics = ("mIoU^s", "mIoU^u", "hIoU")
    keys = ("miou_seen", "miou_unseen", "hiou")
    rows = {name: {k: paper_value("4a", method, "coco_stuff171", m) for k, m in zip(keys, metrics)}
            | {"gflops": paper_value("4a", method, "coco_stuff171", "GFLOPs")} for name, method in PAPER_ROWS.items()}
    iterations = [{"iterations": label, "miou_seen": paper_value("4c", label, "coco_stuff171", "mIoU^s"),
                   "miou_unseen": paper_value("4c", label, "coco_stuff171", "mIoU^u")}
                  for label in ("500 iters", "1k iters", "2k iters", "3k iters", "4k iters", "5k iters")]
    layers = [{"start_layer": layer, **{k: paper_value("4e", str(layer), "coco_stuff171", m) for k, m in zip(keys, metrics)}}
              for layer in (0, 2, 4, 6, 8, 10)]
    return {"table_4a": rows, "iterations": iterations, "start_layer": layers,
            "dataset": "COCO-Stuff (156 seen / 15 unseen), FreeSeg proposals, ViT-B/16"}


def run_story(seeds=3, out: str | os.PathLike | None = None, quick: bool = False, config: str | dict = "world",
              overrides=(), checkpoint: str | os.PathLike | None = None, progress: bool = True,
              start_layers: Sequence[int] | None = None, frozen_start_layers: Sequence[int] | None = None,
              points: int | None = None, sweep: dict | None = None, paper_start_layer: int | None = None,
              probe: dict | None = None, paper_story: dict | str | os.PathLike | None = None) -> dict:
    """The story (module doc) as JSON in ``out`` (default outputs/world/story.json); run folders and
    per-run metrics go to ``<out stem>_runs/`` beside it. ``seeds``: a count or a list of seeds.
    ``checkpoint``: a world CLIP to use instead of the kept one.

    The rows are told at the config's start layer, ``selected_start_layer`` (the world config sets the
    one :mod:`maft.world.layer_sweep` selected on the val split; ``sweep``: that sweep's JSON, kept beside),
    and again at ``paper_start_layer`` (``maft world story`` passes the paper's L = 8; None: not, the
    demo's notebook 05, which tells the selected L only) under ``at_start_layer``.
    ``probe``: the CLIP and context probe (default: the one recorded in the checkpoint's JSON).
    ``paper_story``: a story already told at ``paper_start_layer`` with the same seeds (e.g. run beside
    the start-layer sweep; a path is read when its rows are needed, after this story's own seeds, so the
    two may run side by side); its rows are taken instead of fine-tuning again."""
    seeds = _seed_list(seeds)
    started = time.perf_counter()
    out = Path(out) if out is not None else paths.outputs_dir("world") / "story.json"
    runs = out.parent / f"{out.stem}_runs"
    # both are written after minutes of work: check them first
    paths.check_output_path(out, "story out")
    paths.check_output_path(runs, "story out (its run folder)", directory=True)
    start_layers = tuple(start_layers if start_layers is not None else QUICK["start_layers"] if quick else START_LAYERS)
    frozen_layers = tuple(frozen_start_layers if frozen_start_layers is not None
                          else QUICK["frozen_start_layers"] if quick else FROZEN_START_LAYERS)
    points = int(points or (QUICK["points"] if quick else ITERATION_POINTS))
    if checkpoint is None:
        checkpoint = ensure_world_clip(progress=progress)
    elif not Path(checkpoint).is_file():
        raise FileNotFoundError(f"world CLIP checkpoint {checkpoint} not found (maft world pretrain makes one)")
    log_file = Path(f"{checkpoint}.json")
    pretrain_log = json.loads(log_file.read_text()) if log_file.is_file() else {"losses": [None]}
    base = load(config)
    base = apply_overrides(base, list(QUICK_OVERRIDES if quick else []) + list(overrides))
    base["model"]["pretrained"] = str(checkpoint)
    zero_shot = zero_shot_accuracy(checkpoint, max_scenes=50 if quick else None)

    once = runs / "once"
    timings = {"clip_and_probe": round(time.perf_counter() - started, 1)}
    evaluated = {name: _evaluate(apply_overrides(base, changes), name, once, progress=progress)
                 for name, changes in EVALUATED.items()}
    experiment = build_experiment(base)  # frozen, on the test proposals
    gflops = encoder_gflops(experiment, images=2 if quick else 5)
    frozen_sweep = [{"start_layer": layer, **_evaluate(apply_overrides(base, [f"model.start_layer={layer}"]),
                                                       f"frozen_start_layer_{layer}", once, progress=progress)}
                    for layer in frozen_layers]
    default_layer = experiment.frozen.start_layer
    context = context_cosine(experiment, sorted(set(frozen_layers) | set(start_layers) | {default_layer}),
                             images=2 if quick else 20)
    timings["once"] = round(time.perf_counter() - started - timings["clip_and_probe"], 1)

    tick = time.perf_counter()
    per_seed = _tell_seeds(base, seeds, runs, evaluated, start_layers, points, progress)
    for entries in per_seed.values():
        for name in ROWS:
            entries[name]["gflops"] = gflops["crop" if name == "crop" else "ipclip"]
        entries["start_layer"] = sorted(
            [{"start_layer": int(name.split("_")[-1]), **{k: entries[name][k] for k in ("miou_seen", "miou_unseen", "hiou")}}
             for name in entries if name.startswith("start_layer_")]
            + [{"start_layer": default_layer, **{k: entries["maft"][k] for k in ("miou_seen", "miou_unseen", "hiou")}}],
            key=lambda point: point["start_layer"])
    timings["seeds"] = round(time.perf_counter() - tick, 1)

    summary = _summary(per_seed)
    at_layer = {str(default_layer): {"per_seed": per_seed, **summary}}
    if paper_story is not None and paper_start_layer is not None and paper_start_layer != default_layer:
        if not isinstance(paper_story, dict):
            paper_story = json.loads(Path(paper_story).read_text())
        if str(paper_start_layer) not in paper_story.get("at_start_layer", {}):
            raise ValueError(f"paper_story was not told at L = {paper_start_layer} "
                             f"(it has {sorted(paper_story.get('at_start_layer', {}))})")
        at_layer[str(paper_start_layer)] = paper_story["at_start_layer"][str(paper_start_layer)]
    elif paper_start_layer is not None and paper_start_layer != default_layer:
        tick = time.perf_counter()
        at_paper = apply_overrides(base, [f"model.start_layer={paper_start_layer}"])
        evaluated_paper = {"crop": evaluated["crop"],  # crop-and-classify has no start layer
                           "frozen": _evaluate(at_paper, "frozen", runs / f"once_L{paper_start_layer}",
                                               progress=progress)}
        paper_seeds = _tell_seeds(at_paper, seeds, runs, evaluated_paper, (), points, progress,
                                  folder_prefix=f"L{paper_start_layer}_")
        for entries in paper_seeds.values():
            for name in ROWS:
                entries[name]["gflops"] = gflops["crop" if name == "crop" else "ipclip"]
            entries["start_layer"] = [{"start_layer": paper_start_layer, **{
                k: entries["maft"][k] for k in ("miou_seen", "miou_unseen", "hiou")}}]
        at_layer[str(paper_start_layer)] = {"per_seed": paper_seeds, **_summary(paper_seeds)}
        timings[f"L = {paper_start_layer}"] = round(time.perf_counter() - tick, 1)
    if probe is None and "probe" in pretrain_log:
        probe = pretrain_log["probe"]
    spec = load_world_spec()
    test_proposals = proposal_section(base, "eval")
    story = {
        "proposals": {"train": base["proposals"]["kind"], "test": test_proposals["kind"],
                      "mask_awareness": base["proposals"]["kind"], "test_settings": test_proposals["settings"]},
        "world": {"classes": list(spec.classes), "seen": list(spec.seen), "unseen": list(spec.unseen),
                  "image_size": spec.image_size, "canvas_size": spec.canvas_size, "fingerprint": spec.fingerprint},
        "selected_start_layer": default_layer,
        "paper_start_layer": paper_start_layer,
        "at_start_layer": {layer: {k: v for k, v in told.items() if k not in ("per_seed", "seeds")} | {
            "seeds": sorted(int(seed) for seed in told["per_seed"]),  # a reused paper_story may have others
            "per_seed": {seed: {name: e[name] for name in ROWS} for seed, e in told["per_seed"].items()}}
            for layer, told in at_layer.items()},
        "start_layer_sweep": sweep,
        "probe": _probe_summary(probe),
        "clip": {"checkpoint": str(checkpoint), "pretrain": {k: v for k, v in pretrain_log.items()
                                                            if k not in ("losses", "probe")},
                 "final_loss": pretrain_log["losses"][-1], "zero_shot": zero_shot},
        "settings": {"seeds": seeds, "quick": quick, "start_layers": list(start_layers),
                     "frozen_start_layers": list(frozen_layers), "iteration_points": points, "config": base.to_dict()},
        "per_seed": per_seed,
        "mean": summary["mean"],
        "std": summary["std"],
        "frozen_start_layer": frozen_sweep,
        "context": context,
        "paper": paper_table4(),
        "seconds": {**timings, "total": round(time.perf_counter() - started, 1)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    paths.write_json(story, out, indent=1)
    return story


def format_story(story: dict) -> str:
    """A plain-text table of the story's Table 4a rows, mean +- std over seeds."""
    keys = ("miou_seen", "miou_unseen", "hiou", "mask_awareness", "gflops")
    lines = [f"{'row':<10}" + "".join(f"{k:>22}" for k in keys)]
    for name in ROWS:
        mean, std = story["mean"][name], story["std"][name]
        cells = "".join(f"{format_mean_std(mean.get(k), std.get(k), 3):>22}" for k in keys)
        lines.append(f"{name:<10}{cells}")
    lines.append("start layer L (fine-tuned, hIoU): " + ", ".join(
        f"{p['start_layer']}: {p['hiou']:.1f}" for p in story["mean"]["start_layer"]))
    lines.append("iterations (maft, mIoU-s / mIoU-u): " + ", ".join(
        f"{p['iterations']}: {p['miou_seen']:.1f} / {p['miou_unseen']:.1f}" for p in story["mean"]["iterations"]))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Reading it
# --------------------------------------------------------------------------------------------------
def _cell(mean: dict, std: dict, key: str, digits: int = 1) -> str:
    return "-" if mean.get(key) is None else format_mean_std(mean[key], std.get(key), digits)


def story_tables(story: dict) -> dict[str, str]:
    """Markdown tables of Table 4a, 4c and 4e: ours (mean ± std over seeds) with the paper's beside."""
    mean, std, paper = story["mean"], story["std"], story["paper"]
    seeds = len(story["per_seed"])
    rows_4a = []
    for name in ROWS:
        theirs = paper["table_4a"][name]
        rows_4a.append({
            "row": name, "mIoU-s": _cell(mean[name], std[name], "miou_seen"),
            "mIoU-u": _cell(mean[name], std[name], "miou_unseen"), "hIoU": _cell(mean[name], std[name], "hiou"),
            "mask-awareness": _cell(mean[name], std[name], "mask_awareness", 3),
            "GFLOPs": f"{mean[name]['gflops']:.2f}",
            "paper (mIoU-s / -u / hIoU, GFLOPs)": f"{theirs['miou_seen']} / {theirs['miou_unseen']} / "
                                                   f"{theirs['hiou']}, {theirs['gflops']}"})
    rows_4c = [{"iterations": p["iterations"], "mIoU-s": _cell(p, q, "miou_seen"), "mIoU-u": _cell(p, q, "miou_unseen")}
               for p, q in zip(mean["iterations"], std["iterations"])]
    rows_4c_paper = [{"iterations": p["iterations"], "mIoU-s": p["miou_seen"], "mIoU-u": p["miou_unseen"]}
                     for p in paper["iterations"]]
    paper_layers = {p["start_layer"]: p for p in paper["start_layer"]}
    frozen = {p["start_layer"]: p for p in story.get("frozen_start_layer", [])}
    context = {p["start_layer"]: p["cosine_to_image"] for p in story.get("context", [])}
    layers = sorted({p["start_layer"] for p in mean["start_layer"]} | set(frozen))
    fine = {p["start_layer"]: (p, q) for p, q in zip(mean["start_layer"], std["start_layer"])}
    rows_4e = [{"L": layer,
                "fine-tuned hIoU": _cell(*fine[layer], "hiou") if layer in fine else "-",
                "frozen hIoU": f"{frozen[layer]['hiou']:.1f}" if layer in frozen else "-",
                "cosine(proposal, image)": f"{context[layer]:.2f}" if layer in context else "-",
                "paper hIoU (fine-tuned)": paper_layers[layer]["hiou"] if layer in paper_layers else "-"}
               for layer in layers]
    return {
        f"Table 4a: components at L = {story.get('selected_start_layer', story['settings']['config']['model']['start_layer'])} "
        f"({seeds} seeds; test proposals: {story['proposals']['test']}, mask-awareness on "
        f"{story['proposals']['mask_awareness']}; paper: {paper['dataset']})": markdown_table(rows_4a),
        f"Table 4c: fine-tuning iterations (maft; {seeds} seeds)": markdown_table(rows_4c),
        "Table 4c in the paper": markdown_table(rows_4c_paper, digits=1),
        "Table 4e: start layer L (fine-tuned over seeds; frozen and the cosine of a proposal's embedding "
        "with the whole image's once)": markdown_table(rows_4e, digits=1),
    }


def story_metrics(story: dict) -> dict:
    """What notebook 05 writes to its metrics JSON: the numbers, no timings or paths (a rerun with the
    same seeds rewrites it byte for byte)."""
    per_seed = {seed: {name: {k: v for k, v in entry.items() if k in ENTRY_KEYS} for name, entry in entries.items()
                       if name in ROWS} for seed, entries in story["per_seed"].items()}
    return {"proposals": story["proposals"], "seeds": story["settings"]["seeds"], "per_seed": per_seed,
            "mean": story["mean"], "std": story["std"], "frozen_start_layer": story["frozen_start_layer"],
            "context": story["context"], "zero_shot": {k: story["clip"]["zero_shot"][k] for k in ("things", "stuff")}}
