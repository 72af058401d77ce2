"""The ``maft`` command line: one subcommand per concept, each in its own module here.

The library never parses arguments; each module of this package maps a subcommand to it with
``add_arguments(parser)`` and ``run(args)``. Subcommand modules are imported only when their subcommand
runs, so ``maft --help`` stays fast. A user error (a bad value, a missing file, an output that exists) is
reported as one line, ``maft <command>: error: ...``, with exit code 2 as argparse does; ``--debug`` (or
``MAFT_DEBUG=1``) shows the traceback instead. Warnings (an image's alpha dropped, a run without any
prediction) are one line too, ``maft <command>: warning: ...``. Ctrl-C ends with one line (exit 130):
what was interrupted and, for ``maft train``, where its last checkpoint is and how to resume.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

COMMANDS = {
    "data": ("maft.cli.data", "prepare or check a dataset root"),
    "download": ("maft.cli.download", "SAM checkpoints, CLIP weights and datasets from their official locations"),
    "bench": ("maft.cli.bench", "FLOPs and latency: plain tower, IP-CLIP, crop-and-classify"),
    "train": ("maft.cli.train", "mask-aware fine-tuning from a YAML config"),
    "eval": ("maft.cli.eval", "zero-shot segmentation evaluation from a YAML config"),
    "predict": ("maft.cli.predict", "segment one image with any class names"),
    "world": ("maft.cli.world", "the offline synthetic world: pretrain its tiny CLIP, run the story"),
    "notebooks": ("maft.cli.notebooks", "run the numbered notebook series for a profile"),
}
# What a user can cause and fix: bad values and files. Anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maft", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("MAFT_DEBUG", "") not in ("", "0")
    if argv and argv[0] == "--debug":
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        build_parser().parse_args(argv)  # prints help or a clear error, then exits
        return
    name, rest = argv[0], argv[1:]
    if "--debug" in rest:
        debug, rest = True, [a for a in rest if a != "--debug"]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"maft {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        with warnings.catch_warnings():  # the one-line form below, for this command only
            if not debug:
                warnings.showwarning = lambda message, *_, **__: print(f"maft {name}: warning: {message}",
                                                                        file=sys.stderr)
            result = module.run(args)
    except USER_ERRORS as error:
        if debug:
            raise
        parser.exit(2, f"maft {name}: error: {error}\n")
    except KeyboardInterrupt as interrupt:
        if debug:
            raise
        # maft.train's TrainingInterrupted says where the last checkpoint is and how to resume
        parser.exit(130, f"maft {name}: interrupted{': ' + str(interrupt) if str(interrupt) else ''}\n")
    if isinstance(result, int):
        sys.exit(result)
