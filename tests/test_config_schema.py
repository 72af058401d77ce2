"""The typed config: one default per setting, one validation at load, one-line errors naming the key.

The typos of issue 17 ran with exit code 0 and the setting silently ignored; each is now an error before
any model is built.
"""
from __future__ import annotations

import pytest
import yaml

import maft
import maft.experiment
from maft.cli import main
from maft.config import ConfigError, EvalConfig, ExperimentConfig, ProposalsConfig, load
from maft.notebook import series


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to build a CLIP fails the test: errors must come first."""
    def built(*args, **kwargs):
        raise AssertionError("a model was built before the config error")
    monkeypatch.setattr(maft.experiment, "load_clip", built)


@pytest.mark.parametrize("command", ["eval", "train"])
@pytest.mark.parametrize("override, message", [
    ("model.image_sise=64", "config key model.image_sise: unknown key in section 'model' "
                            "(known: name, pretrained, image_size, start_layer)"),
    ("data.max_image=1", "config key data.max_image: unknown key in section 'data'"),
    ("evl.ensemble_lambda=0.5", "config key evl: unknown key in the top level"),
    ("model.start_layer=true", "config key model.start_layer: expected an integer or null, got true (bool)"),
    ("model.image_size=big", "config key model.image_size: expected an integer or null, got 'big' (str)"),
    ("train.lr=fast", "config key train.lr: expected a number, got 'fast' (str)"),
    ("eval.sliding_window=1", "config key eval.sliding_window: expected true or false, got 1 (int)"),
    ("model.start_layer=7", "config key model.start_layer: expected an integer in [0, 6] for the 6-block "
                            "maft-test-vit, got 7"),
    ("model.image_size=36", "config key model.image_size: expected a multiple of maft-test-vit's patch size 8, got 36"),
    ("eval.ensemble_lambda=1.5", "config key eval.ensemble_lambda: expected a number in [0, 1] (eq. 9) or null"),
    ("data.max_images=0", "config key data.max_images: expected a positive integer or null, got 0"),
    ("eval.proposals={kind: gt, setings: {}}", "config key eval.proposals.setings: unknown key in section "
                                               "'eval.proposals'"),
])
def test_each_typo_is_a_one_line_error_before_any_model(capsys, no_model, command, override, message):
    err = one_line_error(capsys, [command, "--config", "voc20_tiny_cpu", "--no-progress", "--set", override])
    assert err.startswith(f"maft {command}: error: {message}"), err


def test_a_typo_in_a_config_file_names_the_key(capsys, no_model, tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"model": {"name": "maft-test-vit", "pretrained": None, "image_size": 32},
                                    "train": {"iteration": 3}}))
    err = one_line_error(capsys, ["train", "--config", str(path)])
    assert err.startswith("maft train: error: config key train.iteration: unknown key in section 'train' (known: "
                          "iterations, batch_size"), err


def test_ipclip_refuses_a_bool_start_layer():
    visual = maft.load_clip("maft-test-vit", pretrained=None)[0].visual
    with pytest.raises(ValueError, match="start_layer must be an int in \\[0, 6\\].*got True"):
        maft.IPCLIP(visual, start_layer=True)
    assert maft.IPCLIP(visual, start_layer=1).start_layer == 1


@pytest.mark.parametrize("profile_text, message", [
    ("config: voc20_tiny_cpu\nmax_image: 3\n", "sets ['max_image'], which no notebook declares"),
    ("config: voc20_tiny_cpu\noverrides: [train.iteratons=2]\n",
     "config key train.iteratons: unknown key in section 'train'"),
])
def test_a_profile_typo_is_caught_with_only_too(capsys, tmp_path, monkeypatch, profile_text, message):
    """A key no notebook declares, or a typo in the profile's overrides, fails before notebook 03 runs."""
    profile = tmp_path / "typo.yaml"
    profile.write_text(profile_text)
    monkeypatch.setattr(series.papermill, "execute_notebook",
                        lambda *a, **k: pytest.fail("a notebook ran before the profile was checked"))
    err = one_line_error(capsys, ["notebooks", "--profile", str(profile), "--only", "03",
                                  "--output-dir", str(tmp_path / "out")])
    assert message in err, err


