"""``maft notebooks``: run the numbered notebook series for a profile (:mod:`maft.notebook.series`)."""
from __future__ import annotations

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..notebook.series import NotebookFailed, run_series


def add_arguments(parser) -> None:
    parser.add_argument("--profile", default="demo", help="profile name in notebooks/profiles or a YAML path")
    parser.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (number or name)")
    parser.add_argument("--output-dir", help="default: outputs/<profile>/")
    parser.add_argument("--kernel", help="Jupyter kernel name (default: the notebooks' own)")


def check_kernel(name: str | None) -> None:
    """A ``--kernel`` that Jupyter does not know is a one-line error before any notebook (or download) runs."""
    if name is None:
        return
    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(name)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        raise ValueError(f"--kernel {name!r}: no such Jupyter kernel (installed: {installed})") from None


def run(args) -> int:
    check_kernel(args.kernel)
    try:
        runs = run_series(args.profile, only=args.only, output_dir=args.output_dir, kernel_name=args.kernel)
    except NotebookFailed as error:
        print(f"maft notebooks: {error}")
        return 1
    report = runs[0].output.parent / "report.md" if runs else None
    print(f"ran {len(runs)} notebooks in {sum(r.seconds for r in runs):.0f} s; report: {report}")
    return 0
