"""Proposal generators: GT-derived corruptions, SAM, Mask2Former, files on disk, hard IoU."""
from __future__ import annotations

import json
import sys
from functools import partial

import numpy as np
import pytest
import torch
from PIL import Image

from maft.proposals import (
    GT_KINDS,
    FileProposals,
    GTProposals,
    Mask2FormerProposals,
    Proposals,
    SAMProposals,
    build_proposal_generator,
    build_sam,
    export_proposals,
    load_mask2former,
    load_proposals,
    load_sam,
    proposal_iou,
    save_proposals,
)
from maft.proposals.gt import _half_plane_part
from maft.utils.paths import dataset_dir

torch.set_num_threads(2)


def voc_sample(image_id: str, split: str = "val") -> dict:
    """A raw VOC sample (0 = background, 1..20 classes, 255 = void) read straight from the shared data."""
    root = dataset_dir("voc2012")
    image = np.array(Image.open(root / "images" / split / f"{image_id}.jpg").convert("RGB"))
    label = np.array(Image.open(root / "masks" / split / f"{image_id}.png")).astype(np.int64)
    return {"image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label), "id": image_id}


def blank(height: int, width: int) -> torch.Tensor:
    return torch.zeros(3, height, width, dtype=torch.uint8)


def voc_ids(count: int, split: str = "val") -> list[str]:
    return (dataset_dir("voc2012") / f"{split}.txt").read_text().split()[:count]


# --------------------------------------------------------------------------------------------------
# Proposals and hard IoU
# --------------------------------------------------------------------------------------------------
def test_proposal_iou_hand_computed():
    label = torch.tensor([[1, 1, 0, 0],
                          [1, 1, 0, 0],
                          [255, 255, 2, 2],
                          [0, 0, 2, 2]])
    masks = torch.zeros(5, 4, 4)
    masks[0, :2, :2] = 1                 # exactly class 1
    masks[1, :3, :2] = 1                 # class 1 plus two void pixels
    masks[2, :2, :3] = 0.7               # soft: class 1 plus two class-0 pixels (0.7 > 0.5 is on)
    masks[3, :2, :2] = 0.5               # 0.5 is on (>= 0.5, maft.masks.mask_on): exactly class 1
    masks[4, :2, :2] = 0.49              # below the threshold: an empty mask
    iou = proposal_iou(masks, label, 1)
    assert torch.allclose(iou, torch.tensor([1.0, 4 / 6, 4 / 6, 1.0, 0.0]))
    # evaluation-style: void pixels are don't-care
    iou = proposal_iou(masks, label, 1, exclude_ignored=True)
    assert torch.allclose(iou, torch.tensor([1.0, 1.0, 4 / 6, 1.0, 0.0]))
    # a class absent from the label with an empty mask: empty union gives 0, not NaN
    assert proposal_iou(torch.zeros(1, 4, 4), label, 7).tolist() == [0.0]


def test_proposal_iou_rejects_bad_input():
    with pytest.raises(ValueError, match="H,W of the label"):
        proposal_iou(torch.zeros(2, 3, 3), torch.zeros(4, 4, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="ignore index"):
        proposal_iou(torch.zeros(2, 4, 4), torch.zeros(4, 4, dtype=torch.long), 255)


def test_proposals_checks_field_shapes():
    with pytest.raises(ValueError, match="scores"):
        Proposals(masks=torch.zeros(3, 4, 4), scores=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="classes"):
        Proposals(masks=torch.zeros(3, 4, 4), scores=torch.zeros(3, 5), classes=["a"])
    with pytest.raises(ValueError, match="kinds"):
        Proposals(masks=torch.zeros(3, 4, 4), kinds=["whole"])
    picked = Proposals(masks=torch.arange(3.0)[:, None, None].expand(3, 2, 2) / 2, kinds=["a", "b", "c"],
                       source_class=torch.tensor([5, 6, 7])).select([2, 0])
    assert picked.kinds == ["c", "a"] and picked.source_class.tolist() == [7, 5]
    assert picked.masks[:, 0, 0].tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------------------------------
# Ground-truth-derived proposals
# --------------------------------------------------------------------------------------------------
def test_half_plane_part_keeps_the_requested_fraction():
    mask = np.zeros((20, 20), dtype=bool)
    mask[5:15, 5:15] = True
    coords = np.argwhere(mask)
    part = _half_plane_part(mask, coords, 0.25, np.random.default_rng(0))
    assert part.sum() == 25 and not (part & ~mask).any()  # IoU with the square is exactly 0.25


def test_gt_whole_regions_are_the_class_maps():
    sample = voc_sample("2007_000129")  # bicycles and a person
    label = sample["label"]
    proposals = GTProposals(seed=0)(sample)
    whole = [i for i, kind in enumerate(proposals.kinds) if kind == "whole"]
    present = sorted(set(label.unique().tolist()) - {255})
    assert proposals.source_class[whole].tolist() == present
    for i in whole:
        assert torch.equal(proposals.masks[i].bool(), label == proposals.source_class[i])
    assert proposals.masks.shape[-2:] == label.shape
    assert ((proposals.masks == 0) | (proposals.masks == 1)).all()
    assert set(proposals.kinds) == {"whole", *GT_KINDS}
    assert len(proposals) <= 100


def test_gt_corruptions_relate_to_their_source_region_as_named():
    sample = voc_sample("2007_000129")
    label = sample["label"]
    proposals = GTProposals(seed=3, per_region=3)(sample)
    for mask, kind, source in zip(proposals.masks.bool(), proposals.kinds, proposals.source_class):
        region = label == source
        if kind in ("part", "eroded"):
            assert not (mask & ~region).any() and mask.sum() < region.sum()
        if kind in ("background", "dilated", "merged"):
            assert (mask & region).sum() == region.sum() and mask.sum() > region.sum()
        if kind == "merged":  # the addition is another labelled class, never void
            added = label[mask & ~region]
            assert (added != 255).all() and (added != source).all()
        if kind in ("whole", "part", "eroded"):  # ignore pixels never count as object
            assert not mask[label == 255].any()


def test_gt_proposals_cover_the_whole_iou_range_on_voc():
    generator = GTProposals(seed=0)
    ious = []
    for image_id in voc_ids(10):
        sample = voc_sample(image_id)
        proposals = generator(sample)
        for mask, kind, source in zip(proposals.masks, proposals.kinds, proposals.source_class):
            if kind != "whole":
                ious.append(proposal_iou(mask[None], sample["label"], int(source)).item())
    histogram, _ = np.histogram(ious, bins=10, range=(0, 1))
    # every decile holds at least 3 % of the corrupted proposals
    assert (histogram >= 0.03 * len(ious)).all(), histogram


def test_gt_proposals_depend_only_on_seed_and_id():
    first, second = voc_sample("2007_000033"), voc_sample("2007_000042")
    generator = GTProposals(seed=5)
    a_then_b = [generator(first), generator(second)]
    b_then_a = [GTProposals(seed=5)(second), GTProposals(seed=5)(first)][::-1]
    for p, q in zip(a_then_b, b_then_a):
        assert torch.equal(p.masks, q.masks) and p.kinds == q.kinds
    other_seed = GTProposals(seed=6)(first)
    other_id = GTProposals(seed=5)({**first, "id": "renamed"})
    for other in (other_seed, other_id):
        assert other.masks.shape != a_then_b[0].masks.shape or not torch.equal(other.masks, a_then_b[0].masks)


def test_gt_image_without_classes_gives_no_proposals():
    sample = {"image": blank(20, 30),
              "label": torch.full((20, 30), 255, dtype=torch.long), "id": "void"}
    proposals = GTProposals()(sample)
    assert proposals.masks.shape == (0, 20, 30) and proposals.kinds == []
    assert proposals.source_class.shape == (0,)


def test_gt_limits_and_bad_input():
    sample = voc_sample("2007_000129")
    capped = GTProposals(seed=0, max_proposals=5)(sample)
    classes = len(set(sample["label"].unique().tolist()) - {255})
    assert len(capped) == 5 and capped.kinds.count("whole") == classes  # whole maps always kept
    only_wholes = GTProposals(kinds=(), per_region=0)(sample)
    assert only_wholes.kinds == ["whole"] * classes
    no_image = GTProposals(kinds=("part",))({"label": sample["label"], "id": "x"})
    assert set(no_image.kinds) == {"whole", "part"}
    with pytest.raises(ValueError, match="label"):
        GTProposals()({"image": sample["image"], "id": "x"})
    with pytest.raises(ValueError, match="unknown kinds"):
        GTProposals(kinds=("part", "blur"))
    with pytest.raises(ValueError, match="needs sample\\['image'\\]"):
        GTProposals(kinds=("superpixel",))({"label": sample["label"], "id": "x"})
    with pytest.raises(ValueError, match="differ in size"):
        GTProposals()({"image": sample["image"][:, :10], "label": sample["label"], "id": "x"})


# --------------------------------------------------------------------------------------------------
# Segment Anything (a tiny random Sam; img_size 64 works since SamPredictor resizes to it)
# --------------------------------------------------------------------------------------------------
def tiny_sam(seed: int = 0, img_size: int = 64, dim: int = 32):
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = img_size // 16
    encoder = ImageEncoderViT(img_size=img_size, patch_size=16, embed_dim=dim, depth=2, num_heads=2,
                              mlp_ratio=2, out_chans=dim, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
                              use_rel_pos=True, window_size=2, global_attn_indexes=(1,))
    prompt = PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                           input_image_size=(img_size, img_size), mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=dim, num_multimask_outputs=3, iou_head_depth=2,
                          iou_head_hidden_dim=16,
                          transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2))
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder).eval()


