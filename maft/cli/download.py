"""``maft download``: SAM checkpoints, CLIP weights and datasets from their official locations.

  maft download --list [--dst data]             every known file, its size, checksum and whether it is here
  maft download sam vit_b [--dst DIR]           a SAM checkpoint (default DIR: $MAFT_CACHE/weights)
  maft download clip ViT-B-16 openai            CLIP weights into the open_clip / Hugging Face cache
  maft download data voc20 --dst data           download, verify, unpack, then `maft data prepare`

Downloads resume after an interruption and are verified against the recorded size and checksum
(maft/assets/downloads.yaml) before they are placed. MAFT_MIRROR=<base URL> replaces the official hosts
(<base><path of the official URL>); MAFT_OFFLINE=1 (or HF_HUB_OFFLINE=1) turns every download off.
"""
from __future__ import annotations

import argparse
import sys

from ..clip import resolve_pretrained
from ..data.datasets import DATASETS
from ..downloads import dataset_recipes, verified


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--list", action="store_true", help="list every known file and whether it is present")
    parser.add_argument("--dst", dest="list_dst", default="data", help="--list: the data root (default: data)")
    parser.add_argument("--weights", help="--list: where SAM checkpoints are (default: $MAFT_CACHE/weights)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    what = parser.add_subparsers(dest="what", metavar="WHAT")

    sam = what.add_parser("sam", help="a Segment Anything checkpoint")
    sam.add_argument("model_type", choices=("vit_h", "vit_l", "vit_b"))
    sam.add_argument("--dst", help="folder to put it in (default: $MAFT_CACHE/weights)")

    clip = what.add_parser("clip", help="CLIP weights through open_clip / the Hugging Face hub")
    clip.add_argument("model", help="open_clip model name, e.g. ViT-B-16")
    clip.add_argument("tag", help="open_clip pretrained tag, e.g. openai")
    clip.add_argument("--cache-dir", help="open_clip / Hugging Face cache (default: theirs)")

    data = what.add_parser("data", help="a dataset: download, verify, unpack, prepare")
    data.add_argument("dataset", choices=DATASETS)
    data.add_argument("--dst", default="data", help="data root to prepare into (default: data)")
    data.add_argument("--downloads", help="where the archives go (default: <dst>/downloads)")
    data.add_argument("--splits", nargs="+", help="only these splits (default: all)")
    data.add_argument("--max-images", type=int, help="at most this many images per split")
    data.add_argument("--overwrite", action="store_true", help="prepare again over an existing folder")
    data.add_argument("--keep-unpacked", action="store_true", help="keep the unpacked archives after preparing")


def run(args: argparse.Namespace) -> int:
    progress = not args.quiet
    if args.list:
        print(dataset_recipes.list_report(dst=args.list_dst, weights=args.weights))
    elif args.what == "sam":
        print(verified.sam_checkpoint(args.model_type, args.dst, progress=progress))
    elif args.what == "clip":
        path, _ = resolve_pretrained(args.model.replace("/", "-"), args.tag, cache_dir=args.cache_dir)
        print(path)
    elif args.what == "data":
        folder = dataset_recipes.download_dataset(
            args.dataset, dst=args.dst, downloads=args.downloads, splits=args.splits,
            max_images=args.max_images, overwrite=args.overwrite, keep_unpacked=args.keep_unpacked,
            progress=progress)
        print(f"prepared {folder}; check it with: maft data check {args.dataset} --root {folder.parent}")
    else:
        print("maft download: error: give --list, or one of sam / clip / data (see maft download -h)",
              file=sys.stderr)
        return 2
    return 0
