"""An ipywidgets explorer: pick an image and one of its proposals (or draw a box), compare the top-k
classes of several proposal classifiers (e.g. frozen CLIP vs MAFT).

``ProposalExplorer.figure(...)`` draws one selection as a static figure: what headless runs show, and
what the widget redraws on every change.
"""
from __future__ import annotations

from typing import Sequence

import ipywidgets as widgets
import torch
from IPython.display import display

from ..clip import clip_normalisation
from ..experiment import Experiment
from ..inference import classify_proposals
from .figures import class_label, plot_proposal_scores


class ProposalExplorer:
    def __init__(self, experiment: Experiment, classifiers: dict, k: int = 5, max_images: int | None = None):
        if len(classifiers) not in (1, 2):
            raise ValueError(f"the explorer compares one or two classifiers, got {len(classifiers)}")
        self.experiment, self.classifiers, self.k = experiment, dict(classifiers), k
        self.num_images = len(experiment.dataset) if max_images is None else min(len(experiment.dataset), max_images)
        self._cache: dict[int, tuple] = {}

    def proposals(self, index: int):
        """(sample, proposals) of image ``index``, cached."""
        if index not in self._cache:
            sample = self.experiment.dataset[index]
            self._cache[index] = (sample, self.experiment.generator(sample))
        return self._cache[index]

    def box_mask(self, index: int, rows: Sequence[int], cols: Sequence[int]) -> torch.Tensor:
        """A box proposal [1, H, W] covering ``rows`` x ``cols`` (inclusive pixel ranges)."""
        sample, _ = self.proposals(index)
        height, width = sample["image"].shape[-2:]
        mask = torch.zeros(1, height, width)
        mask[:, max(0, rows[0]):min(height, rows[1] + 1), max(0, cols[0]):min(width, cols[1] + 1)] = 1.0
        return mask

    @torch.no_grad()
    def scores(self, index: int, masks: torch.Tensor) -> list[torch.Tensor]:
        sample, _ = self.proposals(index)
        out = []
        for classifier in self.classifiers.values():
            mean, std = clip_normalisation(classifier)
            out.append(classify_proposals(classifier, sample["image"], masks.float(), self.experiment.text,
                                          self.experiment.image_size, mean, std))
        return out

    def box_from_fractions(self, index: int, rows: Sequence[float], cols: Sequence[float]):
        """Pixel ranges ((row0, row1), (col0, col1)), inclusive, of a box given as fractions of image
        ``index``'s height and width (images differ in size, so the widget's box is relative)."""
        sample, _ = self.proposals(index)
        height, width = sample["image"].shape[-2:]

        def span(fractions, size):
            first = min(size - 1, max(0, int(round(fractions[0] * size))))
            last = min(size - 1, max(first, int(round(fractions[1] * size)) - 1))
            return first, last

        return span(rows, height), span(cols, width)

    def describe(self, index: int, proposal: int = 0, box: tuple | None = None):
        """(title, true class id or None) of a selection. A GT-derived proposal's true class is the
        class it was made from; a box's or any other proposal's is the ground-truth class covering
        most of its pixels."""
        sample, proposals = self.proposals(index)
        classes, unseen = self.experiment.dataset.classes, self.experiment.dataset.unseen
        height, width = sample["image"].shape[-2:]
        if box is not None:
            (row0, row1), (col0, col1) = box
            where = f"image {index}, box rows {row0}-{row1} of {height}, cols {col0}-{col1} of {width}"
            mask = self.box_mask(index, *box)[0]
        else:
            where = f"image {index}, proposal {proposal} of {len(proposals)}"
            if proposals.kinds is not None:
                where += f" ({proposals.kinds[proposal]})"
            mask = proposals.masks[proposal]
            if proposals.source_class is not None:
                true = int(proposals.source_class[proposal])
                return f"{where}\ntrue class: {class_label(classes[true], true, unseen)}", true
        true, share = dominant_class(sample["label"], mask, len(classes))
        if true is None:
            return f"{where}\nno labelled pixels inside", None
        return f"{where}\ntrue class (most pixels): {class_label(classes[true], true, unseen)}, {share:.0%}", true

    def figure(self, index: int = 0, proposal: int = 0, box: tuple | None = None):
        """Top-k of each classifier for proposal ``proposal`` of image ``index`` (or for ``box`` =
        ((row0, row1), (col0, col1)), inclusive pixel ranges)."""
        sample, proposals = self.proposals(index)
        if box is not None:
            masks = self.box_mask(index, *box)
        else:
            if not len(proposals):
                raise ValueError(f"image {index} has no proposals; draw a box instead")
            proposal = min(max(0, proposal), len(proposals) - 1)
            masks = proposals.masks[proposal:proposal + 1]
        title, true = self.describe(index, proposal, box)
        probs = self.scores(index, masks)
        return plot_proposal_scores(sample["image"], masks[0], {name: p[0] for name, p in zip(self.classifiers, probs)},
                                    self.experiment.dataset.classes, k=self.k, true_class=true,
                                    unseen=self.experiment.dataset.unseen, title=title)

    def widget(self):
        """The interactive explorer (JupyterLab): image and proposal sliders, or a box whose bounds are
        fractions of the image's height and width. Box mode disables the proposal slider."""
        half = widgets.Layout(width="50%")
        style = {"description_width": "initial"}
        image = widgets.IntSlider(0, 0, self.num_images - 1, description="image", layout=half, style=style,
                                  continuous_update=False)
        proposal = widgets.IntSlider(0, 0, max(0, len(self.proposals(0)[1]) - 1), description="proposal",
                                     layout=half, style=style, continuous_update=False)
        use_box = widgets.Checkbox(False, description="draw a box instead", indent=False,
                                   layout=widgets.Layout(width="16%"))
        box = dict(min=0.0, max=1.0, step=0.05, readout_format=".0%", disabled=True, style=style,
                   continuous_update=False, layout=widgets.Layout(width="42%"))
        rows = widgets.FloatRangeSlider(value=(0.25, 0.75), description="box rows (of height)", **box)
        cols = widgets.FloatRangeSlider(value=(0.25, 0.75), description="box cols (of width)", **box)
        output = widgets.Output(layout=widgets.Layout(width="100%"))
        busy = []  # set while redraw adjusts a control itself, so that change draws nothing twice

        def redraw(*_):
            if busy:
                return
            busy.append(True)
            try:
                count = len(self.proposals(image.value)[1])
                proposal.max = max(0, count - 1)
                proposal.disabled = use_box.value or count == 0
                rows.disabled = cols.disabled = not use_box.value
                with output:
                    output.clear_output(wait=True)
                    if not use_box.value and count == 0:
                        print(f"image {image.value} has no proposals: tick 'draw a box instead'")
                        return
                    selection = self.box_from_fractions(image.value, rows.value, cols.value) if use_box.value else None
                    display(self.figure(image.value, proposal.value, selection))
            finally:
                busy.clear()

        for control in (image, proposal, use_box, rows, cols):
            control.observe(redraw, names="value")
        redraw()
        full = widgets.Layout(width="100%")
        output.add_class("maft-explorer-figure")  # stable handles for the browser test (and for CSS)
        explorer = widgets.VBox([widgets.HBox([image, proposal], layout=full),
                                 widgets.HBox([use_box, rows, cols], layout=full), output], layout=full)
        explorer.add_class("maft-explorer")
        return explorer


def dominant_class(label, mask, num_classes: int):
    """(class id, share of the mask's labelled pixels) of the class covering most of ``mask`` (> 0.5),
    or (None, 0.0) when no labelled pixel is inside."""
    inside = label[(mask > 0.5) & (label >= 0) & (label < num_classes)]
    if not inside.numel():
        return None, 0.0
    counts = torch.bincount(inside.long(), minlength=num_classes)
    return int(counts.argmax()), float(counts.max()) / inside.numel()
