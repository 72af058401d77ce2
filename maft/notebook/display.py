"""Showing maft's figures wherever a notebook reader looks: live JupyterLab, papermill-executed
notebooks and their HTML exports.

``maft.viz.figures`` builds ``matplotlib.figure.Figure`` objects without pyplot, so IPython's inline backend
never activates and a figure displays as its text repr (``<Figure size 1100x420 with 2 Axes>``).
The notebooks' one setup call (:func:`maft.notebook.setup`) therefore calls :func:`enable_notebook_figures`, which
registers a PNG representation for ``Figure`` with the shell's display formatter. The PNG lands in the
cell's output (as ``image/png``), so executed notebooks and nbconvert's HTML carry the picture too; a
figure saved with ``nb.save`` also carries its file name (``metadata["image/png"]["maft_figure"]``).
"""
from __future__ import annotations

import io

from IPython import get_ipython
from matplotlib.figure import Figure

# The formats IPython's inline backend can register for a Figure; if any is set, the user (or the
# inline backend, once pyplot is imported) has chosen, and we leave that choice alone.
_FIGURE_MIMETYPES = ("image/png", "image/svg+xml", "image/jpeg", "application/pdf")


def figure_png(fig, dpi: float | None = None) -> bytes:
    """The figure as PNG bytes, cropped to its content as the inline backend does."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi or fig.dpi, bbox_inches="tight",
                facecolor="white", edgecolor="white")
    return buffer.getvalue()


# Attribute :meth:`maft.notebook.session.Notebook.save` sets on a figure it wrote: the file's name travels with
# the displayed PNG as output metadata, so a reader's tools (and our tests) can tell which saved figure
# an output shows without guessing from timestamps.
FIGURE_NAME_ATTR = "_maft_figure_file"


def _with_name(fig, result):
    """``result`` of a PNG formatter with the saved file's name of ``fig`` added as output metadata."""
    name = getattr(fig, FIGURE_NAME_ATTR, None)
    if not name or result is None:
        return result
    data, metadata = result if isinstance(result, tuple) else (result, {})
    # IPython formatters may return (data, metadata); the metadata lands in the cell output
    return data, {**(metadata or {}), "maft_figure": name}


def _figure_display(fig):
    return _with_name(fig, figure_png(fig))


class _Named:
    """Another PNG formatter for Figure (the inline backend's, once pyplot is imported), with the
    saved file's name added to its output, so figures drawn through pyplot carry it too."""

    def __init__(self, formatter):
        self.formatter = formatter

    def __call__(self, fig):
        return _with_name(fig, self.formatter(fig))


def enable_notebook_figures(shell=None) -> bool:
    """Register :func:`figure_png` as the PNG display of ``matplotlib.figure.Figure`` in ``shell``
    (default: the running IPython shell). Returns True when figures display as images afterwards,
    False outside IPython. Idempotent; a format already registered for Figure is kept (a PNG one is
    wrapped so that it adds the saved file's name)."""
    shell = shell if shell is not None else get_ipython()
    if shell is None or getattr(shell, "display_formatter", None) is None:
        return False
    formatters = shell.display_formatter.formatters
    for mimetype in _FIGURE_MIMETYPES:
        formatter = formatters.get(mimetype)
        if formatter is None:
            continue
        try:
            registered = formatter.lookup_by_type(Figure)
        except KeyError:
            continue
        if mimetype == "image/png" and registered is not _figure_display and not isinstance(registered, _Named):
            formatter.for_type(Figure, _Named(registered))
        return True  # already shown as an image (ours, the inline backend's or the user's)
    if "image/png" not in formatters:
        return False
    formatters["image/png"].for_type(Figure, _figure_display)
    return True