def test_every_default_is_the_documented_one():
    config = load(None, check_model=False)
    assert config.to_dict() == {
        "name": None, "seed": 0,
        "model": {"name": "ViT-B-16", "pretrained": "openai", "image_size": 480, "start_layer": None},
        "data": {"dataset": "voc20", "root": None, "train_split": "train", "eval_split": "val", "max_images": None,
                 "protocol": "zero_shot"},
        "proposals": {"kind": "gt", "settings": {}},
        "text": {"templates": "vild"},
        "train": {"iterations": 100, "batch_size": 16, "micro_batch_size": None, "lr": 1e-5, "weight_decay": 1e-5,
                  "norm_weight_decay": 0.0, "lr_power": 0.9, "grad_clip": 0.01, "trainable": ["attn", "norm"],
                  "loss": "smooth_l1", "loss_reduction": "pairs", "constant_iou_rows": "keep",
                  "distill_loss": "smooth_l1", "distill_weight": 1.0, "augmentation": True, "amp": True,
                  "device": "auto", "num_workers": 0, "log_every": 10, "checkpoint_every": 50, "out_dir": None},
        "eval": {"classifier": "ipclip", "ensemble_lambda": None, "variant": "paper", "merge": "mask_and_crop",
                 "input_size": None, "sliding_window": False, "window": None, "stride": None, "max_images": None,
                 "out": None, "proposals": None, "allow_other_start_layer": False},
    }


def test_typed_values_round_trip_through_yaml_and_overrides():
    config = load("voc20_tiny_cpu", ["train.lr=3e-4", "eval.proposals={kind: segments, settings: {scale: 2}}",
                                     "train.trainable=attn,norm"])
    assert isinstance(config, ExperimentConfig) and config.train.lr == 3e-4 and isinstance(config.train.lr, float)
    assert config.eval.proposals == ProposalsConfig(kind="segments", settings={"scale": 2})
    assert config.train.trainable == ["attn", "norm"]
    assert config["train"]["lr"] == config.train.lr  # sections read by key too
    again = load(yaml.safe_load(yaml.safe_dump(config)))
    assert again == config and load(config) == config and load(config) is not config  # a checked copy
    assert load(config, ["seed=3"]).seed == 3 and config.seed == 0  # overrides never change the original
    with pytest.raises(ConfigError, match="config key eval.classifier: expected one of 'ipclip', 'frozen'"):
        config.eval["classifier"] = "crop"
    with pytest.raises(ConfigError, match="config key eval.clasifier: unknown key"):
        config.eval["clasifier"] = "frozen"
    assert EvalConfig().classifier == "ipclip"
    config.train.lr = -1.0  # attribute assignment checks nothing; the next load does
    with pytest.raises(ConfigError, match=r"config key train.lr: expected a number > 0, got -1.0"):
        load(config)


def test_an_integer_is_a_number_but_a_bool_is_neither():
    assert load("voc20_tiny_cpu", ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match="config key train.iterations: expected an integer, got true"):
        load("voc20_tiny_cpu", ["train.iterations=true"])
    with pytest.raises(ConfigError, match="config key train.distill_weight: expected a number, got false"):
        load("voc20_tiny_cpu", ["train.distill_weight=false"])
    with pytest.raises(ConfigError, match="config key model: expected a mapping, got 3"):
        load("voc20_tiny_cpu", ["model=3"])


def test_eval_proposals_set_without_a_kind_is_an_error_not_gt():
    """Before: eval.proposals={settings: ...} loaded as kind "gt", silently evaluating on ground-truth proposals."""
    with pytest.raises(ConfigError, match=r"config key eval.proposals.kind: missing"):
        load("voc20_tiny_cpu", ["eval.proposals={settings: {max_proposals: 5}}"])
    assert load("voc20_tiny_cpu", ["eval.proposals={kind: segments}"]).eval.proposals.kind == "segments"
    assert load("voc20_tiny_cpu", ["eval.proposals=null"]).eval.proposals is None


def test_a_null_image_size_means_the_towers_own_size_through_evaluation():
    from maft.clip import tower_input_size
    from maft.experiment import build_experiment

    experiment = build_experiment(load("voc20_tiny_cpu", ["model.image_size=null", "data.max_images=1"]))
    assert experiment.config.model.image_size is None
    assert experiment.image_size == tower_input_size(experiment.model.visual) > 0
    segmenter = experiment.segmenter(experiment.frozen)
    assert segmenter.image_size == experiment.image_size  # before: int(None) raised a TypeError here
