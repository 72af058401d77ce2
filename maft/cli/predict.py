"""``maft predict``: segment one image into any class names; writes an overlay, legend, label PNG, JSON."""
from __future__ import annotations

import argparse

from ..predict import load_image, predict, predict_config, read_class_names_file
from ..utils.devices import check_device
from ..viz.figures import legend_entries
from ..viz.prediction import check_outputs, write_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="image file (jpg/png/...)")
    names = parser.add_mutually_exclusive_group(required=True)
    names.add_argument("--classes", help='comma-separated class names, e.g. "cat,dog,grass"; CSV quoting keeps '
                                         'a comma in a name: \'"hot dog, food",dog\'')
    names.add_argument("--classes-file", help="text file of class names, one per line (# starts a comment line)")
    parser.add_argument("--config", default=None,
                        help="experiment YAML or shipped config name (default: with --checkpoint its model, image "
                             "size, start layer and templates; else the package defaults, ViT-B/16 OpenAI at 480)")
    parser.add_argument("--checkpoint", default=None,
                        help="fine-tuned IP-CLIP checkpoint (maft train, or the authors' MAFT_Vitb.pt / MAFT_Vitl.pt); "
                             "run at the start layer it was trained with unless --set eval.allow_other_start_layer=true")
    parser.add_argument("--proposals", default="sam", help="sam | gt | mask2former | file:DIR (default sam)")
    parser.add_argument("--label", default=None, help="label PNG of class indices (needed by --proposals gt)")
    parser.add_argument("--out", required=True, help="overlay PNG; also writes <out>_legend.png, <out>_labels.png, <out>.json")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set model.image_size=224 (repeatable)")
    parser.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    inputs = [path for path in (args.image, args.label, args.classes_file, args.checkpoint) if path]
    check_outputs(args.out, args.overwrite, inputs)  # before loading any model
    check_device(args.device)
    classes = read_class_names_file(args.classes_file) if args.classes_file else args.classes
    config = predict_config(args.config, args.checkpoint, args.overrides)
    pixels, _ = load_image(args.image)
    result = predict(args.image, classes, config=config, checkpoint=args.checkpoint,
                     proposals=args.proposals, label=args.label, device=args.device)
    paths = write_outputs(result, pixels, args.out, overwrite=args.overwrite, inputs=inputs)
    for name, rgb, share in legend_entries(result.label_map, result.classes):
        print(f"{name:>24s}  {100 * share:5.1f}%  rgb{rgb}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