# random weights: every threshold off so that masks come out at all
SAM_TEST_SETTINGS = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                         box_nms_thresh=1.0)


def test_sam_proposals_end_to_end_on_a_voc_image():
    sample = voc_sample("2007_000033")
    generator = SAMProposals(tiny_sam(), **SAM_TEST_SETTINGS)
    proposals = generator(sample)
    height, width = sample["label"].shape
    assert proposals.masks.shape[1:] == (height, width) and len(proposals) > 0
    assert ((proposals.masks == 0) | (proposals.masks == 1)).all()
    assert proposals.scores is None and proposals.classes is None
    # same masks as segment_anything itself, ordered by its predicted IoU
    records = generator.mask_generator.generate(sample["image"].permute(1, 2, 0).numpy())
    records.sort(key=lambda record: -record["predicted_iou"])
    expected = torch.from_numpy(np.stack([record["segmentation"] for record in records])).float()
    assert torch.equal(proposals.masks, expected)
    assert torch.equal(generator(sample).masks, proposals.masks)  # deterministic
    capped = SAMProposals(tiny_sam(), max_proposals=3, **SAM_TEST_SETTINGS)(sample)
    assert torch.equal(capped.masks, proposals.masks[:3])


def test_sam_settings_are_checked():
    with pytest.raises(ValueError, match="sort_by"):
        SAMProposals(tiny_sam(), sort_by="colour")
    with pytest.raises(ValueError, match="image"):
        SAMProposals(tiny_sam(), **SAM_TEST_SETTINGS)({"image": torch.zeros(5, 5), "id": "x"})


