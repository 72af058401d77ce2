"""The one call each notebook of the series starts with, and how it saves its figures.

``nb = setup(output_dir, config, overrides)`` creates ``<output_dir>/figures``, loads the experiment
config (a shipped name or YAML path, with the profile's overrides) and returns a :class:`Notebook`;
``nb.save(fig, "01_score_vs_iou")`` writes the PNG the report links to and returns the figure, so a
cell can end with it and show it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from matplotlib.figure import Figure

from ..config import load
from .display import FIGURE_NAME_ATTR, enable_notebook_figures

FIGURE_DPI = 110


@dataclass
class Notebook:
    """Where one notebook writes (``output_dir``, ``figures``) and the config it runs."""

    output_dir: Path
    figures: Path
    config: dict | None
    saved: list[Path] = field(default_factory=list)

    def save(self, fig: Figure, name: str) -> Figure:
        """Write ``fig`` as ``figures/<name>.png`` (remembered in ``saved``, in order) and return it."""
        path = self.figures / f"{name}.png"
        fig.savefig(path, dpi=FIGURE_DPI)
        setattr(fig, FIGURE_NAME_ATTR, path.name)
        # pyplot's inline backend, imported after setup(), replaces the PNG display; wrap it again so
        # that the shown figure still names its file
        enable_notebook_figures()
        if path not in self.saved:
            self.saved.append(path)
        return fig


def setup(output_dir: str | Path, config: str | Path | dict | None = None,
          overrides: Iterable[str] = ()) -> Notebook:
    """Folders for ``output_dir`` and the experiment config (defaults filled in; None = no config)."""
    output_dir = Path(output_dir)
    figures = output_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    enable_notebook_figures()  # maft's figures show as PNG in this kernel (a no-op outside IPython)
    return Notebook(output_dir, figures, load(config, list(overrides)) if config is not None else None)
