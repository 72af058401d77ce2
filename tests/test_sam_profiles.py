"""Segment Anything proposals a user can have: computed once per image into a cache keyed by the
settings that change them, and the SAM profiles (paper Table 5) run in miniature from a loopback
"internet": VOC archives and a tiny random SAM checkpoint (segment_anything's own modules) served on
127.0.0.1, downloaded, verified, prepared, SAM's proposals cached, fine-tuned, evaluated, reported."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import scipy.io
import torch
import yaml
from loopback_http import LoopbackServer
from test_download_data import md5, tar_of, use_voc_registry
from test_prepare import VOC_PALETTE, save_jpg, save_png

from maft import experiment
from maft.config import load
from maft.downloads import verified
from maft.notebook.prerequisites import fetch_profile
from maft.notebook.series import load_profile, run_series
from maft.proposals import CachedProposals, Proposals, build_sam, generator_record, settings_digest
from maft.train import drawn_images

torch.set_num_threads(2)


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------
class Counting:
    """A generator that remembers whom it ran on; masks depend on the image so files can be compared."""

    def __init__(self):
        self.calls = []

    def __call__(self, sample):
        self.calls.append(sample["id"])
        image = sample["image"].float().mean(0)
        return Proposals(masks=torch.stack([(image > image.mean()).float(), (image <= image.mean()).float()]))


def _samples(n=3, size=(6, 5)):
    generator = torch.Generator().manual_seed(0)
    return [{"id": f"img{i}", "image": torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8)}
            for i in range(n)]


def test_proposals_are_computed_once_and_a_cached_run_never_builds_the_generator(tmp_path):
    samples, inner = _samples(), Counting()
    built = []
    cache = CachedProposals(lambda: built.append(1) or inner, tmp_path / "c", {"kind": "x", "points": 4})
    first = [cache(s) for s in samples]
    assert inner.calls == ["img0", "img1", "img2"] and built == [1] and cache.computed == 3
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["img0.npz", "img1.npz", "img2.npz", "settings.json"]
    assert json.loads((tmp_path / "c" / "settings.json").read_text()) == {"kind": "x", "points": 4}

    def never():
        raise AssertionError("a fully cached run built the generator")

    again = CachedProposals(never, tmp_path / "c", {"points": 4, "kind": "x"})  # key order is irrelevant
    for sample, before in zip(samples, first):
        assert torch.equal(again(sample).masks, before.masks)
    assert again.computed == 0


def test_other_settings_get_another_folder_and_a_mismatched_folder_is_refused(tmp_path):
    a, b = {"kind": "sam", "points_per_side": 32}, {"kind": "sam", "points_per_side": 16}
    assert CachedProposals.folder(tmp_path, "voc20", "sam", a) != CachedProposals.folder(tmp_path, "voc20", "sam", b)
    assert CachedProposals.folder(tmp_path, "voc20", "sam", a).name == f"sam-{settings_digest(a)}"
    folder = tmp_path / "c"
    CachedProposals(Counting, folder, a)(_samples(1)[0])
    with pytest.raises(ValueError, match=r"other settings \(\['points_per_side'\] differ"):
        CachedProposals(Counting, folder, b)


def test_an_interrupted_computation_leaves_nothing_a_later_run_would_trust(tmp_path):
    def broken(sample):
        raise KeyboardInterrupt

    cache = CachedProposals(lambda: broken, tmp_path / "c", {"kind": "x"})
    with pytest.raises(KeyboardInterrupt):
        cache(_samples(1)[0])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["settings.json"]


def test_fill_computes_only_what_is_missing_and_cached_masks_of_another_size_are_an_error(tmp_path):
    samples, inner = _samples(4), Counting()
    cache = CachedProposals(lambda: inner, tmp_path / "c", {"kind": "x"})
    assert cache.fill(samples, [0, 2], progress=False) == 2
    assert cache.fill(samples, progress=False) == 2 and inner.calls == ["img0", "img2", "img1", "img3"]
    bigger = {**samples[0], "image": torch.zeros(3, 7, 7, dtype=torch.uint8)}
    with pytest.raises(ValueError, match="img0.npz"):
        cache(bigger)


def test_the_record_fills_sam_defaults_names_the_checkpoint_and_rejects_unknown_settings(tmp_path):
    record = generator_record("sam", {"points_per_side": 16, "device": "cuda", "points_per_batch": 8})
    assert record["checkpoint"] == "sam_vit_h_4b8939.pth" and record["model_type"] == "vit_h"
    assert record["points_per_side"] == 16 and record["pred_iou_thresh"] == 0.88 and record["max_proposals"] is None
    assert "device" not in record and "points_per_batch" not in record  # they do not change the masks
    weights = tmp_path / "mine.pth"
    weights.write_bytes(b"12345")
    assert generator_record("sam", {"checkpoint": str(weights)})["checkpoint_bytes"] == 5
    with pytest.raises(ValueError, match=r"unknown SAM proposal settings \['points'\]"):
        generator_record("sam", {"points": 16})


def test_a_sam_config_gets_a_cached_generator_under_the_cache_folder_by_dataset(tmp_path):
    config = load("world", [f"proposals={{kind: sam, settings: {{model_type: maft_test, cache: {tmp_path}}}}}"])
    generator = experiment.build_generator(config, "train")
    assert isinstance(generator, CachedProposals)
    assert generator.directory.parent == tmp_path / "world" and generator.directory.name.startswith("sam-")
    assert generator.settings["model_type"] == "maft_test"
    plain = load("world", ["proposals={kind: sam, settings: {model_type: maft_test, cache: false}}"])
    with pytest.raises(FileNotFoundError):  # not cached: builds SAM now, and there is no checkpoint offline
        experiment.build_generator(plain, "train", checkpoint=str(tmp_path / "none.pth"))


# --------------------------------------------------------------------------------------------------
# The SAM profiles in miniature
# --------------------------------------------------------------------------------------------------
TRAIN_IDS = ("2007_000010", "2007_000011", "2007_000012", "2007_000013")
VAL_IDS = ("2007_000020", "2007_000021")


def _voc_label(seed: int) -> np.ndarray:
    """32x32 VOC label: background, a seen class (1..15) block and an unseen (16..20) block."""
    rng = np.random.default_rng(seed)
    label = np.zeros((32, 32), dtype=np.int64)
    label[4:18, 3:16] = rng.integers(1, 16)
    label[16:30, 14:30] = rng.integers(16, 21)
    label[16:18, 14:16] = 255
    return label


def _archives(tmp_path: Path) -> dict[str, bytes]:
    voc_root = tmp_path / "build-voc"
    voc = voc_root / "VOCdevkit" / "VOC2012"
    for seed, id_ in enumerate(TRAIN_IDS + VAL_IDS):
        save_jpg(voc / "JPEGImages" / f"{id_}.jpg", height=32, width=32, seed=seed)
        save_png(voc / "SegmentationClass" / f"{id_}.png", _voc_label(seed), VOC_PALETTE)
    (voc / "ImageSets" / "Segmentation").mkdir(parents=True)
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(TRAIN_IDS) + "\n")
    (voc / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VAL_IDS) + "\n")
    cls = tmp_path / "build-sbd" / "benchmark_RELEASE" / "dataset" / "cls"
    cls.mkdir(parents=True)
    scipy.io.savemat(cls / f"{TRAIN_IDS[0]}.mat", {"GTcls": {"Segmentation": _voc_label(0).astype(np.uint8),
                                                            "CategoriesPresent": np.array([1])}})
    torch.manual_seed(0)
    checkpoint = tmp_path / "sam.pth"
    torch.save(build_sam("maft_test").state_dict(), checkpoint)
    return {"VOCtrainval_11-May-2012.tar": tar_of(voc_root, "w"),
            "benchmark.tgz": tar_of(tmp_path / "build-sbd", "w:gz"),
            "sam.pth": checkpoint.read_bytes()}


@pytest.fixture
def mirror(monkeypatch, tmp_path):
    """The shipped VOC entries and a tiny SAM checkpoint, with their sizes and md5s, on a loopback mirror."""
    archives = _archives(tmp_path)
    sam_bytes = archives.pop("sam.pth")
    sam_name = f"sam_maft_test_{md5(sam_bytes)[4:10]}.pth"
    shipped = verified.load_registry()
    files = {name: {"url": shipped.file(name).url, "size": len(data), "hash": md5(data), "group": "voc2012"}
             for name, data in archives.items()}
    sam_url = f"https://dl.fbaipublicfiles.com/segment_anything/{sam_name}"
    files[sam_name] = {"url": sam_url, "size": len(sam_bytes), "hash": md5(sam_bytes), "group": "sam"}
    use_voc_registry(monkeypatch, tmp_path, files)
    monkeypatch.setenv("MAFT_CACHE", str(tmp_path / "cache"))  # SAM weights and the proposal cache
    monkeypatch.delenv("MAFT_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MAFT_DATA", raising=False)
    with LoopbackServer() as server:
        for name, data in archives.items():
            server.files[urlsplit(shipped.file(name).url).path] = data
        server.files[urlsplit(sam_url).path] = sam_bytes
        monkeypatch.setenv("MAFT_MIRROR", server.url)
        yield server


def _miniature(name: str, tmp_path: Path, **changes) -> Path:
    """The shipped profile at toy sizes: a random tiny CLIP, the tiny SAM, CPU, two iterations."""
    profile = load_profile(name)
    profile["overrides"] = list(profile["overrides"]) + [
        "model.name=maft-test-vit", "model.pretrained=null", "model.image_size=32", "model.start_layer=null",
        f"data.root={tmp_path / 'data'}", "text.templates=single",
        "train.iterations=2", "train.batch_size=2", "train.amp=false", "train.device=cpu", "train.num_workers=0",
        "proposals.settings.model_type=maft_test", "proposals.settings.device=cpu",
        "proposals.settings.points_per_side=4", "proposals.settings.pred_iou_thresh=0.0",
        "proposals.settings.stability_score_thresh=0.0", "proposals.settings.box_nms_thresh=1.0",
        "proposals.settings.max_proposals=8"]
    profile.update(device="cpu", max_images=2, n_show=2, n_examples=1, n_images=1,
                   bench_models=["maft-test-vit:32"], bench_n=[4], bench_repeats=1, **changes)
    profile.pop("profile")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def _cache(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "cache" / "proposals" / "voc20").iterdir()
    return folder


def test_paper_voc_sam_runs_from_downloads_to_the_paper_table(mirror, tmp_path):
    profile = _miniature("paper_voc_sam", tmp_path)
    out = tmp_path / "out"
    runs = run_series(str(profile), output_dir=out, progress=False)
    assert len(runs) == 8
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in mirror.log)
    assert fetched[:2] == ["VOCtrainval_11-May-2012.tar", "benchmark.tgz"] and fetched[2].startswith("sam_maft_test_")
    assert (tmp_path / "data" / "voc2012").is_dir()
    assert (tmp_path / "cache" / "weights" / fetched[2]).is_file()

    cache = _cache(tmp_path)
    settings = json.loads((cache / "settings.json").read_text())
    assert settings["model_type"] == "maft_test" and settings["points_per_side"] == 4 and settings["max_proposals"] == 8
    config = load(load_profile(str(profile))["config"], yaml.safe_load(profile.read_text())["overrides"])
    train = experiment.build_dataset_split(config, "train_split", "train")
    drawn = {train.items[i].id for i in drawn_images(config, len(train))}
    cached = {p.stem for p in cache.glob("*.npz")}
    assert cached == set(VAL_IDS) | drawn  # the evaluation images and the ones fine-tuning drew
    masks = np.load(cache / f"{VAL_IDS[0]}.npz")["masks"]
    assert masks.shape[1:] == (32, 32) and 1 <= len(masks) <= 8

    metrics = json.loads((out / "metrics" / "04.json").read_text())
    beside = {row["method"]: row for row in metrics["paper"] if row["metric"] == "mIoU^u"}
    assert set(beside) == {"SAM", "SAM + MAFT"} and beside["SAM + MAFT"]["paper"] == 88.6
    measured = {row["classifier"]: row["miou_unseen"] for row in metrics["clip_only"]}
    assert beside["SAM + MAFT"]["measured"] == pytest.approx(measured["MAFT IP-CLIP"])
    assert beside["SAM"]["difference"] == pytest.approx(measured["frozen IP-CLIP"] - 86.7)
    report = (out / "report.md").read_text()
    assert "kind: sam" in report and "The paper beside ours" in report and "2 steps on `sam` proposals" in report
    assert json.loads((out / "metrics" / "03.json").read_text())["proposals"] == "sam"
    assert json.loads((out / "metrics" / "07.json").read_text())["sam_model_type"] == "maft_test"

    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    steps = fetch_profile(load_profile(str(profile)), progress=False)  # a re-run: nothing new
    assert [s.result.split(",")[0] for s in steps if s.kind == "SAM proposals"] == ["0 computed", "0 computed"]
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before
    assert len(mirror.log) == 3


def test_paper_ov_sam_trains_on_every_class_and_sets_transfer_rows_beside_table_5b(mirror, tmp_path):
    # the transfer datasets swapped for the served VOC: the open-vocabulary path, SAM and Table 5b rows
    profile = _miniature("paper_ov_sam", tmp_path, transfer={"PAS-20": ["data.dataset=voc20"]},
                         paper={"PAS-20 / frozen IP-CLIP": {"table": "5b", "method": "SAM"},
                                "PAS-20 / MAFT IP-CLIP": {"table": "5b", "method": "SAM + MAFT"}})
    spec = yaml.safe_load(profile.read_text())
    spec["overrides"].append("data.dataset=voc20")
    profile.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    run_series(str(profile), only=["03", "04"], output_dir=out, progress=False)
    config = load(spec["config"], spec["overrides"])
    assert config["data"]["protocol"] == "open_vocabulary"
    train = experiment.build_dataset_split(config, "train_split", "train")
    labels = set().union(*(set(train[i]["label"].unique().tolist()) for i in range(len(train))))
    assert labels & set(range(15, 20))  # VOC's zero-shot unseen classes stay labelled for training here
    assert list(train.unseen) == []
    metrics = json.loads((out / "metrics" / "04.json").read_text())
    rows = {(row["method"], row["dataset"]): row for row in metrics["paper"]}
    assert rows[("SAM + MAFT", "PAS-20")]["paper"] == 90.0 and rows[("SAM", "PAS-20")]["paper"] == 85.6
    transfer = {row["classifier"]: row["miou"] for row in metrics["transfer"]}
    assert rows[("SAM + MAFT", "PAS-20")]["measured"] == pytest.approx(transfer["MAFT IP-CLIP"])
    assert {p.stem for p in _cache(tmp_path).glob("*.npz")} >= set(VAL_IDS)


def test_drawn_images_are_exactly_the_images_the_sampler_yields_on_all_ranks():
    from maft.distributed import GlobalBatchSampler

    yielded = set()
    for rank in range(2):
        yielded |= {i for batch in GlobalBatchSampler(10, 4, 3, 1, 3, rank, 2) for i in batch}
    assert GlobalBatchSampler(10, 4, 3, 1, 3).drawn() == sorted(yielded)
    assert len(yielded) < 10  # 2 steps of 4 over a 10-image epoch: some images never drawn
    config = load("world", ["train.batch_size=2", "train.iterations=3"])
    assert drawn_images(config, 100) == GlobalBatchSampler(100, 2, 0, 0, 3).drawn() and len(drawn_images(config, 100)) == 6
