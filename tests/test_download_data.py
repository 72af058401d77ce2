"""`maft download data <dataset>` end to end: tiny official-layout archives built here, served by a loopback
server through MAFT_MIRROR, downloaded, verified, unpacked, prepared and then read by build_dataset."""
from __future__ import annotations

import hashlib
import io
import tarfile
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.io
import yaml
from loopback_http import LoopbackServer
from test_prepare import VOC_PALETTE, fake_ade_full, label_8x8, save_jpg, save_png

from maft.cli import main as cli_main
from maft.data.datasets import build_dataset
from maft.downloads import registry as download_registry
from maft.downloads import verified
from maft.utils import paths

VOC_IDS = ("2007_000001", "2007_000002", "2008_000003")


@pytest.fixture(autouse=True)
def only_explicit_roots(monkeypatch, tmp_path):
    monkeypatch.delenv("MAFT_DATA", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "no-repo" / "main")


def tar_of(folder: Path, mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        for path in sorted(folder.iterdir()):
            archive.add(path, arcname=path.name)
    return buffer.getvalue()


def zip_of(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def tiny_voc_archives(tmp_path: Path) -> tuple[bytes, bytes]:
    """VOCtrainval_11-May-2012.tar and benchmark.tgz in their official layouts (8x8 images)."""
    voc_root = tmp_path / "build-voc"
    voc = voc_root / "VOCdevkit" / "VOC2012"
    for seed, id_ in enumerate(VOC_IDS):
        save_jpg(voc / "JPEGImages" / f"{id_}.jpg", seed=seed)
    save_png(voc / "SegmentationClass" / "2007_000001.png", label_8x8([0, 1, 16, 20, 255]), VOC_PALETTE)
    save_png(voc / "SegmentationClass" / "2007_000002.png", label_8x8([15, 17, 0]), VOC_PALETTE)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000001\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000002\n")

    sbd_root = tmp_path / "build-sbd"
    cls = sbd_root / "benchmark_RELEASE" / "dataset" / "cls"
    cls.mkdir(parents=True)
    for id_, first in (("2007_000001", [3, 3]), ("2008_000003", [5, 19])):  # 2007_000001 is VOC's too: VOC wins
        scipy.io.savemat(cls / f"{id_}.mat", {"GTcls": {"Segmentation": label_8x8(first).astype(np.uint8),
                                                       "CategoriesPresent": np.array(first)}})
    return tar_of(voc_root, "w"), tar_of(sbd_root, "w:gz")


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def use_voc_registry(monkeypatch, tmp_path: Path, files: dict) -> Path:
    """A registry of ``files`` (name -> entry) and the shipped voc2012 recipe, in place of the shipped one."""
    recipe = verified.load_registry().datasets["voc2012"]
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"files": files, "datasets": {"voc2012": {
        "title": recipe.title, "benchmarks": list(recipe.benchmarks), "after_unpack": recipe.after_unpack,
        "files": [{"file": item.file} for item in recipe.files]}}}))
    monkeypatch.setattr(download_registry, "REGISTRY_FILE", registry)
    return registry


@pytest.fixture
def voc_mirror(monkeypatch, tmp_path):
    """The shipped registry's VOC entries with the tiny archives' sizes and md5s, served by the mirror."""
    voc_tar, sbd_tgz = tiny_voc_archives(tmp_path)
    shipped = verified.load_registry()
    files = {}
    for name, data in (("VOCtrainval_11-May-2012.tar", voc_tar), ("benchmark.tgz", sbd_tgz)):
        entry = shipped.file(name)
        files[name] = {"url": entry.url, "size": len(data), "hash": md5(data), "group": entry.group}
    use_voc_registry(monkeypatch, tmp_path, files)
    with LoopbackServer() as server:
        for name, data in (("VOCtrainval_11-May-2012.tar", voc_tar), ("benchmark.tgz", sbd_tgz)):
            server.files[urlsplit(shipped.file(name).url).path] = data  # the official paths, on the mirror
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("MAFT_MIRROR", server.url)
        yield server


def run_cli(*argv) -> int:
    with pytest.raises(SystemExit) as info:
        cli_main(["download", "--quiet", *argv])
    return info.value.code


