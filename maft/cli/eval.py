"""``maft eval``: zero-shot segmentation evaluation of a config (and checkpoint) -> metrics JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..config import load
from ..evaluate import evaluate_config, format_summary
from ..utils.devices import check_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="experiment YAML (a path or a shipped config name)")
    parser.add_argument("--checkpoint", default=None,
                        help="fine-tuned IP-CLIP checkpoint (maft train, or the authors' MAFT_Vitb.pt / MAFT_Vitl.pt); "
                             "evaluated at the start layer it was trained with unless "
                             "--set eval.allow_other_start_layer=true")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set eval.ensemble_lambda=0.7 (repeatable)")
    parser.add_argument("--out", default=None, help="metrics JSON (default: eval.out or outputs/eval/<name>.json)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing metrics file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    check_device(args.device)  # before the dataset and model are built
    config = load(args.config, args.overrides)
    if config.name is None:
        config.name = Path(args.config).stem
    result = evaluate_config(config, checkpoint=args.checkpoint, out=args.out, overwrite=args.overwrite,
                             device=args.device, progress=not args.no_progress)
    print(format_summary(result))
    print(f"metrics written to {result['path']}")
    return 0