def test_sam_small_region_cleanup_without_opencv_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # as if OpenCV were not installed
    with pytest.raises(ImportError, match="opencv"):
        SAMProposals(tiny_sam(), min_mask_region_area=100)


def test_load_sam_reports_missing_checkpoint(tmp_path):
    missing = tmp_path / "weights.pth"
    with pytest.raises(FileNotFoundError, match="sam_vit_b_01ec64.pth") as error:
        load_sam("vit_b", checkpoint=missing)
    assert str(missing) in str(error.value)
    with pytest.raises(ValueError, match="model_type"):
        load_sam("vit_x", checkpoint=missing)


def test_build_sam_gives_the_official_layout_and_load_sam_loads_weights_and_rejects_foreign_ones(tmp_path):
    import segment_anything

    ours = {k: tuple(v.shape) for k, v in build_sam("vit_b").state_dict().items()}
    official = {k: tuple(v.shape) for k, v in segment_anything.sam_model_registry["vit_b"]().state_dict().items()}
    assert ours == official and len(ours) == 314  # the same parameters as segment_anything's builder
    torch.manual_seed(0)
    trained = build_sam("maft_test")
    torch.save(trained.state_dict(), tmp_path / "sam.pth")
    loaded = load_sam("maft_test", checkpoint=tmp_path / "sam.pth")
    assert loaded.image_encoder.img_size == 128
    for (name, value), (_, expected) in zip(loaded.state_dict().items(), trained.state_dict().items()):
        assert torch.equal(value, expected), name
    torch.save(tiny_sam(dim=16).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth"):
        load_sam("maft_test", checkpoint=tmp_path / "other.pth")
    with pytest.raises(FileNotFoundError, match="maft download sam vit_b"):
        load_sam("vit_b", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown model_type 'vit_x'"):
        load_sam("vit_x", checkpoint=tmp_path / "sam.pth")


# --------------------------------------------------------------------------------------------------
# Mask2Former (a tiny random transformers model, built offline)
# --------------------------------------------------------------------------------------------------
def tiny_mask2former(num_labels: int = 6, num_queries: int = 7):
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    backbone = SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1],
                          num_heads=[1, 1, 2, 2], window_size=4,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=backbone, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2,
                               num_attention_heads=2, dim_feedforward=64, num_queries=num_queries,
                               num_labels=num_labels)
    config.id2label = {i: f"class{i}" for i in range(num_labels)}
    config.label2id = {name: i for i, name in config.id2label.items()}
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    return model, processor