def test_download_data_voc20_downloads_verifies_unpacks_and_prepares(voc_mirror, tmp_path, capsys):
    dst = tmp_path / "data"
    assert run_cli("data", "voc20", "--dst", str(dst)) == 0
    assert f"prepared {dst / 'voc2012'}" in capsys.readouterr().out
    assert sorted(r.path.rsplit("/", 1)[1] for r in voc_mirror.log) == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"]

    train = build_dataset("voc20", "train", root=dst)
    assert [item.id for item in train.items] == ["2007_000001"]
    assert train[0]["label"][0, :5].tolist() == [255, 0, 15, 19, 255]  # raw 0/255 ignored, k -> k-1
    assert build_dataset("voc20", "val", root=dst)[0]["label"][0, :3].tolist() == [14, 16, 255]
    aug = build_dataset("voc20", "train_aug", root=dst)  # SBD + VOC train, without VOC val
    assert [item.id for item in aug.items] == ["2007_000001", "2008_000003"]
    assert aug[0]["label"][0, :5].tolist() == [255, 0, 15, 19, 255]  # VOC's own mask, not SBD's [3, 3]
    assert aug[1]["label"][0, :2].tolist() == [4, 18]  # from SBD's .mat

    downloads = dst / "downloads"
    assert sorted(p.name for p in downloads.iterdir()) == [".maft-download.lock", ".maft-verified.json",
                                                           "VOCtrainval_11-May-2012.tar", "benchmark.tgz"]
    # (the unpacked copy is removed once prepared)
    assert run_cli("data", "voc20", "--dst", str(dst)) == 0  # already prepared: nothing fetched
    assert "already prepared" in capsys.readouterr().out and len(voc_mirror.log) == 2


def test_download_data_works_offline_from_verified_archives(voc_mirror, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "data"
    monkeypatch.setenv("MAFT_OFFLINE", "1")
    assert run_cli("data", "voc20", "--dst", str(dst)) == 2  # offline, nothing here: both files named at once
    err = capsys.readouterr().err
    assert "VOCtrainval_11-May-2012.tar is not at" in err and "benchmark.tgz is not at" in err
    assert voc_mirror.log == [] and not (dst / "voc2012").exists()
    monkeypatch.delenv("MAFT_OFFLINE")
    assert run_cli("data", "voc20", "--dst", str(dst), "--splits", "val") == 0
    monkeypatch.setenv("MAFT_OFFLINE", "1")
    assert run_cli("data", "voc20", "--dst", str(dst), "--overwrite") == 0  # from the archives in place
    assert len(voc_mirror.log) == 2 and [i.id for i in build_dataset("voc20", "train", root=dst).items] == \
        ["2007_000001"]


def test_a_corrupt_archive_stops_before_anything_is_unpacked_or_prepared(voc_mirror, tmp_path, capsys):
    path = next(p for p in voc_mirror.files if p.endswith("benchmark.tgz"))
    voc_mirror.files[path] = voc_mirror.files[path][:-100]  # truncated on the mirror
    dst = tmp_path / "data"
    assert run_cli("data", "voc20", "--dst", str(dst)) == 2
    assert "benchmark.tgz downloaded from" in capsys.readouterr().err
    assert not (dst / "voc2012").exists()
    assert sorted(p.name for p in (dst / "downloads").iterdir()) == [".maft-download.lock", ".maft-verified.json",
                                                                     "VOCtrainval_11-May-2012.tar"]


def test_ade847_needs_a_registration_and_verifies_the_file_the_user_puts_in_place(tmp_path, capsys):
    dst = tmp_path / "data"
    assert run_cli("data", "ade847", "--dst", str(dst)) == 2
    err = capsys.readouterr().err
    target = dst / "downloads" / "ADE20K_2021_17_01.zip"
    assert "https://ade20k.csail.mit.edu/" in err and f"put it at {target}" in err
    target.parent.mkdir(parents=True)
    good = zip_of(fake_ade_full(tmp_path / "build").parent)
    target.write_bytes(good[: len(good) - 200])  # an incomplete download by the user
    assert run_cli("data", "ade847", "--dst", str(dst)) == 2
    assert f"{target} is corrupt or truncated" in capsys.readouterr().err and target.exists()
    target.write_bytes(good)
    assert run_cli("data", "ade847", "--dst", str(dst)) == 0
    assert build_dataset("ade847", "val", root=dst)[0]["label"][0, :5].tolist() == [0, 846, 65535, 65535, 2]


def test_an_archive_without_the_expected_folders_is_named(tmp_path, capsys):
    dst = tmp_path / "data"
    (dst / "downloads").mkdir(parents=True)
    other = tmp_path / "other"
    save_jpg(other / "holiday" / "beach.jpg")
    (dst / "downloads" / "ADE20K_2021_17_01.zip").write_bytes(zip_of(other))
    assert run_cli("data", "ade847", "--dst", str(dst)) == 2
    assert "unpacked without ADE20K_2021_17_01/images/ADE/" in capsys.readouterr().err
    assert not list((dst / "downloads").glob("*.unpacked*"))  # no half-unpacked folder left behind
