"""``maft world pretrain|zero-shot|probe|sweep|story|readme|show``: the offline world's tiny CLIP, its probe, the story."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..utils import paths
from ..world import layer_sweep, pretrain, story
from ..world.draw import save_scene_grid
from ..world.story import format_story


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pretrain = sub.add_parser("pretrain", help="pretrain (or find cached) the world CLIP, report its zero-shot accuracy")
    pretrain.add_argument("--seed", type=int, default=None)
    pretrain.add_argument("--steps", type=int, default=None)
    pretrain.add_argument("--batch-size", type=int, default=None)
    pretrain.add_argument("--out", default=None,
                          help="checkpoint file (default: the kept one in maft/assets/world_clip when it matches "
                               "these settings, else the cache, keyed by settings)")
    pretrain.add_argument("--force", action="store_true", help="pretrain even if a cached checkpoint exists")
    pretrain.add_argument("--print-path", action="store_true", help="print only the checkpoint path")
    pretrain.add_argument("--no-progress", action="store_true")
    zero_shot = sub.add_parser("zero-shot", help="image-level zero-shot accuracy of a world CLIP checkpoint")
    zero_shot.add_argument("--checkpoint", default=None, help="default: the kept (or cached) default world CLIP")
    zero_shot.add_argument("--out", default=None, help="default: outputs/world/zero_shot.json")
    tell = sub.add_parser("story", help="the paper's Table 4 (a, c, e) in the world over seeds, on label-free "
                                        "test proposals -> JSON")
    tell.add_argument("--seeds", type=int, default=3)
    tell.add_argument("--out", default=None, help="default: outputs/world/story.json")
    tell.add_argument("--quick", action="store_true", help="toy sizes, for CI (numbers mean nothing)")
    tell.add_argument("--config", default="world", help="experiment config (default: maft/configs/world.yaml)")
    tell.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tell.add_argument("--start-layers", default=None,
                      help=f"comma-separated L to fine-tune at besides the default (default {story.START_LAYERS})")
    tell.add_argument("--checkpoint", default=None, help="world CLIP to use (default: the kept one)")
    tell.add_argument("--sweep", default=None,
                      help="the start-layer sweep's JSON (maft world sweep) to keep in the story; its selected L "
                           "must be the config's model.start_layer")
    tell.add_argument("--frozen-start-layers", default=None,
                      help=f"comma-separated L for the frozen IP-CLIP sweep (default {story.FROZEN_START_LAYERS})")
    tell.add_argument("--paper-story", default=None,
                      help="a story JSON told at the paper's L: its rows are reused (its seeds are recorded)")
    tell.add_argument("--paper-start-layer", type=int, default=story.PAPER_START_LAYER,
                      help=f"also tell the rows at this L when the config's differs (default "
                           f"{story.PAPER_START_LAYER}, the paper's; -1: not)")
    tell.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's; on a busy machine 1 is often fastest)")
    tell.add_argument("--no-progress", action="store_true")
    probe = sub.add_parser("probe", help="is the world's CLIP like CLIP? late readout, patch locality, zero-shot, "
                                         "class-context MI (world and real samples) -> JSON and PNG")
    probe.add_argument("--checkpoint", default=None, help="world CLIP (default: the kept one)")
    probe.add_argument("--out", default=None, help="default: outputs/world/probe.json (and .png beside it)")
    probe.add_argument("--quick", action="store_true", help="toy sizes, for CI (numbers mean little)")
    probe.add_argument("--no-real", action="store_true", help="skip the real VOC / COCO samples")
    probe.add_argument("--record", action="store_true",
                       help="also write the result into the checkpoint's JSON (its 'probe' key) and, for the kept "
                            "world CLIP, the judged targets into maft/assets/world.yaml")
    sweep = sub.add_parser("sweep", help="the paper's procedure for L (Table 4e): fine-tune at each candidate start "
                                         "layer, evaluate on the val split, select the best -> JSON")
    sweep.add_argument("--candidates", default=",".join(map(str, layer_sweep.CANDIDATES)))
    sweep.add_argument("--seed", type=int, default=0)
    sweep.add_argument("--split", default="val")
    sweep.add_argument("--out", default=None, help="default: outputs/world/start_layer_sweep.json")
    sweep.add_argument("--config", default="world")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    sweep.add_argument("--checkpoint", default=None, help="world CLIP to use (default: the kept one)")
    sweep.add_argument("--quick", action="store_true", help="toy sizes, for CI (numbers mean nothing)")
    sweep.add_argument("--threads", type=int, default=None)
    sweep.add_argument("--no-progress", action="store_true")
    sweep.add_argument("--attach", nargs=2, metavar=("SWEEP_JSON", "STORY_JSON"), default=None,
                       help="run nothing: keep a finished sweep in a story told at the L it selected")
    readme = sub.add_parser("readme", help="write the README's world section from the reference story JSON "
                                           "(maft/assets/world_story.json); --check: only compare")
    readme.add_argument("--story", default=None, help="default: maft/assets/world_story.json")
    readme.add_argument("--check", action="store_true")
    show = sub.add_parser("show", help="save a grid of scenes (and their label maps) as a PNG")
    show.add_argument("--split", default="train")
    show.add_argument("--count", type=int, default=16)
    show.add_argument("--out", default=None, help="default: outputs/world/<split>_scenes.png")


def run(args: argparse.Namespace) -> int:
    if args.action == "pretrain":
        settings = {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size}
        settings = {k: v for k, v in settings.items() if v is not None}
        path = Path(args.out) if args.out else pretrain.find_world_clip(**settings)
        target = paths.outputs_dir("world", create=False) / "zero_shot.json"
        if not args.print_path:
            paths.check_output_path(target, "the zero-shot report")  # written after the pretraining
        if args.force or not path.is_file():
            pretrain.pretrain_world_clip(out=path, progress=not (args.no_progress or args.print_path), **settings)
            if not args.print_path:  # the probe of issue 19 travels with the checkpoint (its JSON's "probe")
                from ..world.probe import probe as run_probe
                from ..world.probe import record_probe

                record_probe(path, run_probe(path))
        if args.print_path:
            print(path)
            return 0
        log = json.loads(Path(f"{path}.json").read_text())
        result = {"pretrain": {k: v for k, v in log.items() if k != "losses"}, "final_loss": log["losses"][-1],
                  "zero_shot": pretrain.zero_shot_accuracy(path)}
        paths.write_json(result, target, indent=1)
        print(f"world CLIP: {path} ({log['seconds']:.0f} s, {log['seconds_per_step']:.2f} s/step)")
        _print_zero_shot(result["zero_shot"])
        print(f"written to {target}")
    elif args.action == "zero-shot":
        target = paths.check_output_path(args.out or paths.outputs_dir("world", create=False) / "zero_shot.json",
                                         "--out")
        path = args.checkpoint or pretrain.ensure_world_clip()
        result = pretrain.zero_shot_accuracy(path)
        paths.write_json(result, target, indent=1)
        _print_zero_shot(result)
    elif args.action == "story":
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        layers = [int(v) for v in args.start_layers.split(",") if v] if args.start_layers is not None else None
        sweep = json.loads(Path(args.sweep).read_text()) if args.sweep else None
        frozen = ([int(v) for v in args.frozen_start_layers.split(",") if v]
                  if args.frozen_start_layers is not None else None)
        result = story.run_story(seeds=args.seeds, out=args.out, quick=args.quick, config=args.config,
                                 overrides=args.overrides, checkpoint=args.checkpoint, start_layers=layers,
                                 progress=not args.no_progress, sweep=sweep, frozen_start_layers=frozen,
                                 paper_start_layer=None if args.paper_start_layer < 0 else args.paper_start_layer,
                                 paper_story=args.paper_story)  # read when needed: it may still be running
        print(format_story(result))
    elif args.action == "sweep" and args.attach:
        layer_sweep.attach(args.attach[1], json.loads(Path(args.attach[0]).read_text()))
        print(f"{args.attach[0]} kept in {args.attach[1]} (start_layer_sweep)")
    elif args.action == "sweep":
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        try:
            candidates = [int(v) for v in args.candidates.split(",")]
        except ValueError:
            raise ValueError(f"--candidates must be comma-separated ints, got {args.candidates!r}") from None
        result = layer_sweep.sweep_start_layer(args.config, candidates, seed=args.seed, split=args.split,
                                               out=args.out, overrides=args.overrides, checkpoint=args.checkpoint,
                                               quick=args.quick, progress=not args.no_progress)
        for row in result["rows"]:
            print(f"L = {row['start_layer']:>2}: {args.split} mIoU-s {row['miou_seen']:.1f}  mIoU-u "
                  f"{row['miou_unseen']:.1f}  hIoU {row['hiou']:.1f}")
        print(f"selected L = {result['selected']} (highest {args.split} hIoU); written to "
              f"{args.out or paths.outputs_dir('world', create=False) / 'start_layer_sweep.json'}")
    elif args.action == "probe":
        _run_probe(args)
    elif args.action == "readme":
        from ..world import story_readme
        agrees = story_readme.update_readme(story_path=args.story or story_readme.REFERENCE_STORY, check=args.check)
        if args.check and not agrees:
            raise ValueError(f"README.md's world section differs from {args.story or story_readme.REFERENCE_STORY}: "
                             "run `maft world readme`")
        print("README.md's world section " + ("agrees with" if args.check else "written from") + " the story JSON")
    elif args.action == "show":
        target = paths.check_output_path(
            args.out or paths.outputs_dir("world", create=False) / f"{args.split}_scenes.png", "--out")
        save_scene_grid(args.split, args.count, target)
        print(f"written to {target}")
    return 0


def _print_zero_shot(result: dict) -> None:
    for kind in ("things", "stuff"):
        r = result[kind]
        print(f"zero-shot {kind}: seen {100 * r['accuracy_seen']:.1f}%  unseen {100 * r['accuracy_unseen']:.1f}%  "
              f"(chance {100 * r['chance']:.1f}%, {r['scenes']} scenes)")


def _run_probe(args: argparse.Namespace) -> None:
    from ..viz.figures import save_figure
    from ..world.probe import probe as run_probe
    from ..world.probe import record_probe
    from ..world.probe_plot import plot_probe

    target = paths.check_output_path(args.out or paths.outputs_dir("world", create=False) / "probe.json", "--out")
    checkpoint = Path(args.checkpoint) if args.checkpoint else pretrain.ensure_world_clip()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"world CLIP checkpoint {checkpoint} not found (maft world pretrain makes one)")
    result = run_probe(checkpoint, quick=args.quick, real=not args.no_real)
    paths.write_json(result, target, indent=1)
    save_figure(plot_probe(result), target.with_suffix(".png"))
    if args.record:
        spec = record_probe(checkpoint, result)
        print(f"probe recorded in {checkpoint}.json" + (f" and the targets in {spec}" if spec else ""))
    readout = result["readout"]
    curve = {p["k"]: p for p in readout["ablation"]}
    k = min(8, readout["depth"])
    print(f"single-thing zero-shot {100 * readout['full_accuracy']:.1f}%: keep-late K={k} "
          f"{100 * curve[k]['keep_late']:.1f}%, keep-early K={k} {100 * curve[k]['keep_early']:.1f}%; "
          f"class-token cosine to final entering block {k}: {readout['cosine_to_final'][k]:.2f}")
    print("patch probe by layer: " + " ".join(f"{100 * a:.0f}" for a in result["patch_probe"]["accuracy_by_layer"]))
    for name, part in [("world thing vs surroundings", result["context"]["world_surroundings"]),
                       ("world thing vs co-occurring thing", result["context"]["world_cooccurrence"])] + \
            [(f"{r['dataset']} {r['split']} co-occurrence", r) for r in result["context"]["real"] if "excess_bits" in r]:
        print(f"context MI, {name}: {part['excess_bits']:.3f} bits above shuffled ({part['pairs']} pairs)")
    for key, value in result["targets"].items():
        print(f"target {key}: {value['measured']} (target {value['target']}, met: {value['met']})")
    print(f"written to {target} and {target.with_suffix('.png')} ({result['seconds']:.0f} s)")
