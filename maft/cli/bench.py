"""``maft bench``: FLOPs and latency of the plain tower, IP-CLIP and crop-and-classify (:mod:`maft.studies.bench`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..studies.bench import DEFAULT_MODELS, DEFAULT_N, QUICK_MODELS, QUICK_N, benchmark, parse_model_spec, write_results
from ..utils import paths
from ..utils.devices import check_device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {', '.join(QUICK_MODELS)}, N in {list(QUICK_N)}, 2 repeats (seconds)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME[:RES]",
                        help=f"towers and resolutions (default {' '.join(DEFAULT_MODELS)}; without :RES the "
                             "tower's input size x 480/224)")
    parser.add_argument("--n-proposals", nargs="+", type=int, default=None, metavar="N",
                        help=f"proposal counts (default {' '.join(map(str, DEFAULT_N))})")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per case (default 3; quick 2)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls incl. the FLOP count (default 3; only the count when it took > 1 s)")
    parser.add_argument("--max-seconds", type=float, default=20.0, help="stop repeating a case after this long")
    parser.add_argument("--crop-batch-size", type=int, default=32, help="sub-images per tower call for crop")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: leave as is)")
    parser.add_argument("--out", default=None,
                        help="JSON path (default outputs/bench/<device>.json, <device>-quick.json with --quick)")


def run(args: argparse.Namespace) -> int:
    check_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    models = args.models or (QUICK_MODELS if args.quick else DEFAULT_MODELS)
    n_proposals = args.n_proposals or (QUICK_N if args.quick else DEFAULT_N)
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 3)
    warmup = args.warmup if args.warmup is not None else 3
    out = Path(args.out) if args.out else paths.outputs_dir("bench", create=False) / (
        f"{args.device}-quick.json" if args.quick else f"{args.device}.json")
    paths.check_output_path(out, "--out")  # the benchmark takes minutes; its results must have a place
    paths.check_output_path(out.with_suffix(".md"), "--out (its .md table)")
    rows = []
    for spec in models:
        name, resolution = parse_model_spec(spec)
        rows += benchmark(name, resolution, n_proposals, device=args.device, repeats=repeats, warmup=warmup,
                          crop_batch_size=args.crop_batch_size, max_seconds=args.max_seconds)
    write_results(rows, out)
    return 0
