"""``maft train``: mask-aware fine-tuning from a YAML config, or resuming a checkpoint (:mod:`maft.train`)."""
from __future__ import annotations

from ..checkpoints import load_checkpoint
from ..config import load, resolve_config_path
from ..train import finetune


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="experiment YAML: a path or a shipped name (maft/configs)")
    parser.add_argument("--resume", help="continue from this checkpoint (its config is used when --config is omitted)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing run in the output folder instead of writing to a new one")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    if args.config is None and args.resume is None:
        raise ValueError("give --config <yaml|name> (or --resume <checkpoint>)")
    if args.config is not None:
        config = load(args.config, args.overrides)
        if config.name is None:
            config.name = resolve_config_path(args.config).stem
    else:
        config = load(load_checkpoint(args.resume)["config"], args.overrides)
    summary = finetune(config, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite)
    if summary["rank"] == 0:
        final = summary["final"]
        print(f"maft train: {summary['steps']} steps, loss {final.get('loss', float('nan')):.4f} "
              f"(L_ma {final.get('loss_ma', float('nan')):.4f}, L_dis {final.get('loss_dis', float('nan')):.4f}); "
              f"checkpoint {summary['checkpoint']}")
    return 0
