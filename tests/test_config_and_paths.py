"""maft.config overrides, maft.utils.paths dataset-root resolution, maft.notebook.report files, the CLI dispatcher."""
import json
import subprocess
import sys

import pytest

from maft import config as cfg
from maft.notebook import report
from maft.utils import paths


def test_override_sets_nested_values_parsed_as_yaml():
    base = {"train": {"lr": 1e-5, "trainable": ["attn"]}, "seed": 0}
    out = cfg.apply_overrides(base, ["train.lr=3e-4", "seed=7", "train.trainable=[attn, norm]", "new.key=abc"])
    assert out == {"train": {"lr": 3e-4, "trainable": ["attn", "norm"]}, "seed": 7, "new": {"key": "abc"}}
    assert base["train"]["lr"] == 1e-5  # the caller's config is not modified


@pytest.mark.parametrize("bad", ["train.lr", "seed.x=1"])
def test_bad_override_names_the_item(bad):
    with pytest.raises(ValueError, match=bad.split("=")[0].split(".")[0]):
        cfg.apply_overrides({"seed": 0, "train": {}}, [bad])


def test_unknown_config_lists_shipped_ones(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_config"):
        cfg.load_config("no_such_config")


def test_config_file_must_be_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        cfg.load_config(path)


def test_dataset_root_order(tmp_path, monkeypatch):
    explicit, env, repo_data = tmp_path / "explicit", tmp_path / "env", tmp_path / "repo"
    for base in (explicit, env, repo_data):
        (base / "voc2012").mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", repo_data.parent / "repo_root")
    (repo_data.parent / "repo_root" / "data" / "voc2012").mkdir(parents=True)
    monkeypatch.setenv("MAFT_DATA", str(env))
    assert paths.dataset_dir("voc2012", root=explicit) == explicit / "voc2012"
    assert paths.dataset_dir("voc2012") == env / "voc2012"
    monkeypatch.delenv("MAFT_DATA")
    assert paths.dataset_dir("voc2012") == repo_data.parent / "repo_root" / "data" / "voc2012"


def test_shared_data_is_the_last_fallback(monkeypatch, tmp_path):
    monkeypatch.delenv("MAFT_DATA", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "clone")
    (tmp_path / "shared" / "data" / "voc2012").mkdir(parents=True)
    assert paths.dataset_dir("voc2012") == tmp_path / "shared" / "data" / "voc2012"


def test_explicit_root_without_dataset_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "voc2012")):
        paths.dataset_dir("voc2012", root=tmp_path)


def test_metrics_json_is_byte_stable_and_table_formats(tmp_path):
    a = report.write_metrics(tmp_path, "01", {"b": 1.0, "a": [1, 2]}).read_bytes()
    b = report.write_metrics(tmp_path, "01", {"a": [1, 2], "b": 1.0}).read_bytes()
    assert a == b and json.loads(a) == {"a": [1, 2], "b": 1.0}
    table = report.markdown_table([{"x": 1.23456, "y": None}, {"x": 2.0, "y": "z"}], digits=1)
    assert table.splitlines() == ["| x | y |", "|---|---|", "| 1.2 | - |", "| 2.0 | z |"]


def test_report_joins_sections_in_order(tmp_path):
    (tmp_path / "fig.png").write_bytes(b"png")
    report.write_section(tmp_path, "02", "Second", "two")
    report.write_section(tmp_path, "01", "First", "one", figures=[tmp_path / "fig.png"])
    text = report.build_report(tmp_path, "Title").read_text()
    assert text.index("## First") < text.index("## Second")
    assert "![fig](fig.png)" in text


def test_cli_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "maft", "--help"], capture_output=True, text=True, check=True)
    for name in ("data", "bench", "train", "eval", "predict", "world", "notebooks"):
        assert name in out.stdout


def test_every_public_name_resolves():
    import maft

    missing = [name for name in maft.__all__ if getattr(maft, name, None) is None]
    assert not missing
    with pytest.raises(AttributeError, match="no_such_name"):
        maft.no_such_name
