"""Pictures: segmentations, overlays and proposals with their top-k classes (:mod:`.figures`), charts of numbers
(:mod:`.charts`) and the ipywidgets proposal explorer (:mod:`.explorer`).

Every picture is a ``matplotlib.figure.Figure`` built without pyplot; importing this package touches neither
IPython nor a notebook backend, so ``maft predict`` can draw its overlay anywhere.
"""
