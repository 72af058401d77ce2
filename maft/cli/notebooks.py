"""``maft notebooks``: run the numbered notebook series for a profile (:mod:`maft.notebook.series`)."""
from __future__ import annotations

from ..notebook.series import NotebookFailed, run_series


def add_arguments(parser) -> None:
    parser.add_argument("--profile", default="demo", help="profile name in notebooks/profiles or a YAML path")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (number or name)")
    parser.add_argument("--output-dir", help="default: outputs/<profile>/")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebooks' own)")


def run(args) -> int:
    try:
        runs = run_series(args.profile, only=args.only, output_dir=args.output_dir, kernel_name=args.kernel)
    except NotebookFailed as error:
        print(f"maft notebooks: {error}")
        return 1
    report = runs[0].output.parent / "report.md" if runs else None
    print(f"ran {len(runs)} notebooks in {sum(r.seconds for r in runs):.0f} s; report: {report}")
    return 0
