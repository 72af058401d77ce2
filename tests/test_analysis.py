"""maft.studies.experiment_runs and maft.studies.variants (what the notebooks compute) and the explorer, on
hand-made cases and a tiny CLIP."""
import json

import pytest
import torch

from maft import config, experiment
from maft.studies import experiment_runs, variants
from maft.viz.explorer import ProposalExplorer


def test_confused_regions_counts_poor_proposals_scoring_like_the_whole():
    points = [
        # region (image 0, class 3): a part with IoU 0.3 scores above the whole object -> confused
        {"classifier": "a", "image": 0, "id": "i0", "class": 3, "proposal": 0, "kind": "whole", "iou": 1.0, "score": 0.6},
        {"classifier": "a", "image": 0, "id": "i0", "class": 3, "proposal": 1, "kind": "part", "iou": 0.3, "score": 0.7},
        # region (image 1, class 3): the poor proposal scores lower -> not confused
        {"classifier": "a", "image": 1, "id": "i1", "class": 3, "proposal": 0, "kind": "whole", "iou": 1.0, "score": 0.9},
        {"classifier": "a", "image": 1, "id": "i1", "class": 3, "proposal": 1, "kind": "background", "iou": 0.4,
         "score": 0.2},
        # region without a poor proposal: not counted (but its kinds are)
        {"classifier": "a", "image": 2, "id": "i2", "class": 1, "proposal": 0, "kind": "whole", "iou": 1.0, "score": 0.5},
        {"classifier": "a", "image": 2, "id": "i2", "class": 1, "proposal": 1, "kind": "eroded", "iou": 0.8, "score": 0.9},
        # a tie counts as confused ("at least as high")
        {"classifier": "b", "image": 0, "id": "i0", "class": 3, "proposal": 0, "kind": "whole", "iou": 1.0, "score": 0.5},
        {"classifier": "b", "image": 0, "id": "i0", "class": 3, "proposal": 1, "kind": "merged", "iou": 0.49,
         "score": 0.5},
    ]
    found = variants.confused_regions(points, class_names=["c0", "c1", "c2", "cat"])
    assert {name: (v["regions"], v["confused"], v["confusion_rate"]) for name, v in found.items()} == {
        "a": (2, 1, 0.5), "b": (1, 1, 1.0)}
    # the largest margin first: image 0's part beats its whole object by 0.1, image 1's background loses by 0.7
    assert [(e["id"], e["class"], e["kind"], e["margin"]) for e in found["a"]["examples"]] == [
        ("i0", "cat", "part", 0.1), ("i1", "cat", "background", -0.7)]
    assert found["a"]["by_kind"]["whole"] == {"score": pytest.approx(2.0 / 3), "iou": 1.0, "n": 3}
    assert found["a"]["by_kind"]["eroded"] == {"score": 0.9, "iou": 0.8, "n": 1}


def test_pick_proposals_takes_the_first_region_and_one_of_each_kind():
    kinds = ["whole", "whole", "part", "part", "background", "merged", "part"]
    sources = torch.tensor([4, 7, 7, 4, 4, 7, 4])
    assert experiment_runs.pick_proposals(kinds, sources) == [0, 3, 4]
    assert experiment_runs.pick_proposals([], torch.zeros(0, dtype=torch.long)) == []


def test_mean_and_std_over_seeds_and_the_readable_table():
    per_seed = {"0": {"maft": {"miou_seen": 10.0, "miou_unseen": 4.0, "hiou": None, "miou": 8.0, "mask_awareness": 0.5}},
                "1": {"maft": {"miou_seen": 14.0, "miou_unseen": 6.0, "hiou": None, "miou": 8.0, "mask_awareness": 0.7}}}
    result = variants.mean_and_std(per_seed)
    assert result["mean"]["maft"]["miou_seen"] == pytest.approx(12.0)
    assert result["std"]["maft"]["miou_seen"] == pytest.approx(2 ** 0.5 * 2)  # sample std of 10, 14
    assert "hiou" not in result["mean"]["maft"]
    rows = variants.mean_std_rows(result)
    assert rows[0]["miou"] == 8.0 and rows[0]["miou_std"] == 0.0
    table = variants.mean_std_table(rows, digits=1)
    assert table[0]["mask_awareness"] == "0.6 ± 0.1" and "hiou" not in table[0]


