"""A checkpoint runs on the model it was trained with: predict without --config takes the checkpoint's
model settings, and another IP-CLIP start layer is an error unless eval.allow_other_start_layer."""
from __future__ import annotations

import json

import pytest
import torch

from maft.checkpoints import load_finetuned
from maft.cli import main
from maft.config import load_config
from maft.evaluate import evaluate_config
from maft.experiment import build_clip, build_ipclip
from maft.ipclip import IPCLIP
from maft.predict import predict_config
from maft.train import finetune

VOC = "/work/shared/data/voc2012"
IMAGE_ID = "2007_000042"  # a train (VOC raw id 19) on background


def tiny(**model) -> dict:
    config = load_config("voc20_tiny_cpu")
    config["data"]["max_images"] = 4
    config["proposals"]["settings"] = {"per_region": 1, "max_proposals": 4, "kinds": ["part", "eroded"]}
    config["train"].update({"iterations": 1, "batch_size": 2, "checkpoint_every": None})
    config["model"].update(model)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-step checkpoint at image size 48 (not the tiny config's 32) and start layer 2 (not 4)."""
    folder = tmp_path_factory.mktemp("start-layer")
    config = tiny(image_size=48, start_layer=2)
    config["train"]["out_dir"] = str(folder / "run")
    return finetune(config, progress=False)["checkpoint"]


def test_predict_without_config_takes_the_checkpoints_model(trained):
    config = predict_config(None, trained)
    assert config["model"] == {"name": "maft-test-vit", "pretrained": None, "image_size": 48, "start_layer": 2}
    assert config["seed"] == 0 and config["text"] == {"templates": "single"}  # the random base tower's seed
    assert predict_config(None, trained, ["model.image_size=64"])["model"]["image_size"] == 64
    assert predict_config(None, None)["model"]["name"] == "ViT-B-16"  # no checkpoint: the package defaults


def test_cli_predict_with_only_a_checkpoint_runs_on_its_model(trained, voc_pair, tmp_path, capsys):
    image, label = voc_pair
    out = tmp_path / "overlay.png"
    with pytest.raises(SystemExit) as stop:
        main(["predict", image, "--classes", "background,train", "--checkpoint", trained, "--proposals", "gt",
              "--label", label, "--out", str(out)])
    assert stop.value.code == 0, capsys.readouterr().err
    assert json.loads(out.with_suffix(".json").read_text())["classes"] == ["background", "train"]


def test_predict_at_another_start_layer_needs_the_setting(trained, voc_pair, tmp_path, capsys):
    image, label = voc_pair
    argv = ["predict", image, "--classes", "background,train", "--checkpoint", trained, "--proposals", "gt",
            "--label", label, "--config", "voc20_tiny_cpu", "--set", "model.image_size=48"]
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--out", str(tmp_path / "a.png")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"{trained} was trained with IP-CLIP start layer 2, but this IP-CLIP starts at layer 4" in err
    assert "eval.allow_other_start_layer=true" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as stop:
        main(argv + ["--set", "eval.allow_other_start_layer=true", "--out", str(tmp_path / "b.png")])
    assert stop.value.code == 0, capsys.readouterr().err


def test_eval_at_another_start_layer_is_an_error_unless_asked_for(trained, tmp_path):
    config = tiny(image_size=48)  # start_layer null: the default, 4 of 6 blocks
    config["eval"] = {"max_images": 1}
    with pytest.raises(ValueError, match="trained with IP-CLIP start layer 2, but this IP-CLIP starts at layer 4"):
        evaluate_config(config, checkpoint=trained, out=tmp_path / "m.json", progress=False)
    assert not (tmp_path / "m.json").exists()
    config["eval"]["allow_other_start_layer"] = True
    assert evaluate_config(config, checkpoint=trained, out=tmp_path / "m.json", progress=False)["n_images"] == 1
    matching = tiny(image_size=48, start_layer=2)
    matching["eval"] = {"max_images": 1}
    assert evaluate_config(matching, checkpoint=trained, out=tmp_path / "n.json", progress=False)["n_images"] == 1
    config["eval"]["allow_other_start_layer"] = "yes please"
    with pytest.raises(ValueError, match="config key eval.allow_other_start_layer: expected true or false"):
        evaluate_config(config, checkpoint=trained, out=tmp_path / "o.json", progress=False)


def test_a_recorded_default_start_layer_means_the_depths_default(trained):
    config = tiny(image_size=48)
    model = build_clip(config)[0]
    state = torch.load(trained, weights_only=True)
    state["model"]["start_layer"] = None  # trained at the default: round(6 * 8 / 12) = 4
    load_finetuned(IPCLIP(model.visual, start_layer=4), state)
    with pytest.raises(ValueError, match="trained with IP-CLIP start layer 4, but this IP-CLIP starts at layer 2"):
        load_finetuned(IPCLIP(model.visual, start_layer=2), state)
    assert build_ipclip(tiny(image_size=48, start_layer=2), model.visual, trained).start_layer == 2
