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

from .clip import clip_normalisation
from .experiment import Experiment
from .inference import classify_proposals
from .viz import plot_proposals_topk


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

    def figure(self, index: int = 0, proposal: int = 0, box: tuple | None = None):
        """Top-k of each classifier for proposal ``proposal`` of image ``index`` (or for ``box`` =
        ((row0, row1), (col0, col1)))."""
        sample, proposals = self.proposals(index)
        if box is not None:
            masks, title = self.box_mask(index, *box), "box"
        else:
            if not len(proposals):
                raise ValueError(f"image {index} has no proposals; draw a box instead")
            proposal = min(max(0, proposal), len(proposals) - 1)
            masks, title = proposals.masks[proposal:proposal + 1], f"proposal {proposal}"
        probs = self.scores(index, masks)
        names = list(self.classifiers)
        fig = plot_proposals_topk(sample["image"], masks, probs[0], probs[1] if len(probs) > 1 else None,
                                  self.experiment.dataset.classes, k=self.k,
                                  titles=(names[0], names[1] if len(names) > 1 else ""))
        fig.axes[0].set_title(f"image {index}, {title}", fontsize=9)
        return fig

    def widget(self):
        """The interactive explorer (JupyterLab): image and proposal sliders, or a box from two ranges."""
        sample, _ = self.proposals(0)
        height, width = sample["image"].shape[-2:]
        image = widgets.IntSlider(0, 0, self.num_images - 1, description="image")
        proposal = widgets.IntSlider(0, 0, max(0, len(self.proposals(0)[1]) - 1), description="proposal")
        use_box = widgets.Checkbox(False, description="draw a box instead")
        rows = widgets.IntRangeSlider(value=(0, height // 2), min=0, max=height - 1, description="box rows")
        cols = widgets.IntRangeSlider(value=(0, width // 2), min=0, max=width - 1, description="box cols")
        output = widgets.Output()

        def redraw(*_):
            proposal.max = max(0, len(self.proposals(image.value)[1]) - 1)
            box = (rows.value, cols.value) if use_box.value else None
            with output:
                output.clear_output(wait=True)
                display(self.figure(image.value, proposal.value, box))

        for control in (image, proposal, use_box, rows, cols):
            control.observe(redraw, names="value")
        redraw()
        return widgets.VBox([widgets.HBox([image, proposal]), widgets.HBox([use_box, rows, cols]), output])