def test_mask2former_proposals_shapes_and_scores():
    model, processor = tiny_mask2former()
    sample = voc_sample("2007_000033")
    height, width = sample["label"].shape
    proposals = Mask2FormerProposals(model, processor)(sample)
    assert proposals.masks.shape == (7, height, width)
    assert proposals.masks.min() >= 0 and proposals.masks.max() <= 1
    assert proposals.scores.shape == (7, 6) and proposals.classes == [f"class{i}" for i in range(6)]
    # rows sum to 1 - p(no object): softmax over the 7 columns, last one dropped
    inputs = processor(images=sample["image"].permute(1, 2, 0).numpy(), return_tensors="pt",
                       input_data_format="channels_last")
    with torch.no_grad():
        logits = model(**inputs).class_queries_logits[0]
    no_object = logits.softmax(-1)[:, -1]
    assert torch.allclose(proposals.scores.sum(1), 1 - no_object, atol=1e-5)
    renormalized = Mask2FormerProposals(model, processor, renormalize=True)(sample)
    assert torch.allclose(renormalized.scores.sum(1), torch.ones(7), atol=1e-5)
    assert torch.equal(renormalized.masks, proposals.masks)
    best = Mask2FormerProposals(model, processor, max_proposals=3)(sample)
    order = proposals.scores.max(1).values.argsort(descending=True)[:3]
    assert torch.equal(best.masks, proposals.masks[order])
    assert torch.equal(best.scores, proposals.scores[order])
    with pytest.raises(ValueError, match="class_names"):
        Mask2FormerProposals(model, processor, class_names=["a", "b"])


def test_load_mask2former_from_a_folder(tmp_path):
    model, processor = tiny_mask2former()
    model.save_pretrained(tmp_path / "m2f")
    processor.save_pretrained(tmp_path / "m2f")
    sample = voc_sample("2007_000042")
    expected = Mask2FormerProposals(model, processor)(sample)
    generator = build_proposal_generator("mask2former", name_or_path=str(tmp_path / "m2f"))
    loaded = generator(sample)
    assert torch.allclose(loaded.masks, expected.masks, atol=1e-6)
    assert torch.allclose(loaded.scores, expected.scores, atol=1e-6) and loaded.classes == expected.classes
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mask2former(tmp_path / "nowhere")


# --------------------------------------------------------------------------------------------------
# Files on disk
# --------------------------------------------------------------------------------------------------
def soft_proposals(n: int = 4, height: int = 9, width: int = 11) -> Proposals:
    generator = torch.Generator().manual_seed(0)
    return Proposals(masks=torch.rand(n, height, width, generator=generator),
                     scores=torch.rand(n, 3, generator=generator).softmax(1), classes=["cat", "dog", "sky"])


def test_npz_round_trip(tmp_path):
    soft = soft_proposals()
    save_proposals(tmp_path / "img1.npz", soft)
    binary = GTProposals(seed=0)(voc_sample("2007_000033"))
    save_proposals(tmp_path / "2007_000033.npz", binary)
    with np.load(tmp_path / "2007_000033.npz") as stored:
        assert stored["masks"].dtype == np.bool_  # binary masks are stored as bool, soft as float16
    with np.load(tmp_path / "img1.npz") as stored:
        assert stored["masks"].dtype == np.float16

    generator = FileProposals(tmp_path)
    loaded = generator({"id": "img1", "image": blank(9, 11)})
    assert torch.allclose(loaded.masks, soft.masks, atol=1e-3)
    assert torch.equal(loaded.scores, soft.scores) and loaded.classes == soft.classes
    loaded = generator(voc_sample("2007_000033"))
    assert torch.equal(loaded.masks, binary.masks) and loaded.kinds == binary.kinds
    assert torch.equal(loaded.source_class, binary.source_class)


