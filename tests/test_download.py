"""maft.downloads.verified: verified, resumable downloads through a mirror, the offline switch, CLIP through open_clip,
`maft download --list`, and the suite-wide guard against network connections.

Every download here goes to a loopback HTTP server on 127.0.0.1 that the test starts (tests/loopback_http.py),
reached through MAFT_MIRROR, serving small files the test builds.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import threading
import zipfile
from pathlib import Path
from types import SimpleNamespace

import open_clip
import pytest
import requests
import torch
import yaml
from filelock import FileLock
from loopback_http import LoopbackServer

from maft.cli import main as cli_main
from maft.clip import load_clip
from maft.data.datasets import DATASETS
from maft.downloads import registry as download_registry
from maft.downloads import verified
from maft.downloads.verified import ChecksumError, DownloadInterrupted, MissingFileError, fetch, load_registry

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes
WEIGHTS_PATH = "/models/v1/weights.bin"


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # stored: byte k of a member is in the file
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


ZIP = zip_bytes({"pack/a.bin": random.Random(0).randbytes(3000), "pack/b.bin": random.Random(1).randbytes(3000)})


def write_registry(path: Path, files: dict) -> Path:
    path.write_text(yaml.safe_dump({"files": files, "datasets": {}, "clip": []}))
    return path


@pytest.fixture
def registry(tmp_path):
    """A registry of three files on made-up official hosts (the mirror replaces them)."""
    return load_registry(write_registry(tmp_path / "registry.yaml", {
        "weights.bin": {"url": f"https://dl.example.org{WEIGHTS_PATH}", "size": len(PAYLOAD), "hash": md5(PAYLOAD),
                        "checksum_source": "the test", "group": "sam"},
        "maps.zip": {"url": "http://files.example.org/data/maps.zip", "approx_size": "7 kB", "hash": None,
                     "checksum_source": "none published", "group": "set"},
        "full.zip": {"url": "https://example.org/", "hash": None, "checksum_source": "none published",
                     "manual": "register at https://example.org/register and download full.zip", "group": "set"},
    }))


@pytest.fixture
def server(monkeypatch):
    """The loopback server, used as MAFT_MIRROR, with the offline switches (set by conftest) cleared."""
    with LoopbackServer() as files:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("MAFT_OFFLINE", raising=False)
        monkeypatch.setenv("MAFT_MIRROR", files.url)
        yield files


def leftovers(directory: Path) -> list[str]:
    bookkeeping = (verified.VERIFIED_RECORD, verified.DOWNLOAD_LOCK)
    return sorted(p.name for p in directory.iterdir() if p.name not in bookkeeping)


# ------------------------------------------------------------------------------------------- registry


def test_shipped_registry_covers_every_dataset_and_sam_with_recorded_checksums():
    registry = load_registry()
    for benchmark in DATASETS:
        recipe = registry.recipe_for(benchmark)
        assert all(item.file in registry.files for item in recipe.files)
    sam = {name: entry for name, entry in registry.files.items() if entry.group == "sam"}
    assert sorted(sam) == ["sam_vit_b_01ec64.pth", "sam_vit_h_4b8939.pth", "sam_vit_l_0b3195.pth"]
    for name, entry in sam.items():  # Meta's file names carry the md5's first six hex digits
        assert entry.hash.startswith("md5:" + name.split("_")[-1].removesuffix(".pth"))
        assert entry.url == f"https://dl.fbaipublicfiles.com/segment_anything/{name}"
    voc = registry.file("VOCtrainval_11-May-2012.tar")
    assert (voc.hash, voc.size) == ("md5:6cd6e144f989b92b3379bac3b3de84fd", 1999639040)  # torchvision's record
    for entry in registry.files.values():
        assert entry.checksum_source, entry.name
        if entry.hash is None:  # say so rather than invent one
            assert "none published" in entry.checksum_source, entry.name
    assert registry.file("ADE20K_2021_17_01.zip").manual  # needs a registration
    assert ("ViT-B-16", "openai") in registry.clip


def test_registry_rejects_a_malformed_hash(tmp_path):
    path = write_registry(tmp_path / "bad.yaml", {"x.bin": {"url": "https://a/x.bin", "hash": "md5:123", "group": "g"}})
    with pytest.raises(ValueError, match=r"bad.yaml: files.x.bin: hash must be 'md5:<32 hex>'"):
        load_registry(path)


def test_mirror_replaces_scheme_and_host(monkeypatch):
    monkeypatch.setenv("MAFT_MIRROR", "http://mirror.local:8080/pub/")
    assert verified.mirror_url("https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth") == \
        "http://mirror.local:8080/pub/segment_anything/sam_vit_b_01ec64.pth"
    monkeypatch.delenv("MAFT_MIRROR")
    assert verified.mirror_url("https://a.org/b/c.zip") == "https://a.org/b/c.zip"


# ------------------------------------------------------------------------------------------ downloads


def test_download_through_the_mirror_is_verified_placed_and_not_fetched_again(server, registry, tmp_path):
    server.files[WEIGHTS_PATH] = PAYLOAD
    path = fetch("weights.bin", tmp_path / "w", progress=False, registry=registry)
    assert path == (tmp_path / "w" / "weights.bin").resolve() and path.read_bytes() == PAYLOAD
    assert [(r.path, r.status, r.sent) for r in server.log] == [(WEIGHTS_PATH, 200, len(PAYLOAD))]
    assert leftovers(tmp_path / "w") == ["weights.bin"]  # no .part, no pooch temporary file
    assert verified.is_verified(registry.file("weights.bin"), path)
    assert fetch("weights.bin", tmp_path / "w", progress=False, registry=registry) == path
    assert len(server.log) == 1  # present and verified: no second request


def test_checksum_mismatch_is_rejected_and_nothing_is_left(server, registry, tmp_path):
    server.files[WEIGHTS_PATH] = bytes(reversed(PAYLOAD))  # same size, other bytes
    with pytest.raises(ChecksumError) as info:
        fetch("weights.bin", tmp_path, progress=False, registry=registry)
    message = str(info.value)
    assert "weights.bin" in message and md5(PAYLOAD) in message
    assert leftovers(tmp_path) == ["registry.yaml"]


def test_truncated_file_on_the_mirror_is_rejected(server, registry, tmp_path):
    server.files[WEIGHTS_PATH] = PAYLOAD[:4000]  # the mirror holds a truncated copy, served as complete
    with pytest.raises(ChecksumError, match=rf"weights.bin .*truncated \(4000 bytes; 10240 recorded\): "
                                            rf"expected {md5(PAYLOAD)}"):
        fetch("weights.bin", tmp_path / "w", progress=False, registry=registry)
    assert leftovers(tmp_path / "w") == []
    # An archive without a published checksum is checked by its own CRCs before it is placed.
    server.files["/data/maps.zip"] = ZIP[: len(ZIP) // 2]
    with pytest.raises(ChecksumError, match="maps.zip.part is corrupt or truncated"):
        fetch("maps.zip", tmp_path / "w", progress=False, registry=registry)
    assert leftovers(tmp_path / "w") == []
    server.files["/data/maps.zip"] = ZIP
    assert fetch("maps.zip", tmp_path / "w", progress=False, registry=registry).read_bytes() == ZIP


def test_interrupted_download_keeps_its_bytes_and_resumes_with_a_range_request(server, tmp_path):
    big = random.Random(2).randbytes(400_000)
    registry = load_registry(write_registry(tmp_path / "registry.yaml", {"big.bin": {
        "url": "https://dl.example.org/big.bin", "size": len(big), "hash": md5(big), "group": "sam"}}))
    server.files["/big.bin"] = big
    server.cut_after["/big.bin"] = 250_000  # announce 400000 bytes, send 250000, drop the connection
    with pytest.raises(DownloadInterrupted, match=r"stopped after \d+ of 400000 bytes.*big.bin.part; run the same"):
        fetch("big.bin", tmp_path, progress=False, registry=registry)
    assert not (tmp_path / "big.bin").exists()  # nothing under the final name
    kept = (tmp_path / "big.bin.part").stat().st_size
    assert 0 < kept <= 250_000 and (tmp_path / "big.bin.part").read_bytes() == big[:kept]

    path = fetch("big.bin", tmp_path, progress=False, registry=registry)
    assert path.read_bytes() == big
    first, second = server.requests_for("/big.bin")
    assert (first.range, first.sent) == (None, 250_000)
    assert (second.range, second.status, second.sent) == (f"bytes={kept}-", 206, len(big) - kept)
    assert second.sent < len(big)  # the second run fetched only the rest
    assert leftovers(tmp_path) == ["big.bin", "registry.yaml"]


def test_a_corrupt_partial_file_never_survives(server, registry, tmp_path):
    server.files[WEIGHTS_PATH] = PAYLOAD
    (tmp_path / "weights.bin.part").write_bytes(b"\xff" * 3000)  # a damaged prefix from some earlier run
    with pytest.raises(ChecksumError, match=md5(PAYLOAD)):
        fetch("weights.bin", tmp_path, progress=False, registry=registry)
    assert leftovers(tmp_path) == ["registry.yaml"]
    assert fetch("weights.bin", tmp_path, progress=False, registry=registry).read_bytes() == PAYLOAD


def test_a_download_waits_for_another_process_downloading_into_the_same_folder(server, registry, tmp_path):
    server.files[WEIGHTS_PATH] = PAYLOAD
    (tmp_path / "w").mkdir()
    other = FileLock(tmp_path / "w" / verified.DOWNLOAD_LOCK)  # e.g. another torchrun rank
    other.acquire()
    result = {}
    thread = threading.Thread(target=lambda: result.update(path=fetch("weights.bin", tmp_path / "w", progress=False,
                                                                      registry=registry)))
    thread.start()
    thread.join(timeout=1.0)
    assert thread.is_alive()  # waiting for the lock
    (tmp_path / "w" / "weights.bin").write_bytes(PAYLOAD)  # the other process finished the download
    other.release()
    thread.join(timeout=10)
    assert result["path"].read_bytes() == PAYLOAD and server.log == []  # used, after a check; not fetched again


def test_a_download_that_cannot_fit_on_the_disk_fails_before_fetching(server, tmp_path, monkeypatch):
    registry = load_registry(write_registry(tmp_path / "registry.yaml", {"huge.bin": {
        "url": "https://dl.example.org/huge.bin", "size": 19_336_861_798, "hash": md5(b""), "group": "sam"}}))
    monkeypatch.setattr(verified.shutil, "disk_usage", lambda path: SimpleNamespace(free=5_000_000_000))
    with pytest.raises(verified.DownloadError, match=r"huge.bin needs 19.34 GB more in .*, which has 5.00 GB free"):
        fetch("huge.bin", tmp_path, progress=False, registry=registry)
    assert server.log == []


def test_offline_switch_fails_at_once_naming_the_file_and_both_ways(server, registry, tmp_path, monkeypatch):
    server.files[WEIGHTS_PATH] = PAYLOAD
    for variable in ("MAFT_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.setenv(variable, "1")
        with pytest.raises(MissingFileError) as info:
            fetch("weights.bin", tmp_path / "w", progress=False, registry=registry)
        message = str(info.value)
        assert str(tmp_path / "w" / "weights.bin") in message and "MAFT_OFFLINE" in message
        assert f"{server.url}{WEIGHTS_PATH}" in message and "copy the file to" in message
        monkeypatch.delenv(variable)
    assert server.log == []  # nothing was requested
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "weights.bin").write_bytes(PAYLOAD)  # provided by hand: used offline, after a check
    monkeypatch.setenv("MAFT_OFFLINE", "true")
    assert fetch("weights.bin", tmp_path / "w", progress=False, registry=registry).read_bytes() == PAYLOAD


def test_corrupt_file_in_place_is_reported_and_kept(registry, tmp_path):
    (tmp_path / "weights.bin").write_bytes(PAYLOAD[:-1] + b"x")
    with pytest.raises(ChecksumError, match=rf"weights.bin is corrupt or truncated: its md5 is [0-9a-f]{{32}}, "
                                            rf"expected {md5(PAYLOAD)}"):
        fetch("weights.bin", tmp_path, progress=False, registry=registry)
    assert (tmp_path / "weights.bin").exists()  # perhaps the user's: never deleted


def test_file_that_needs_a_registration_says_where_and_is_verified_once_placed(server, registry, tmp_path):
    with pytest.raises(MissingFileError, match=r"register at https://example.org/register .*put it at .*full.zip"):
        fetch("full.zip", tmp_path, progress=False, registry=registry)
    assert server.log == []  # never fetched
    broken = bytearray(ZIP)
    broken[1000] ^= 0xFF  # inside the first member's data: its CRC-32 no longer holds
    (tmp_path / "full.zip").write_bytes(bytes(broken))
    with pytest.raises(ChecksumError, match="full.zip is corrupt or truncated"):
        fetch("full.zip", tmp_path, progress=False, registry=registry)
    (tmp_path / "full.zip").write_bytes(ZIP)
    assert fetch("full.zip", tmp_path, progress=False, registry=registry) == (tmp_path / "full.zip").resolve()


# --------------------------------------------------------------------------------------------- CLIP


@pytest.fixture
def url_tag(server, tiny_clip, monkeypatch):
    """A made-up open_clip tag of the tiny model whose weights live on the loopback server."""
    buffer = io.BytesIO()
    torch.save(tiny_clip[0].state_dict(), buffer)
    server.files["/clip/maft-test-vit.pt"] = buffer.getvalue()
    tag = open_clip.pretrained._pcfg(url=f"{server.url}/clip/maft-test-vit.pt")
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "maft-test-vit", {"loopback": tag})
    return server


def test_load_clip_downloads_an_uncached_tag_through_open_clip(url_tag, tiny_clip, tmp_path):
    model, _, _ = load_clip("maft-test-vit", pretrained="loopback", cache_dir=str(tmp_path))
    assert model.maft_source["checkpoint"] == str((tmp_path / "maft-test-vit.pt").resolve())
    for key, value in tiny_clip[0].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    load_clip("maft-test-vit", pretrained="loopback", cache_dir=str(tmp_path))
    assert len(url_tag.log) == 1  # the second load finds it in the cache


def test_load_clip_offline_fails_at_once_and_a_failed_download_leaves_no_file(url_tag, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"offline mode is on .*maft-test-vit.pt.*maft download clip "
                                                r"maft-test-vit loopback.*pretrained='/path/to/that/file'"):
        load_clip("maft-test-vit", pretrained="loopback", cache_dir=str(tmp_path))
    assert url_tag.log == []
    monkeypatch.delenv("HF_HUB_OFFLINE")
    url_tag.cut_after["/clip/maft-test-vit.pt"] = 300_000
    with pytest.raises(FileNotFoundError, match=r"downloading them failed: .*stopped after \d+ of \d+ bytes"):
        load_clip("maft-test-vit", pretrained="loopback", cache_dir=str(tmp_path))
    assert not (tmp_path / "maft-test-vit.pt").exists()  # no truncated file for a later run to load
    kept = (tmp_path / "maft-test-vit.pt.part").stat().st_size
    load_clip("maft-test-vit", pretrained="loopback", cache_dir=str(tmp_path))  # resumes
    assert kept > 0 and url_tag.log[-1].range == f"bytes={kept}-" and (tmp_path / "maft-test-vit.pt").is_file()


# ---------------------------------------------------------------------------------------- command line


def run_cli(*argv) -> int:
    with pytest.raises(SystemExit) as info:
        cli_main(["download", *argv])
    return info.value.code


def test_list_shows_every_shipped_file_with_its_size(capsys, tmp_path):
    assert run_cli("--list", "--dst", str(tmp_path)) == 0
    out = capsys.readouterr().out
    for name in load_registry().files:
        assert name in out
    sam_b = next(line for line in out.splitlines() if "sam_vit_b_01ec64.pth" in line)
    assert "375.04 MB" in sam_b and "md5:01ec64d29a2fca3f0661936605ae66f8" in sam_b and sam_b.endswith("missing")
    assert "~659 MB" in out and "no published checksum" in out and "needs registration, missing" in out
    assert "voc20 not prepared" in out and "ViT-B-16 / openai: " in out


def test_list_tells_present_partial_and_missing_files(capsys, registry, tmp_path, monkeypatch):
    monkeypatch.setattr(download_registry, "REGISTRY_FILE", tmp_path / "registry.yaml")  # the fixture's registry
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "weights.bin.part").write_bytes(PAYLOAD[:512])
    assert run_cli("--list", "--dst", str(tmp_path), "--weights", str(weights)) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "weights.bin" in x)
    assert line.endswith("partial (512 of 10240 bytes; the next download resumes)")
    (weights / "weights.bin.part").unlink()
    (weights / "weights.bin").write_bytes(PAYLOAD)
    run_cli("--list", "--dst", str(tmp_path), "--weights", str(weights))
    assert next(x for x in capsys.readouterr().out.splitlines() if "weights.bin" in x).endswith(
        "present, not yet verified")
    fetch("weights.bin", weights, progress=False, registry=registry)
    run_cli("--list", "--dst", str(tmp_path), "--weights", str(weights))
    assert next(x for x in capsys.readouterr().out.splitlines() if "weights.bin" in x).endswith("present, verified")


def test_download_sam_command_fetches_the_checkpoint_through_the_mirror(server, capsys, tmp_path, monkeypatch):
    shipped = load_registry().file("sam_vit_b_01ec64.pth")
    fake = b"not really SAM" * 100
    path = tmp_path / "registry.yaml"
    write_registry(path, {shipped.name: {"url": shipped.url, "size": len(fake), "hash": md5(fake),
                                         "checksum_source": "the test", "group": "sam"}})
    monkeypatch.setattr(download_registry, "REGISTRY_FILE", path)
    server.files["/segment_anything/sam_vit_b_01ec64.pth"] = fake  # the official path, on the mirror
    assert run_cli("--quiet", "sam", "vit_b", "--dst", str(tmp_path / "w")) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "w" / shipped.name).resolve())
    assert (tmp_path / "w" / shipped.name).read_bytes() == fake
    monkeypatch.setenv("MAFT_OFFLINE", "1")
    assert run_cli("--quiet", "sam", "vit_b", "--dst", str(tmp_path / "other")) == 2
    assert "downloads are off" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- network guard


def test_the_suite_refuses_connections_to_anything_but_loopback(refuse_remote_connections):
    with pytest.raises(refuse_remote_connections, match="refused"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routable
    with pytest.raises(requests.ConnectionError, match="the test suite opens no network connection"):
        requests.get("http://93.184.215.14/", timeout=1)
    with socket.socket() as sock, pytest.raises(refuse_remote_connections):
        sock.connect(("example.org", 80))  # a host name would be resolved on the network
    with LoopbackServer() as files:  # loopback still works
        files.files["/ok"] = b"fine"
        assert requests.get(f"{files.url}/ok", timeout=5).content == b"fine"
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # and the Hugging Face libraries are told to stay offline
