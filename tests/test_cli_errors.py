"""A user error on the command line is one line, ``maft <command>: error: ...``, exit code 2; ``--debug``
(before or after the command) or ``MAFT_DEBUG=1`` shows the traceback instead."""
from __future__ import annotations

import pytest

import maft.losses as losses_module
from maft.cli import main
from maft.train import NonFiniteLossError


def one_line_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err.split("\r")[-1]  # after any progress bar's last redraw
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.fixture
def bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  name: [ViT-B-16\n  image_size: 480\n")
    return path


def test_train_without_config_or_resume(capsys):
    assert one_line_error(capsys, ["train"]) == \
        "maft train: error: give --config <yaml|name> (or --resume <checkpoint>)"


def test_malformed_yaml_config_names_the_file_and_line(capsys, bad_yaml):
    err = one_line_error(capsys, ["eval", "--config", str(bad_yaml)])
    assert err.startswith(f"maft eval: error: {bad_yaml} (line ") and "not valid YAML" in err
    err = one_line_error(capsys, ["train", "--config", str(bad_yaml)])
    assert err.startswith(f"maft train: error: {bad_yaml} (line ")
    err = one_line_error(capsys, ["notebooks", "--profile", str(bad_yaml)])
    assert err.startswith(f"maft notebooks: error: {bad_yaml} (line ")


def test_malformed_override_value_names_the_override(capsys):
    err = one_line_error(capsys, ["eval", "--config", "voc20_tiny_cpu", "--set", "eval.window=[1,"])
    assert err.startswith("maft eval: error: override 'eval.window=[1,': the value is not valid YAML")


def test_debug_shows_the_traceback_before_or_after_the_command(capsys, bad_yaml, monkeypatch):
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["--debug", "eval", "--config", str(bad_yaml)])
    with pytest.raises(ValueError, match="not valid YAML"):
        main(["eval", "--config", str(bad_yaml), "--debug"])
    monkeypatch.setenv("MAFT_DEBUG", "1")
    with pytest.raises(ValueError, match="give --config"):
        main(["train"])
    monkeypatch.setenv("MAFT_DEBUG", "0")
    one_line_error(capsys, ["train"])


def test_a_non_finite_loss_is_reported_as_a_user_error(capsys, monkeypatch, tmp_path):
    # Too high a learning rate is the usual cause: the user changes a setting, so one line, no traceback.
    monkeypatch.setattr(losses_module, "self_distillation_loss",
                        lambda student, teacher, kind: student.sum() * float("nan"))
    err = one_line_error(capsys, ["train", "--config", "voc20_tiny_cpu", "--no-progress",
                                  "--set", "data.max_images=2", "--set", "train.batch_size=2",
                                  "--set", f"train.out_dir={tmp_path / 'run'}"])
    assert err.startswith("maft train: error: training stopped at step 1/6: the self-distillation loss L_dis is nan")
    assert issubclass(NonFiniteLossError, FloatingPointError)  # still what a caller of finetune catches