def test_coco_rle_json_round_trip(tmp_path):
    masks = (soft_proposals().masks >= 0.5).float()
    proposals = Proposals(masks=masks, scores=soft_proposals().scores, classes=["cat", "dog", "sky"])
    save_proposals(tmp_path / "a.json", proposals, confidence=torch.tensor([0.1, 0.9, 0.5, 0.7]))
    loaded = load_proposals(tmp_path / "a.json", image_size=(9, 11))
    assert torch.equal(loaded.masks, masks) and loaded.classes == ["cat", "dog", "sky"]
    assert torch.allclose(loaded.scores, proposals.scores)
    best = FileProposals(tmp_path, max_proposals=2)({"id": "a", "image": blank(9, 11)})
    assert torch.equal(best.masks, masks[[1, 3]])  # highest 'score' first

    # a plain list of records, as other tools write it (uncompressed RLE counts accepted too)
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(masks[0].numpy().astype(np.uint8)))
    records = [{"segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
               {"segmentation": {"size": [9, 11], "counts": [99]}}]
    (tmp_path / "b.json").write_text(json.dumps(records))
    loaded = FileProposals(tmp_path)({"id": "b", "image": blank(9, 11)})
    assert torch.equal(loaded.masks[0], masks[0]) and loaded.masks[1].sum() == 0 and loaded.scores is None


def test_file_proposals_errors_name_the_file(tmp_path):
    save_proposals(tmp_path / "small.npz", soft_proposals(height=5, width=5))
    generator = build_proposal_generator(f"file:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="'missing'") as error:
        generator({"id": "missing", "image": blank(5, 5)})
    assert str(tmp_path) in str(error.value)
    with pytest.raises(ValueError, match="small.npz"):
        generator({"id": "small", "image": blank(6, 5)})
    np.savez_compressed(tmp_path / "png_style.npz", masks=np.full((1, 5, 5), 255, dtype=np.uint8))
    with pytest.raises(ValueError, match="png_style.npz.*0/1"):
        generator({"id": "png_style"})
    with pytest.raises(ValueError, match=".npz or .json"):
        save_proposals(tmp_path / "x.pt", soft_proposals())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        FileProposals(tmp_path / "nope")


def test_empty_proposals_round_trip(tmp_path):
    save_proposals(tmp_path / "e.npz", Proposals.empty(6, 7))
    save_proposals(tmp_path / "f.json", Proposals.empty(6, 7))
    generator = FileProposals(tmp_path)
    for image_id in ("e", "f"):
        assert generator({"id": image_id, "image": blank(6, 7)}).masks.shape == (0, 6, 7)


def test_exported_gt_proposals_read_back_identically(tmp_path):
    samples = [voc_sample(image_id) for image_id in voc_ids(2)]
    generator = build_proposal_generator("gt", seed=2, per_region=1)
    export_proposals(generator, samples, tmp_path / "cache")
    reader = build_proposal_generator("file", directory=tmp_path / "cache")
    for sample in samples:
        expected, loaded = generator(sample), reader(sample)
        assert torch.equal(loaded.masks, expected.masks) and loaded.kinds == expected.kinds


def test_build_proposal_generator_kinds(tmp_path):
    assert isinstance(build_proposal_generator("gt", seed=1), GTProposals)
    assert isinstance(build_proposal_generator("sam", model=tiny_sam(), points_per_side=2), SAMProposals)
    with pytest.raises(FileNotFoundError, match="sam_vit_h_4b8939.pth"):
        build_proposal_generator("sam", checkpoint=str(tmp_path / "none.pth"))
    with pytest.raises(ValueError, match="name_or_path"):
        build_proposal_generator("mask2former")
    with pytest.raises(ValueError, match="directory"):
        build_proposal_generator("file")
    with pytest.raises(ValueError, match="unknown proposal generator kind 'maskformer'"):
        build_proposal_generator("maskformer")
