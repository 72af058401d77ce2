"""Output paths are checked before the long work: maft.utils.paths.check_output_path and every entry point."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from maft.cli import main
from maft.utils import paths
from maft.utils.paths import check_output_path


@pytest.fixture
def blocker(tmp_path) -> Path:
    """A regular file where a folder would have to be."""
    path = tmp_path / "results"
    path.write_text("not a folder\n")
    return path


def never(*args, **kwargs):
    raise AssertionError("the long work started although the output path is unusable")


# --------------------------------------------------------------------------------------------------
# The helper
# --------------------------------------------------------------------------------------------------
def test_a_path_under_a_regular_file_is_refused(blocker):
    with pytest.raises(NotADirectoryError, match=rf"--out {blocker}/run/metrics.json: cannot be created, "
                                                 rf"{blocker} is not a folder"):
        check_output_path(blocker / "run" / "metrics.json", "--out")
    with pytest.raises(NotADirectoryError, match=rf"train.out_dir {blocker}/run: .* {blocker} is not a folder"):
        check_output_path(blocker / "run", "train.out_dir", directory=True)
    with pytest.raises(NotADirectoryError, match=rf"train.out_dir {blocker}: is a file, not a folder"):
        check_output_path(blocker, "train.out_dir", directory=True)
    with pytest.raises(IsADirectoryError, match=rf"--out {blocker.parent}: is a folder"):
        check_output_path(blocker.parent, "--out")


def test_a_writable_path_passes_and_nothing_is_created(tmp_path):
    before = sorted(tmp_path.rglob("*"))
    assert check_output_path(tmp_path / "a" / "b" / "out.json", "--out") == tmp_path / "a" / "b" / "out.json"
    assert check_output_path(tmp_path / "run", "train.out_dir", directory=True) == tmp_path / "run"
    existing = tmp_path / "old.json"
    existing.write_text("{}")
    check_output_path(existing, "--out")  # replacing a file is fine here; whether to is the caller's call
    assert sorted(tmp_path.rglob("*")) == sorted(before + [existing])  # no folder, no probe file left


def test_a_read_only_filesystem_is_refused(tmp_path, monkeypatch):
    # A read-only mount cannot be made without privileges: the probe write fails as it would there.
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError, match=rf"eval.out {tmp_path}/new/m.json: cannot write in {tmp_path} "
                                              r"\(Read-only file system\)"):
        check_output_path(tmp_path / "new" / "m.json", "eval.out")


def test_an_unwritable_folder_is_refused_for_real():
    base = Path(tempfile.mkdtemp(prefix="maft-locked-"))
    try:
        base.chmod(0o755)
        locked = base / "locked"
        locked.mkdir(mode=0o555)
        locked.chmod(0o555)
        # Root ignores permission bits (and the helper rightly lets it write), so as root the check runs
        # with the effective user nobody, whom the bits do stop; its real user stays root to switch back.
        as_nobody = os.geteuid() == 0
        if as_nobody:
            os.seteuid(65534)
        try:
            with pytest.raises(PermissionError, match=rf"--out {locked}/out.json: cannot write in {locked} "
                                                      r"\(Permission denied\)"):
                check_output_path(locked / "out.json", "--out")
        finally:
            if as_nobody:
                os.seteuid(0)
    finally:
        shutil.rmtree(base)


# --------------------------------------------------------------------------------------------------
# Every entry point checks before its long work
# --------------------------------------------------------------------------------------------------
def cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_predict_out(blocker, capsys, monkeypatch):
    monkeypatch.setattr("maft.cli.predict.predict", never)
    err = cli_error(capsys, ["predict", "photo.jpg", "--classes", "cat,dog", "--out", str(blocker / "o.png")])
    assert err.startswith("maft predict: error: --out ") and f"{blocker} is not a folder" in err


def test_eval_out_and_config_eval_out(blocker, capsys, monkeypatch):
    monkeypatch.setattr("maft.evaluate.build_experiment", never)
    err = cli_error(capsys, ["eval", "--config", "voc20_tiny_cpu", "--out", str(blocker / "m.json")])
    assert err.startswith(f"maft eval: error: --out {blocker}/m.json")
    err = cli_error(capsys, ["eval", "--config", "voc20_tiny_cpu", "--set", f"eval.out={blocker}/m.json"])
    assert err.startswith(f"maft eval: error: eval.out {blocker}/m.json")


def test_train_out_dir(blocker, capsys, monkeypatch):
    monkeypatch.setattr("maft.train._build_parts", never)
    err = cli_error(capsys, ["train", "--config", "voc20_tiny_cpu", "--set", f"train.out_dir={blocker}/run",
                             "--no-progress"])
    assert err.startswith(f"maft train: error: train.out_dir {blocker}/run")


def test_bench_out(blocker, capsys, monkeypatch):
    monkeypatch.setattr("maft.cli.bench.benchmark", never)
    err = cli_error(capsys, ["bench", "--quick", "--out", str(blocker / "cpu.json")])
    assert err.startswith(f"maft bench: error: --out {blocker}/cpu.json")


def test_world_outs(blocker, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("maft.world.story.ensure_world_clip", never)
    monkeypatch.setattr("maft.world.pretrain.ensure_world_clip", never)
    monkeypatch.setattr("maft.world.pretrain.load_clip", never)
    monkeypatch.setattr("maft.cli.world.save_scene_grid", never)
    err = cli_error(capsys, ["world", "story", "--quick", "--out", str(blocker / "story.json")])
    assert err.startswith(f"maft world: error: story out {blocker}/story.json")
    err = cli_error(capsys, ["world", "zero-shot", "--out", str(blocker / "z.json")])
    assert err.startswith(f"maft world: error: --out {blocker}/z.json")
    err = cli_error(capsys, ["world", "show", "--out", str(blocker / "grid.png")])
    assert err.startswith(f"maft world: error: --out {blocker}/grid.png")
    monkeypatch.setenv("MAFT_OUTPUTS", str(tmp_path))
    err = cli_error(capsys, ["world", "pretrain", "--force", "--out", str(blocker / "clip.pt")])
    assert err.startswith(f"maft world: error: world CLIP checkpoint (--out) {blocker}/clip.pt")
    monkeypatch.setenv("MAFT_OUTPUTS", str(blocker))  # the zero-shot report it writes after pretraining
    err = cli_error(capsys, ["world", "pretrain", "--force", "--out", str(tmp_path / "clip.pt")])
    assert err.startswith(f"maft world: error: the zero-shot report {blocker}/world/zero_shot.json")


def test_notebooks_output_dir(blocker, capsys, monkeypatch):
    monkeypatch.setattr("maft.notebook.series.papermill.execute_notebook", never)
    err = cli_error(capsys, ["notebooks", "--profile", "smoke", "--output-dir", str(blocker / "smoke")])
    assert err.startswith(f"maft notebooks: error: --output-dir {blocker}/smoke")


def test_data_prepare_dst(blocker, capsys, tmp_path):
    src = tmp_path / "VOCdevkit"
    src.mkdir()
    err = cli_error(capsys, ["data", "prepare", "voc20", "--src", str(src), "--dst", str(blocker)])
    assert err.startswith(f"maft data: error: --dst {blocker}/voc2012")


def test_outputs_root_is_checked_through_resolve_output_path(blocker, monkeypatch):
    # the default places (outputs/...) follow MAFT_OUTPUTS; a file there is caught the same way
    monkeypatch.setenv("MAFT_OUTPUTS", str(blocker))
    with pytest.raises(NotADirectoryError, match="train.out_dir"):
        check_output_path(paths.resolve_output_path(None, "x", ("train", "<name>")), "train.out_dir",
                          directory=True)
