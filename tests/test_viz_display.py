"""Figures as a notebook reader sees them: a PNG display for matplotlib Figures in IPython, and legends
of the classes on every segmentation figure, unseen classes marked."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from IPython.core.formatters import DisplayFormatter
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

from maft.notebook.display import enable_notebook_figures, figure_png
from maft.notebook.session import setup
from maft.viz import figures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["sky", "road", "car", "tree"]
UNSEEN = [2]


def _figure() -> Figure:
    fig = Figure(figsize=(2, 1))
    fig.add_subplot(1, 1, 1).plot([0, 1], [1, 0])
    return fig


def test_a_shell_without_the_formatter_shows_a_figure_as_text_and_with_it_as_png():
    shell = SimpleNamespace(display_formatter=DisplayFormatter())
    data, _ = shell.display_formatter.format(_figure())
    assert "image/png" not in data and data["text/plain"].startswith("<Figure size")  # the bug
    assert enable_notebook_figures(shell) is True
    data, _ = shell.display_formatter.format(_figure())
    assert data["image/png"][:8] == PNG_SIGNATURE
    assert enable_notebook_figures(shell) is True  # idempotent


def test_a_format_already_chosen_for_figures_is_kept():
    shell = SimpleNamespace(display_formatter=DisplayFormatter())
    svg = shell.display_formatter.formatters["image/svg+xml"]
    svg.for_type(Figure, lambda fig: "<svg/>")
    assert enable_notebook_figures(shell) is True
    data, _ = shell.display_formatter.format(_figure())
    assert data["image/svg+xml"] == "<svg/>" and "image/png" not in data


def test_a_figure_saved_by_the_notebook_carries_its_file_name_into_the_output(tmp_path):
    shell = SimpleNamespace(display_formatter=DisplayFormatter())
    enable_notebook_figures(shell)
    nb = setup(tmp_path)
    saved = nb.save(_figure(), "09_example")
    data, metadata = shell.display_formatter.format(saved)
    assert (tmp_path / "figures" / "09_example.png").read_bytes()[:8] == PNG_SIGNATURE
    assert data["image/png"][:8] == PNG_SIGNATURE and metadata["image/png"] == {"maft_figure": "09_example.png"}
    _, unsaved = shell.display_formatter.format(_figure())
    assert "image/png" not in unsaved  # a figure nobody saved carries no name


def test_a_png_display_registered_by_pyplot_s_inline_backend_is_wrapped_to_name_the_file(tmp_path):
    # notebook 00 imports pyplot after maft.viz.figures: the inline backend replaces the PNG display for Figure
    shell = SimpleNamespace(display_formatter=DisplayFormatter())
    enable_notebook_figures(shell)
    inline_calls = []
    shell.display_formatter.formatters["image/png"].for_type(
        Figure, lambda fig: inline_calls.append(fig) or figure_png(fig))
    assert enable_notebook_figures(shell) is True
    assert enable_notebook_figures(shell) is True  # wrapping twice would still name it, once
    saved = setup(tmp_path).save(_figure(), "00_counts")
    data, metadata = shell.display_formatter.format(saved)
    assert inline_calls == [saved]  # the inline backend's own PNG, not ours
    assert data["image/png"][:8] == PNG_SIGNATURE and metadata["image/png"] == {"maft_figure": "00_counts.png"}


def test_outside_ipython_nothing_is_registered():
    assert enable_notebook_figures(SimpleNamespace()) is False  # no display formatter: not a shell
    assert figure_png(_figure())[:8] == PNG_SIGNATURE


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def _sample(label: np.ndarray) -> dict:
    height, width = label.shape
    return {"image": torch.full((3, height, width), 120, dtype=torch.uint8), "label": torch.from_numpy(label)}


def test_segmentations_carry_one_legend_per_row_of_the_classes_it_shows():
    first = np.zeros((8, 8), dtype=np.int64)          # sky, with road in the lower half
    first[4:] = 1
    second = np.full((8, 8), 3, dtype=np.int64)       # tree, with an ignored band
    second[:2] = 255
    predicted_first = first.copy()
    predicted_first[:2, :2] = 2                        # a prediction shows car, which the truth lacks
    maps = {"frozen": [first, second], "MAFT": [predicted_first, second]}
    fig = figures.plot_segmentations([_sample(first), _sample(second)], maps, CLASSES, unseen=UNSEEN)
    legends = [_legend_texts(ax) for ax in fig.axes if ax.get_legend() is not None]
    # ground truth's classes first by pixel share, then what only a prediction shows; unseen marked
    assert legends == [["sky", "road", "car (unseen)"], ["tree"]]
    without_split = figures.plot_segmentations([_sample(first)], {"frozen": [predicted_first]}, CLASSES)
    assert [_legend_texts(ax) for ax in without_split.axes if ax.get_legend()] == [["sky", "road", "car"]]


def test_a_long_legend_says_how_many_classes_it_left_out():
    label = np.arange(16, dtype=np.int64).reshape(4, 4)
    names = [f"c{i}" for i in range(16)]
    fig = figures.plot_segmentations([_sample(label)], {}, names, max_legend=5)
    texts = next(_legend_texts(ax) for ax in fig.axes if ax.get_legend())
    assert len(texts) == 6 and texts[-1] == "... 11 more"


def test_overlay_figure_and_sample_grid_mark_unseen_classes():
    label = np.array([[0, 0, 2, 2], [0, 0, 2, 2]])
    fig = figures.overlay_figure(torch.full((3, 2, 4), 50, dtype=torch.uint8), label, CLASSES, unseen=UNSEEN)
    assert _legend_texts(fig.axes[0]) == ["sky (50.0%)", "car (unseen) (50.0%)"]
    grid = figures.sample_grid([_sample(np.ones((6, 6), dtype=np.int64)), _sample(np.full((6, 6), 2))], CLASSES,
                           columns=2, unseen=UNSEEN)
    assert [_legend_texts(ax) for ax in grid.axes if ax.get_legend()] == [["road", "car (unseen)"]]
    assert figures.figure_to_array(grid).ndim == 3


def test_the_explorer_figure_marks_the_true_class_green_and_unseen_names():
    image = torch.full((3, 10, 10), 90, dtype=torch.uint8)
    mask = torch.zeros(10, 10)
    mask[2:6, 2:6] = 1
    scores = {"frozen": torch.tensor([0.1, 0.2, 0.6, 0.1]), "MAFT": torch.tensor([0.7, 0.1, 0.1, 0.1])}
    fig = figures.plot_proposal_scores(image, mask, scores, CLASSES, k=2, true_class=2, unseen=UNSEEN, title="t")
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "t"
    frozen, maft = fig.axes[1], fig.axes[2]
    assert [t.get_text() for t in frozen.get_yticklabels()] == ["car (unseen)", "road"]  # top first
    colours = [bar.get_facecolor() for bar in frozen.patches]  # bars in top-k order
    assert colours == [to_rgba("tab:green"), to_rgba("tab:blue")]  # the true class (car) is green
    assert [t.get_text() for t in maft.get_yticklabels()] == ["sky", "road"]
    assert fig.get_size_inches()[0] > 10  # uses the width of a notebook


def test_the_explorer_figure_says_where_a_true_class_outside_the_top_k_went():
    image = torch.full((3, 10, 10), 90, dtype=torch.uint8)
    mask = torch.ones(10, 10)
    scores = {"frozen": torch.tensor([0.5, 0.3, 0.15, 0.05])}
    fig = figures.plot_proposal_scores(image, mask, scores, CLASSES, k=2, true_class=2, unseen=UNSEEN)
    assert fig.axes[1].get_xlabel() == "true class car (unseen): 0.15, rank 3"
    assert figures.plot_proposal_scores(image, mask, scores, CLASSES, k=3, true_class=2).axes[1].get_xlabel() == ""
