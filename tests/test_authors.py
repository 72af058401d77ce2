"""The authors' released detectron2 checkpoints (MAFT_Vitb.pt layout), built here from random tiny towers.

The synthetic file has the authors' layout: ``{"model": {...}, "iteration": ...}`` with the fine-tuned
tower under ``IPCLIP.``, the teacher under ``T.``, the original CLIP under ``clip_adapter.clip_model.``,
FreeSeg's void embedding, and generator tensors under ``backbone.`` / ``sem_seg_head.``. Its tower keeps
the 32-px (4x4) positional embedding, as theirs keeps the 224-px one.
"""
from __future__ import annotations

import copy
import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from maft import authors_checkpoints
from maft.checkpoints import load_finetuned
from maft.clip import load_clip, resize_pos_embed
from maft.ipclip import IPCLIP

NAME = "maft-test-vit"


def _tiny_clip(seed: int, quick_gelu: bool = True):
    import maft.clip  # noqa: F401 - registers the tiny model configs

    torch.manual_seed(seed)
    return open_clip.create_model(NAME, force_quick_gelu=quick_gelu).eval()


def _finetune_like_maft(model, seed: int):
    """A copy whose attention and norms moved (what MAFT trains); MLPs, conv1, embeddings stay."""
    tuned = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in tuned.visual.named_parameters():
            if ".attn." in name or ".ln_" in name or name.startswith("ln_post"):
                parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return tuned


def _authors_file(path, original, tuned, dtype=torch.float32, drop=()):
    state = {}
    state.update({f"IPCLIP.{k}": v.to(dtype) for k, v in tuned.visual.state_dict().items()})
    state.update({f"T.{k}": v.to(dtype) for k, v in original.visual.state_dict().items()})
    state.update({f"clip_adapter.clip_model.{k}": v.to(dtype) for k, v in original.state_dict().items()})
    state["clip_adapter.non_object_embedding"] = torch.randn(1, 32)
    state["backbone.stem.conv1.weight"] = torch.randn(8, 3, 3, 3)
    state["sem_seg_head.predictor.query_embed.weight"] = torch.randn(100, 16)
    state["criterion.empty_weight"] = torch.ones(157)
    state = {k: v for k, v in state.items() if not k.startswith(drop)}
    torch.save({"model": state, "iteration": 999}, path)
    return path


@pytest.fixture(scope="module")
def towers():
    original = _tiny_clip(seed=11)
    return original, _finetune_like_maft(original, seed=12)


@pytest.fixture(scope="module")
def released(towers, tmp_path_factory):
    return _authors_file(tmp_path_factory.mktemp("authors") / "MAFT_tiny.pt", *towers)


def _masks(grid: int, n: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(n, grid * 4, grid * 4, generator=generator) > 0.4).float()


def test_load_clip_takes_text_and_the_finetuned_tower(released, towers, caplog):
    original, tuned = towers
    with caplog.at_level(logging.WARNING, logger="maft.authors_checkpoints"):
        model, _, _ = load_clip(NAME, pretrained=released)
    assert "ignoring its proposal generator" in caplog.text and "backbone. / sem_seg_head." in caplog.text
    loaded = model.state_dict()
    for key, value in tuned.visual.state_dict().items():
        assert torch.equal(loaded[f"visual.{key}"], value), key
    text_keys = [k for k in original.state_dict() if not k.startswith("visual.")]
    assert len(text_keys) > 10
    for key in text_keys:
        assert torch.equal(loaded[key], original.state_dict()[key]), key
    # the tuned tower, not the teacher, was loaded
    assert (loaded["visual.transformer.resblocks.0.attn.in_proj_weight"]
            - original.state_dict()["visual.transformer.resblocks.0.attn.in_proj_weight"]).abs().max() > 0.01
    source = model.maft_source
    assert "vision tower from IPCLIP." in source["loaded"] and "text from clip_adapter.clip_model." in source["loaded"]
    assert source["ignored"]["backbone."] == 1 and source["ignored"]["T."] == len(tuned.visual.state_dict())

    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    masks = [_masks(4, 5, 0), _masks(4, 3, 1)]
    with torch.no_grad():
        got = IPCLIP(model.visual)(images, masks)
        want = IPCLIP(tuned.visual)(images, masks)
        tokens = torch.randint(0, 49408, (3, 16), generator=torch.Generator().manual_seed(4))
        assert torch.equal(model.encode_text(tokens), original.encode_text(tokens))
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)


