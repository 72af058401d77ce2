"""``maft data prepare|check|list``: convert official downloads, check a prepared dataset, list roots."""
from __future__ import annotations

import argparse

from ..data import prepare
from ..data.datasets import DATASETS
from ..data.prepare import ADE847_MAX_SIZE, check_report, list_report, prepare_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare_parser = actions.add_parser("prepare", help="convert an official download into <dst>/<folder>/",
                                        description=prepare.__doc__,
                                        formatter_class=argparse.RawDescriptionHelpFormatter)
    prepare_parser.add_argument("dataset", choices=DATASETS)
    prepare_parser.add_argument("--src", required=True, help="the official download (see `maft data prepare -h`)")
    prepare_parser.add_argument("--dst", required=True, help="data root to write into (e.g. data/)")
    prepare_parser.add_argument("--splits", nargs="+", help="only these splits (default: all the source has)")
    prepare_parser.add_argument("--max-images", type=int, help="at most this many images per split (quick subsets)")
    prepare_parser.add_argument("--max-size", type=int, default=ADE847_MAX_SIZE,
                                help="ade847: resize so the shorter side is at most this (0 = keep full size)")
    prepare_parser.add_argument("--overwrite", action="store_true", help="replace an existing prepared folder")

    check = actions.add_parser("check", help="print per-class image counts of a prepared dataset")
    check.add_argument("dataset", help=f"one of {', '.join(DATASETS)}, or your own: a folder with images/, masks/ "
                       "and classes.yaml, or a class-spec YAML (see maft.data.user_folder)")
    check.add_argument("--root", help="data root (default: MAFT_DATA, then data/, then ../shared/data)")
    check.add_argument("--split", help="one split (default: every split found)")
    check.add_argument("--mode", choices=("eval", "train"), default="eval",
                       help="train = zero-shot training view (unseen classes ignored)")

    actions.add_parser("list", help="where each dataset resolves under the current data roots")


def run(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        folder = prepare_dataset(args.dataset, args.src, args.dst, splits=args.splits,
                                 max_images=args.max_images, overwrite=args.overwrite, max_size=args.max_size)
        print(f"wrote {folder}; check it with: maft data check {args.dataset} --root {folder.parent}")
    elif args.action == "check":
        print(check_report(args.dataset, root=args.root, split=args.split, mode=args.mode))
    else:
        print(list_report())
    return 0
