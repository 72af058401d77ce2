"""The ``maft`` command line: one subcommand per concept, each defined next to its code.

Each entry maps a subcommand to a module exposing ``add_arguments(parser)`` and ``run(args)``;
modules are imported only when their subcommand runs, so ``maft --help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "data": ("maft.prepare", "prepare or check a dataset root"),
    "bench": ("maft.bench", "FLOPs and latency: plain tower, IP-CLIP, crop-and-classify"),
    "train": ("maft.train", "mask-aware fine-tuning from a YAML config"),
    "eval": ("maft.evaluate", "zero-shot segmentation evaluation from a YAML config"),
    "predict": ("maft.predict", "segment one image with any class names"),
    "world": ("maft.world", "the offline synthetic world: pretrain its tiny CLIP, run the story"),
    "notebooks": ("maft.notebooks", "run the numbered notebook series for a profile"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maft", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or a clear error, then exits
        return
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"maft {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    result = module.run(args)
    if isinstance(result, int):
        sys.exit(result)