def test_positional_embedding_is_resized_the_authors_way(released, towers):
    _, tuned = towers
    model, _, _ = load_clip(NAME, pretrained=released, image_size=48)  # 4x4 stored -> 6x6
    stored = tuned.visual.positional_embedding.detach()
    grid = stored[1:].T.reshape(1, 64, 4, 4)
    theirs = torch.cat([stored[:1], F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=True)
                        .reshape(64, 36).T])
    assert torch.allclose(model.visual.positional_embedding, theirs, atol=1e-6)
    # open_clip's resize (align_corners=False) gives other numbers: the choice is visible in the test
    assert (resize_pos_embed(stored, 6) - theirs).abs().max() > 1e-2
    assert model.visual.grid_size == (6, 6) and "6x6 (bicubic, align_corners=True" in model.maft_source["pos_embed"]

    direct = copy.deepcopy(tuned.visual)
    direct.positional_embedding = torch.nn.Parameter(theirs)
    direct.grid_size, direct.image_size = (6, 6), (48, 48)
    images = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got, want = IPCLIP(model.visual)(images, [_masks(6)])[0], IPCLIP(direct)(images, [_masks(6)])[0]
    assert torch.allclose(got, want, atol=1e-6)


def test_fp16_storage_is_cast(towers, tmp_path):
    original, tuned = towers
    path = _authors_file(tmp_path / "MAFT_fp16.pt", original, tuned, dtype=torch.float16)
    model, _, _ = load_clip(NAME, pretrained=path)
    weight = tuned.visual.transformer.resblocks[2].attn.in_proj_weight
    assert model.visual.transformer.resblocks[2].attn.in_proj_weight.dtype == torch.float32
    assert torch.equal(model.visual.transformer.resblocks[2].attn.in_proj_weight, weight.half().float())


def test_missing_finetuned_tower_is_a_clear_error(towers, tmp_path):
    path = _authors_file(tmp_path / "freeseg_model.pt", *towers, drop=("IPCLIP.",))
    with pytest.raises(ValueError, match=r"freeseg_model\.pt: no fine-tuned vision tower \(no 'IPCLIP\.' keys\)"):
        load_clip(NAME, pretrained=path)
    with pytest.raises(ValueError, match="no 'IPCLIP.' keys"):
        load_finetuned(IPCLIP(_tiny_clip(11).visual), path)


def test_another_architecture_is_named(released):
    with pytest.raises(ValueError, match=r"ViT width 64, 6 blocks, patch 8.*does not fit"):
        load_clip("maft-test-rn", pretrained=released)


def test_released_architectures_are_recognised():
    """The hint in a mismatch error names ViT-L-14 for MAFT_Vitl.pt's tower shapes (width 1024, 24 blocks,
    patch 14) and ViT-B-16 for MAFT_Vitb.pt's (768, 12, 16)."""
    for width, blocks, patch, name in ((1024, 24, 14, "ViT-L-14"), (768, 12, 16, "ViT-B-16")):
        fake = {"conv1.weight": torch.empty(width, 3, patch, patch), "proj": torch.empty(width, 8)}
        fake.update({f"transformer.resblocks.{i}.attn.in_proj_weight": torch.empty(0) for i in range(blocks)})
        assert f"looks like {name}:" in authors_checkpoints._name_hint(fake)
        assert authors_checkpoints.describe_tower(fake) == f"ViT width {width}, {blocks} blocks, patch {patch}"