def test_find_checkpoint_names_the_folder_when_there_is_none(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        experiment_runs.find_checkpoint(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"x")
    assert experiment_runs.find_checkpoint(tmp_path) == str(tmp_path / "run" / "checkpoint.pt")


@pytest.fixture(scope="module")
def world_parts():
    world = config.load("world", ["model.pretrained=null", "proposals.settings.max_proposals=24",
                                  "proposals.settings.kinds=[part,background,merged]"])
    return experiment.build_experiment(world, proposals="train")  # GT-derived: the kinds are known


def test_score_iou_points_match_a_direct_computation(world_parts):
    points = variants.score_iou_points(world_parts, {"frozen": world_parts.frozen}, max_images=1)
    view = experiment_runs.classify_sample(world_parts, world_parts.frozen, 0)
    assert len(points) == len(view.kinds)
    from maft.proposals.quality import region_ious

    for n, point in enumerate(points):
        k = int(view.source_class[n])
        assert point["kind"] == view.kinds[n] and point["class"] == k
        assert point["score"] == pytest.approx(float(view.probs[n, k]))
        assert point["iou"] == pytest.approx(float(region_ious(view.masks[n:n + 1], view.label, torch.tensor([k]))[0, 0]))
    whole = [p for p in points if p["kind"] == "whole"]
    assert whole and all(p["iou"] == pytest.approx(1.0) for p in whole)


def test_the_crop_baseline_is_the_classifier_eval_classifier_frozen_evaluates(world_parts):
    # the world config crops to the world CLIP's pretraining size (eval.input_size 64), not to the
    # 128 px the tower runs IP-CLIP at: notebooks and the story once cropped differently
    crop = world_parts.crop()
    assert world_parts.config["eval"]["input_size"] == 64 and crop.input_size == 64
    assert crop.merge == "mask_and_crop" and world_parts.crop(merge="mask").merge == "mask"
    configured = experiment.build_classifier(config.apply_overrides(world_parts.config, ["eval.classifier=frozen"]),
                                             world_parts.model)
    torch.testing.assert_close(experiment_runs.classify_sample(world_parts, crop, 0).probs,
                               experiment_runs.classify_sample(world_parts, configured, 0).probs, rtol=0, atol=0)
    at_tower_size = experiment_runs.classify_sample(world_parts, crop.__class__(world_parts.model.visual), 0).probs
    assert not torch.allclose(at_tower_size, experiment_runs.classify_sample(world_parts, crop, 0).probs, atol=1e-3)


def test_seen_only_scores_are_a_softmax_over_the_seen_classes(world_parts):
    seen = world_parts.dataset.seen
    view = experiment_runs.classify_sample(world_parts, world_parts.frozen, 0, class_ids=seen)
    assert view.probs.shape[1] == len(seen)
    torch.testing.assert_close(view.probs.sum(1), torch.ones(len(view.kinds)))


def test_explorer_draws_a_proposal_and_a_box(world_parts):
    explorer = ProposalExplorer(world_parts, {"frozen": world_parts.frozen}, k=3)
    fig = explorer.figure(0, proposal=0)
    assert "image 0, proposal 0" in fig.axes[0].get_title()
    fig = explorer.figure(0, box=((0, 15), (0, 31)))
    assert "box" in fig.axes[0].get_title()
    assert explorer.box_mask(0, (0, 15), (0, 31)).sum() == 16 * 32
    widget = explorer.widget()
    assert len(widget.children) == 3


def test_explorer_titles_name_the_kind_and_true_class_and_boxes_are_relative(world_parts):
    explorer = ProposalExplorer(world_parts, {"frozen": world_parts.frozen}, k=3)
    sample, proposals = explorer.proposals(0)
    classes, unseen = world_parts.dataset.classes, world_parts.dataset.unseen
    for n in range(len(proposals)):
        title, true = explorer.describe(0, n)
        source = int(proposals.source_class[n])
        assert true == source and f"({proposals.kinds[n]})" in title
        assert title.endswith(classes[source] + (" (unseen)" if source in unseen else ""))
    height, width = sample["image"].shape[-2:]
    assert explorer.box_from_fractions(0, (0.25, 0.75), (0.0, 1.0)) == (
        (round(0.25 * height), round(0.75 * height) - 1), (0, width - 1))
    assert explorer.box_from_fractions(0, (0.5, 0.5), (1.0, 1.0)) == ((height // 2,) * 2, (width - 1,) * 2)
    title, true = explorer.describe(0, box=((0, height - 1), (0, width - 1)))
    assert f"of {height}" in title and f"of {width}" in title
    assert true == int(torch.bincount(sample["label"][sample["label"] < len(classes)].flatten()).argmax())
    assert classes[true] in explorer.figure(0, box=((0, height - 1), (0, width - 1))).axes[0].get_title()


def test_explorer_box_mode_disables_the_proposal_slider(world_parts):
    explorer = ProposalExplorer(world_parts, {"frozen": world_parts.frozen}, k=3)
    controls, box_controls, _ = explorer.widget().children
    image, proposal = controls.children
    use_box, rows, cols = box_controls.children
    assert not proposal.disabled and rows.disabled and cols.disabled
    use_box.value = True
    assert proposal.disabled and not rows.disabled and not cols.disabled
    assert rows.min == 0 and rows.max == 1  # shares of the image, whatever its size
    use_box.value = False
    assert not proposal.disabled and rows.disabled
    image.value = 1
    assert proposal.max == len(explorer.proposals(1)[1]) - 1


def test_run_variants_trains_and_evaluates_each_variant_per_seed(tmp_path):
    base = config.load("voc20_tiny_cpu", ["data.max_images=2", "train.iterations=1", "train.batch_size=2",
                                          "train.checkpoint_every=0"])
    result = variants.run_variants(base, {"maft": [], "no_distill": ["train.distill_weight=0"]}, [0, 1], tmp_path,
                                progress=False)
    assert set(result["per_seed"]) == {"0", "1"}
    for seed in ("0", "1"):
        entries = result["per_seed"][seed]
        assert list(entries) == ["frozen", "maft", "no_distill"]
        written = json.loads((tmp_path / f"seed{seed}" / "maft.json").read_text())
        assert entries["maft"]["hiou"] == written["hiou"] and written["checkpoint"].endswith("checkpoint.pt")
        assert (tmp_path / f"seed{seed}" / "no_distill" / "checkpoint.pt").is_file()
    values = [result["per_seed"][s]["maft"]["miou"] for s in ("0", "1")]
    assert result["mean"]["maft"]["miou"] == pytest.approx(sum(values) / 2)
