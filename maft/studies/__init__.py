"""Experiments built on the pipeline, for the notebooks and ``maft bench``: variants x seeds and their mean ±
std (:mod:`.variants`), one experiment's evaluations and per-proposal views (:mod:`.experiment_runs`), the cost
benchmark (:mod:`.bench`) and the paper's numbers beside ours (:mod:`.paper_results`).

The pipeline never imports this package (see :mod:`maft`).
"""
