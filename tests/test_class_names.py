"""Duplicate class names are found the same way (maft.data.class_specs.class_key: case and spacing ignored) at
every entry point that takes a class list."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import yaml

from maft.data.class_specs import ClassSpec, spec_from_dict
from maft.evaluate import evaluate
from maft.inference import Segmenter, align_generator_scores
from maft.metrics import ConfusionMatrix, segmentation_metrics
from maft.predict import parse_class_names
from maft.text import text_classifier
from maft.world.spec import WORLD_SPEC_PATH, load_world_spec

DUPLICATE = r"duplicate class names: \['Potted Plant', 'potted  plant'\]"
NAMES = ["sky", "Potted Plant", "potted  plant"]


def never(*args, **kwargs):
    raise AssertionError("a duplicated class list reached the model")


def test_predict_class_names():
    with pytest.raises(ValueError, match=rf"class names has {DUPLICATE}"):
        parse_class_names("sky, Potted Plant,potted  plant")


def test_text_classifier(tiny_clip):
    model, _, tokenizer = tiny_clip
    with pytest.raises(ValueError, match=DUPLICATE):
        text_classifier(model, tokenizer, NAMES, templates="single", cache=False)


def test_dataset_specs_from_yaml_and_built_in_code():
    data = {"name": "toy", "classes": NAMES, "label_map": {"raw_ids": [1, 2, 3]}}
    with pytest.raises(ValueError, match=rf"toy.yaml: classes has {DUPLICATE}"):
        spec_from_dict(data, source="toy.yaml")
    # a user's own dataset whose spec is built in code, not read from a file
    with pytest.raises(ValueError, match=rf"mine: classes has {DUPLICATE}"):
        ClassSpec(name="mine", classes=tuple(NAMES), unseen=(), label_map={1: 0, 2: 1, 3: 2})
    with pytest.raises(ValueError, match=r"mine: unseen has duplicate class names: \['Sky', 'sky'\]"):
        ClassSpec(name="mine", classes=("sky", "road"), unseen=("sky", "Sky"), label_map={1: 0, 2: 1})
    # and an unseen name is matched to its class by the same key
    spec = spec_from_dict({"name": "toy", "classes": ["sky", "potted plant"], "unseen": ["Potted  Plant"],
                           "label_map": {"raw_ids": [1, 2]}})
    assert spec.unseen_ids == [1] and spec.seen_ids == [0]


def test_a_generators_class_list_in_the_ensemble():
    scores = torch.tensor([[0.2, 0.5, 0.3]])
    with pytest.raises(ValueError, match=rf"generator class list has {DUPLICATE}"):
        align_generator_scores(scores, NAMES, ["sky"])
    aligned = align_generator_scores(scores[:, :2], ["Sky", "Potted Plant"], ["potted plant", "sky"])
    assert torch.equal(aligned, scores[:, [1, 0]])  # columns found by the same key


def test_a_user_dataset_object_given_to_evaluate_and_the_segmenter():
    text = torch.randn(3, 8)
    with pytest.raises(ValueError, match=rf"classes has {DUPLICATE}"):
        Segmenter(never, never, text, 32, classes=NAMES)
    # any object with the sample contract: the check comes before the first image is read
    dataset = SimpleNamespace(classes=NAMES, seen=[0, 1], unseen=[2], ignore_index=255, name="mine",
                              __len__=lambda: 1)
    with pytest.raises(ValueError, match=rf"classes has {DUPLICATE}"):
        evaluate(never, never, dataset, text, 32, progress=False)


def test_metrics_class_list():
    with pytest.raises(ValueError, match=rf"classes has {DUPLICATE}"):
        segmentation_metrics(ConfusionMatrix(3), NAMES)


def test_world_specification(tmp_path):
    raw = yaml.safe_load(WORLD_SPEC_PATH.read_text())
    changed = copy.deepcopy(raw)
    changed["stuff"]["Sky"] = changed["stuff"]["sky"]  # "sky" and "Sky": one class to a text prompt
    path = tmp_path / "world.yaml"
    path.write_text(yaml.safe_dump(changed))
    with pytest.raises(ValueError, match=rf"{path}: classes has duplicate class names"):
        load_world_spec(path)
    assert len(load_world_spec().classes) == len(set(c.lower() for c in load_world_spec().classes))
