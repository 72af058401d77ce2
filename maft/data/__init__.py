"""Datasets and everything about their classes: what a segmentation sample is, before any model sees it.

Layout: :mod:`.datasets` (the benchmark datasets and the world as one ``SegDataset`` contract, the zero-shot
training and evaluation views), :mod:`.class_specs` (class lists, seen/unseen splits and value lookups, as data
in ``maft/assets/datasets/*.yaml``), :mod:`.user_folder` (a folder of your own with a ``classes.yaml``),
:mod:`.prepare` (conversion of official downloads into the expected layout, ``maft data prepare|check``) and
:mod:`.augment` (the authors' training augmentation on image, label and proposals).

Layering: nothing here imports the training or evaluation engine (see :mod:`maft`).
"""