def test_checkpoint_option_loads_the_tower_onto_the_base_clip(released, towers):
    original, tuned = towers
    base = copy.deepcopy(original)  # what pretrained='openai' would give: the CLIP they started from
    from maft.clip import set_image_size

    set_image_size(base.visual, 48)
    classifier = load_finetuned(IPCLIP(base.visual), released)
    reference, _, _ = load_clip(NAME, pretrained=released, image_size=48)
    for key, value in reference.visual.state_dict().items():
        assert torch.allclose(classifier.visual.state_dict()[key], value, atol=1e-6), key

    with pytest.raises(ValueError, match="frozen vision weights differ from the CLIP the checkpoint was fine-tuned"):
        load_finetuned(IPCLIP(_tiny_clip(seed=99).visual), released)
    with pytest.raises(ValueError, match="QuickGELU"):
        load_finetuned(IPCLIP(_tiny_clip(seed=11, quick_gelu=False).visual), released)


def test_other_files_are_not_taken_for_the_authors(tmp_path, towers):
    original, _ = towers
    torch.save(original.state_dict(), tmp_path / "open_clip.pt")
    torch.save({"model": {"name": NAME, "pretrained": None}, "format": "x"}, tmp_path / "maft.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    for name in ("open_clip.pt", "maft.pt", "text.pt"):
        assert authors_checkpoints.read_checkpoint(tmp_path / name) is None, name
    model, _, _ = load_clip(NAME, pretrained=tmp_path / "open_clip.pt")  # open_clip's own loader, unchanged
    assert torch.equal(model.visual.conv1.weight, original.visual.conv1.weight)
    assert "format" not in model.maft_source


def test_module_prefix_is_dropped(towers, tmp_path):
    path = _authors_file(tmp_path / "ddp.pt", *towers)
    data = torch.load(path, weights_only=True)
    torch.save({"model": {f"module.{k}": v for k, v in data["model"].items()}}, path)
    assert set(authors_checkpoints.read_checkpoint(path).counts()) >= {"IPCLIP.", "T.", "clip_adapter.clip_model."}


def test_eval_with_the_authors_checkpoint_equals_the_tuned_tower(released, towers, tmp_path):
    """`maft eval --checkpoint MAFT_x.pt`: CLIP comes from the file, and the metrics equal those of the
    tuned weights evaluated directly through the same evaluate()."""
    from maft.config import load_config
    from maft.evaluate import evaluate, evaluate_config
    from maft.experiment import build_dataset_split, build_generator, build_text_classifier

    _, tuned = towers
    config = load_config("voc20_tiny_cpu", ["data.max_images=3", "eval.out=null"])
    result = evaluate_config(config, checkpoint=str(released), out=tmp_path / "eval.json", progress=False)
    assert result["config"]["model"]["pretrained"] == str(released)

    dataset = build_dataset_split(config, "eval_split", mode="eval")
    text = build_text_classifier(config, tuned, open_clip.get_tokenizer(NAME), dataset.classes)
    torch.manual_seed(0)
    direct = evaluate(IPCLIP(tuned.visual).eval(), build_generator(config), dataset, text, 32, progress=False)
    assert result["n_images"] == 3
    for key in ("miou", "miou_seen", "miou_unseen", "hiou"):
        assert result[key] == pytest.approx(direct[key], abs=1e-9), key


def test_predict_with_the_authors_checkpoint_equals_the_tuned_tower(released, towers):
    """`maft predict --checkpoint MAFT_x.pt`: the same segmentation as the tuned weights passed directly."""
    import numpy as np

    from maft.config import load_config
    from maft.predict import predict

    original, tuned = towers
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    label = np.zeros((40, 56), dtype=np.int64)
    label[8:30, 10:40] = 1
    config = load_config("voc20_tiny_cpu")
    got = predict(image, ["floor", "box"], config=config, checkpoint=str(released), proposals="gt", label=label)
    want = predict(image, ["floor", "box"], config=config, model=(tuned, None, open_clip.get_tokenizer(NAME)),
                   classifier=IPCLIP(tuned.visual).eval(), proposals="gt", label=label)
    assert got.probs.shape[0] >= 2 and torch.equal(got.label_map, want.label_map)
    assert torch.allclose(got.probs, want.probs, atol=1e-6)
    teacher = predict(image, ["floor", "box"], config=config, model=(original, None, open_clip.get_tokenizer(NAME)),
                      classifier=IPCLIP(original.visual).eval(), proposals="gt", label=label)
    assert (teacher.probs - got.probs).abs().max() > 1e-3  # the tuned tower, not the teacher, was used
