"""``maft world pretrain|zero-shot|story|show``: the offline world's tiny CLIP, its probe, the story."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..utils import paths
from ..world import story
from ..world.story import format_story
from ..world import pretrain
from ..world.draw import save_scene_grid


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    pretrain = sub.add_parser("pretrain", help="pretrain (or find cached) the world CLIP, report its zero-shot accuracy")
    pretrain.add_argument("--seed", type=int, default=None)
    pretrain.add_argument("--steps", type=int, default=None)
    pretrain.add_argument("--batch-size", type=int, default=None)
    pretrain.add_argument("--out", default=None, help="checkpoint file (default: the kept one in maft/assets/world_clip when it matches these settings, else the cache, keyed by settings)")
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
    tell.add_argument("--threads", type=int, default=None,
                      help="torch CPU threads (default: torch's; on a busy machine 1 is often fastest)")
    tell.add_argument("--no-progress", action="store_true")
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
        layers = [int(v) for v in args.start_layers.split(",")] if args.start_layers else None
        result = story.run_story(seeds=args.seeds, out=args.out, quick=args.quick, config=args.config,
                                 overrides=args.overrides, checkpoint=args.checkpoint, start_layers=layers,
                                 progress=not args.no_progress)
        print(format_story(result))
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
