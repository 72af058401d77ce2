"""Shared test fixtures: tiny random CLIP models and an isolated cache.

Tests run offline: the Hugging Face libraries are told so before anything imports them (which also
turns maft's own downloads off unless a test says otherwise), any socket connection to an address
other than loopback fails for the whole session (``refuse_remote_connections``), and maft's
text-classifier cache points at a fresh temporary folder for the whole session (so tests never read
or fill ``~/.cache/maft``).

Torch runs single-threaded in tests (override with ``MAFT_TEST_THREADS``): the test models are tiny,
and on a small shared machine thread hand-off costs far more than it saves (measured: a tiny
``encode_text`` took 160 ms with 2 busy threads, 4 ms with 1).

The CLIP fixtures are session-scoped and shared: treat them as read-only. A test that trains, resizes
or otherwise changes a model takes its own copy (``copy.deepcopy(model)``) or uses ``make_tiny_clip``.
"""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

torch.set_num_threads(int(os.environ.get("MAFT_TEST_THREADS", "1")))


class RemoteConnectionRefused(ConnectionRefusedError):
    """Raised by the suite's guard when code under test tries to reach a non-loopback address."""


def _is_loopback(address) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX paths and the like never leave the machine
        return True
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name: connecting would resolve it on the network
        return False


@pytest.fixture(scope="session", autouse=True)
def refuse_remote_connections():
    """Every socket connection to a non-loopback address fails, for the whole session.

    Patched at ``socket.socket.connect``/``connect_ex``, which ``socket.create_connection``, urllib,
    requests/urllib3 and the Hugging Face clients all go through; tests may still start a server on
    127.0.0.1 and talk to it.
    """
    originals = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex")}

    def guarded(name):
        def method(self, address, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
                raise RemoteConnectionRefused(f"the test suite opens no network connection; refused {address!r}")
            return originals[name](self, address, *args, **kwargs)
        return method

    with pytest.MonkeyPatch.context() as patch:
        for name in originals:
            patch.setattr(socket.socket, name, guarded(name))
        yield RemoteConnectionRefused


@pytest.fixture(scope="session", autouse=True)
def isolated_maft_cache(tmp_path_factory):
    """Point ``maft.utils.paths.cache_dir`` (``$MAFT_CACHE``) at a temporary folder for the session."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("maft-cache")
        patch.setenv("MAFT_CACHE", str(folder))
        yield folder


def _seeded_clip(name: str, seed: int = 0, **kwargs):
    from maft.clip import load_clip

    torch.manual_seed(seed)
    return load_clip(name, **kwargs)


@pytest.fixture(scope="session")
def tiny_clip():
    """``(model, preprocess, tokenizer)`` of "maft-test-vit": random ViT, 32x32 input, 8x8 patches
    (4x4 grid), width 64, 6 blocks, 4 heads, embedding 32; text context 16. Eval mode, seed 0."""
    return _seeded_clip("maft-test-vit")


@pytest.fixture(scope="session")
def tiny_rn_clip():
    """``(model, preprocess, tokenizer)`` of "maft-test-rn": random ModifiedResNet [1,1,1,1], width 16,
    64x64 input, embedding 32. Eval mode, seed 0."""
    return _seeded_clip("maft-test-rn")


@pytest.fixture
def make_tiny_clip():
    """Factory for fresh, private tiny models: ``make_tiny_clip("maft-test-vit", seed=0, image_size=64)``."""
    return _seeded_clip


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """``(output_dir, runs)`` of the whole notebook series on the smoke profile, run once per session
    (70-120 s): the notebook tests and the browser test of the explorer share it. Treat as read-only."""
    from maft.notebook import series

    out = tmp_path_factory.mktemp("smoke")
    runs = series.run_series("smoke", output_dir=out, progress=False)
    return out, runs


# One real VOC pair for the single-image tests: a train (VOC raw id 19) on background, from ../shared/data.
VOC_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "voc2012"
VOC_IMAGE_ID = "2007_000042"


@pytest.fixture(scope="module")
def voc_pair(tmp_path_factory):
    """The VOC image path and a label PNG of indices into ["background", "train"] (255 void)."""
    raw = np.array(Image.open(VOC_SAMPLE / "masks" / "val" / f"{VOC_IMAGE_ID}.png"))
    label = np.full(raw.shape, 255, dtype=np.uint8)
    label[raw == 0] = 0
    label[raw == 19] = 1
    path = tmp_path_factory.mktemp("voc_pair") / f"{VOC_IMAGE_ID}.png"
    Image.fromarray(label).save(path)
    return str(VOC_SAMPLE / "images" / "val" / f"{VOC_IMAGE_ID}.jpg"), str(path)
