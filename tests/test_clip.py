"""maft.clip: offline loading, positional-embedding resize, preprocessing, text classifiers, eq. 1."""
from __future__ import annotations

import copy
import math
import socket
import time

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from maft.clip import hub_offline, load_clip, preprocess_images, resize_pos_embed, set_image_size
from maft.templates import TEMPLATES
from maft.text import class_probabilities, readable_name, text_classifier


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# ---------------------------------------------------------------------------------------------- templates


def test_template_sets_have_the_published_sizes_and_one_slot_each():
    assert len(TEMPLATES["vild"]) == 14
    assert len(TEMPLATES["imagenet"]) == 80
    assert TEMPLATES["single"] == ("a photo of a {}.",)
    assert TEMPLATES["vild"][0] == "a photo of a {}."
    assert TEMPLATES["vild"][-1] == "There is a large {} in the scene."
    assert TEMPLATES["imagenet"][0] == "a bad photo of a {}."
    for templates in TEMPLATES.values():
        assert len(set(templates)) == len(templates)
        assert all(t.count("{}") == 1 for t in templates)


# ---------------------------------------------------------------------------------------------- loading


def test_tiny_configs_are_registered_and_small(tiny_clip, tiny_rn_clip):
    model, preprocess, tokenizer = tiny_clip
    assert model.visual.grid_size == (4, 4) and model.visual.image_size == (32, 32)
    assert len(model.visual.transformer.resblocks) == 6
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4
    assert tokenizer(["a photo of a cat."]).shape == (1, 16)
    assert not model.training
    rn = tiny_rn_clip[0]
    for m in (model, rn):  # the text tower is mostly the 49408 x 32 token embedding (1.6 M)
        assert sum(p.numel() for p in m.visual.parameters()) < 1_500_000
        assert sum(p.numel() for p in m.parameters()) < 3_500_000  # < 14 MB in float32
    with torch.no_grad():
        assert model.encode_image(torch.zeros(2, 3, 32, 32)).shape == (2, 32)
        assert rn.encode_image(torch.zeros(2, 3, 64, 64)).shape == (2, 32)
    assert "maft-test-vit" in open_clip.list_models() and "maft-test-rn" in open_clip.list_models()


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(ValueError, match="ViT-B-16") as info:
        load_clip("ViT-B-61")
    assert "unknown CLIP model name 'ViT-B-61'" in str(info.value)


def test_openai_style_name_is_accepted(no_network):
    model, _, _ = load_clip("maft-test-vit")
    assert model.maft_source["name"] == "maft-test-vit"
    with pytest.raises(FileNotFoundError):  # "ViT-B/16" resolves to ViT-B-16's tags
        load_clip("ViT-B/16", pretrained="openai", cache_dir="/nonexistent-cache")


def test_missing_checkpoint_path_names_the_path(tmp_path):
    missing = tmp_path / "weights" / "clip.bin"
    with pytest.raises(FileNotFoundError, match="clip.bin"):
        load_clip("maft-test-vit", pretrained=missing)
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_clip("maft-test-vit", pretrained=tmp_path)


def test_uncached_tag_fails_at_once_naming_the_file(tmp_path, no_network):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as info:
        load_clip("ViT-B-16", pretrained="openai", cache_dir=str(tmp_path))
    message = str(info.value)
    assert time.perf_counter() - start < 5  # no model was built, nothing was fetched
    assert "ViT-B-16.pt" in message  # the OpenAI file open_clip would look for
    assert "timm/vit_base_patch16_clip_224.openai" in message  # and its Hugging Face copy
    assert "pretrained='/path/to/that/file' and name='ViT-B-16-quickgelu'" in message


def test_local_checkpoint_is_loaded_by_open_clip(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip[0].state_dict(), path)
    model, _, _ = load_clip("maft-test-vit", pretrained=str(path))
    assert_same_weights(model, tiny_clip[0])
    assert model.maft_source["checkpoint"] == str(path.resolve())


def test_cached_tag_is_found_in_url_and_hf_caches(tmp_path, tiny_clip, monkeypatch, no_network):
    # Register two made-up tags for the tiny model, as open_clip's registry holds real ones.
    tags = {
        "fake_url": open_clip.pretrained._pcfg(
            url="https://example.invalid/clip/maft-test-vit.pt", quick_gelu=True, mean=(0.5,) * 3, std=(0.5,) * 3
        ),
        "fake_hf": open_clip.pretrained._pcfg(hf_hub="maft/tiny-clip/"),
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "maft-test-vit", tags)
    state = tiny_clip[0].state_dict()
    torch.save(state, tmp_path / "maft-test-vit.pt")
    repo = tmp_path / "models--maft--tiny-clip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abcd")
    (repo / "snapshots" / "0123abcd").mkdir(parents=True)
    torch.save(state, repo / "snapshots" / "0123abcd" / "open_clip_pytorch_model.bin")

    model, preprocess, _ = load_clip("maft-test-vit", pretrained="fake_url", cache_dir=str(tmp_path))
    assert_same_weights(model, tiny_clip[0])
    assert model.maft_source["checkpoint"] == str((tmp_path / "maft-test-vit.pt").resolve())
    # The tag's own settings reach the model: QuickGELU activation and its normalisation.
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert tuple(model.visual.preprocess_cfg["mean"]) == (0.5, 0.5, 0.5)

    model, _, _ = load_clip("maft-test-vit", pretrained="fake_hf", cache_dir=str(tmp_path))
    assert_same_weights(model, tiny_clip[0])
    assert "snapshots" in model.maft_source["checkpoint"]


def test_hugging_face_libraries_are_kept_offline_while_loading(monkeypatch):
    import huggingface_hub
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with hub_offline():
        assert huggingface_hub.is_offline_mode()
    assert not huggingface_hub.is_offline_mode()
    with pytest.raises(ValueError, match="leave pretrained=None"):
        load_clip("local-dir:/some/folder", pretrained="openai")


# ---------------------------------------------------------------------------------------------- resize


def test_resize_to_the_current_size_is_identity(tiny_clip):
    visual = copy.deepcopy(tiny_clip[0].visual)
    before = visual.positional_embedding.detach().clone()
    set_image_size(visual, 32)
    assert torch.equal(visual.positional_embedding, before)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(visual(images), tiny_clip[0].visual(images))


def test_resize_matches_open_clip_resize_pos_embed(tiny_clip):
    state = copy.deepcopy(tiny_clip[0].state_dict())
    target = open_clip.create_model("maft-test-vit", force_image_size=64)
    open_clip.model.resize_pos_embed(state, target)  # open_clip's own resize, on a state dict
    expected = state["visual.positional_embedding"]

    visual = set_image_size(copy.deepcopy(tiny_clip[0].visual), 64)
    assert visual.positional_embedding.shape == (8 * 8 + 1, 64)
    assert torch.equal(visual.positional_embedding, expected)
    assert torch.equal(visual.positional_embedding[0], tiny_clip[0].visual.positional_embedding[0])  # class kept
    assert visual.grid_size == (8, 8) and visual.image_size == (64, 64)
    assert visual.positional_embedding.requires_grad == tiny_clip[0].visual.positional_embedding.requires_grad
    with torch.no_grad():
        assert visual(torch.randn(1, 3, 64, 64)).shape == (1, 32)


def test_load_clip_image_size_equals_open_clip_loading_a_checkpoint_at_that_size(tmp_path, tiny_clip):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_clip[0].state_dict(), path)
    ours, preprocess, _ = load_clip("maft-test-vit", pretrained=str(path), image_size=48)
    theirs = open_clip.create_model("maft-test-vit", pretrained=str(path), force_image_size=48)
    assert_same_weights(ours, theirs)
    assert preprocess(Image.new("RGB", (100, 60))).shape == (3, 48, 48)
    with torch.no_grad():
        image = torch.randn(1, 3, 48, 48)
        assert torch.allclose(ours.encode_image(image), theirs.encode_image(image))


def test_resize_keeps_a_constant_grid_constant():
    # Bicubic weights sum to one, so a grid whose positions all hold the same vector keeps it.
    pos = torch.cat([torch.full((1, 5), -3.0), torch.arange(5.0).expand(4 * 4, 5)])
    resized = resize_pos_embed(pos, 7)
    assert resized.shape == (1 + 49, 5)
    assert torch.equal(resized[0], pos[0])
    assert torch.allclose(resized[1:], torch.arange(5.0).expand(49, 5), atol=1e-5)


def test_resnet_tower_resize(tiny_rn_clip):
    visual = copy.deepcopy(tiny_rn_clip[0].visual)
    same = set_image_size(copy.deepcopy(visual), 64)
    assert torch.equal(same.attnpool.positional_embedding, visual.attnpool.positional_embedding)
    set_image_size(visual, 96)
    assert visual.attnpool.positional_embedding.shape[0] == 3 * 3 + 1
    assert visual.image_size == 96
    with torch.no_grad():
        assert visual(torch.randn(1, 3, 96, 96)).shape == (1, 32)


def test_resize_rejects_sizes_off_the_patch_grid(tiny_clip, tiny_rn_clip):
    with pytest.raises(ValueError, match="patch size"):
        set_image_size(copy.deepcopy(tiny_clip[0].visual), 36)
    with pytest.raises(ValueError, match="divisible by 32"):
        set_image_size(copy.deepcopy(tiny_rn_clip[0].visual), 80)
    with pytest.raises(ValueError, match="image_size"):
        set_image_size(copy.deepcopy(tiny_clip[0].visual), 0)


# ---------------------------------------------------------------------------------------------- images


def test_preprocess_normalises_with_clip_statistics():
    image = torch.full((3, 8, 8), 128, dtype=torch.uint8)
    out = preprocess_images([image], 8)
    expected = [(128 / 255 - m) / s for m, s in zip(OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)]
    assert out.shape == (1, 3, 8, 8) and out.dtype == torch.float32
    for channel in range(3):
        assert torch.allclose(out[0, channel], torch.tensor(expected[channel]), atol=1e-6)


def test_preprocess_at_the_same_size_only_normalises():
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = preprocess_images(images, 16, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(out, images.float() / 255, atol=1e-6)


def test_preprocess_matches_open_clip_pil_transform_on_square_images(tiny_clip):
    # A smooth random image, so both bicubic resizes agree up to uint8 rounding.
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (3, 8, 8)).astype(np.float32)
    image = F.interpolate(torch.from_numpy(small)[None], size=(64, 64), mode="bilinear")[0].round().byte()
    ours = preprocess_images([image], 32)
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    theirs = tiny_clip[1](pil)  # open_clip's eval transform at 32: resize shortest side + centre crop
    assert theirs.shape == ours.shape[1:]
    assert (ours[0] - theirs).abs().max() < 1.5 / 255 / min(OPENAI_DATASET_STD)


def test_preprocess_resizes_whole_images_of_any_size():
    images = [torch.randint(0, 256, (3, 20, 50), dtype=torch.uint8), torch.zeros(3, 7, 9, dtype=torch.uint8)]
    out = preprocess_images(images, 24)
    assert out.shape == (2, 3, 24, 24)
    assert torch.allclose(out[1], preprocess_images([images[1]], 24)[0])


@pytest.mark.parametrize(
    "images, message",
    [
        (torch.zeros(1, 3, 8, 8), "uint8"),
        ([torch.zeros(3, 8, 8)], "uint8"),
        (torch.zeros(1, 4, 8, 8, dtype=torch.uint8), "3 \\(RGB\\) channels"),
        (torch.zeros(3, 8, 8, dtype=torch.uint8), "wrap a single image in a list"),
        ([torch.zeros(8, 8, dtype=torch.uint8)], "images\\[0\\]"),
        ([], "empty"),
        (torch.zeros(1, 3, 0, 0, dtype=torch.uint8), r"images has shape \(1, 3, 0, 0\): an image of 0x0 pixels"),
        ([torch.zeros(3, 4, 4, dtype=torch.uint8), torch.zeros(3, 0, 5, dtype=torch.uint8)],
         r"images\[1\] has shape \(3, 0, 5\): an image of 0x5 pixels"),
    ],
)
def test_preprocess_rejects_bad_images(images, message):
    with pytest.raises(ValueError, match=message):
        preprocess_images(images, 8)


# ---------------------------------------------------------------------------------------------- text


def slow_text_classifier(model, tokenizer, names, templates):
    """One prompt at a time: normalise each template's embedding, average, normalise."""
    rows = []
    with torch.no_grad():
        for name in names:
            per_template = []
            for template in templates:
                embedding = model.encode_text(tokenizer([template.format(name)]))[0]
                per_template.append(embedding / embedding.norm())
            mean = torch.stack(per_template).mean(0)
            rows.append(mean / mean.norm())
    return torch.stack(rows)


@pytest.mark.parametrize("templates", ["vild", "single", ["a {} here.", "{}"]])
def test_text_classifier_matches_a_slow_loop(tiny_clip, templates):
    model, _, tokenizer = tiny_clip
    names = ["cat", "wall-concrete", "pottedplant"]
    classifier = text_classifier(model, tokenizer, names, templates=templates, cache=False, batch_size=5)
    template_list = TEMPLATES[templates] if isinstance(templates, str) else templates
    expected = slow_text_classifier(model, tokenizer, names, template_list)
    assert classifier.shape == (3, 32) and classifier.dtype == torch.float32
    assert torch.allclose(classifier.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert torch.allclose(classifier, expected, atol=1e-5)


def test_single_template_classifier_is_the_normalised_prompt_embedding(tiny_clip):
    model, _, tokenizer = tiny_clip
    classifier = text_classifier(model, tokenizer, ["dog"], templates="single", cache=False)
    with torch.no_grad():
        direct = model.encode_text(tokenizer(["a photo of a dog."]))
    assert torch.allclose(classifier, F.normalize(direct, dim=-1), atol=1e-6)


def test_prompt_name_hook(tiny_clip):
    model, _, tokenizer = tiny_clip
    assert readable_name("wall-concrete") == "wall concrete"
    assert readable_name("dining_table") == "dining table"
    mapped = text_classifier(model, tokenizer, ["pottedplant", "wall-concrete"], templates="single", cache=False,
                             prompt_name={"pottedplant": "potted plant"})
    plain = text_classifier(model, tokenizer, ["potted plant", "wall-concrete"], templates="single", cache=False)
    assert torch.allclose(mapped, plain)
    readable = text_classifier(model, tokenizer, ["wall-concrete"], templates="single", cache=False,
                               prompt_name=readable_name)
    assert torch.allclose(readable[0], text_classifier(model, tokenizer, ["wall concrete"], "single", cache=False)[0])
    assert not torch.allclose(readable[0], plain[1])


def test_text_classifier_cache_hits_and_misses(tiny_clip, tmp_path):
    model = copy.deepcopy(tiny_clip[0])
    tokenizer = tiny_clip[2]
    names = ["cat", "dog"]
    first = text_classifier(model, tokenizer, names, templates="single", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    calls = []
    original = model.encode_text

    def counting_encode_text(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    model.encode_text = counting_encode_text
    again = text_classifier(model, tokenizer, names, templates="single", cache_dir=tmp_path)
    assert not calls and torch.equal(again, first)  # served from disk

    text_classifier(model, tokenizer, ["cat", "bird"], templates="single", cache_dir=tmp_path)
    assert calls  # another class list misses
    calls.clear()
    text_classifier(model, tokenizer, names, templates="vild", cache_dir=tmp_path)
    assert calls  # another template set misses
    calls.clear()

    # Fine-tuning only the vision tower (as MAFT does) keeps the text classifier valid: a hit.
    with torch.no_grad():
        model.visual.proj.add_(1.0)
    text_classifier(model, tokenizer, names, templates="single", cache_dir=tmp_path)
    assert not calls
    # Changed text weights miss, so a fine-tuned text tower never reuses stale entries.
    with torch.no_grad():
        model.token_embedding.weight.mul_(1.01)
    changed = text_classifier(model, tokenizer, names, templates="single", cache_dir=tmp_path)
    assert calls and not torch.allclose(changed, first)
    calls.clear()
    # Another model (name / weights identity) misses too.
    model.maft_source = dict(model.maft_source, pretrained="other.pt")
    text_classifier(model, tokenizer, names, templates="single", cache_dir=tmp_path)
    assert calls
    assert len(list(tmp_path.glob("*.pt"))) == 5


def test_damaged_cache_entry_is_recomputed(tiny_clip, tmp_path):
    model, _, tokenizer = tiny_clip
    expected = text_classifier(model, tokenizer, ["cat"], templates="single", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.pt")
    entry.write_bytes(b"not a torch file")
    assert torch.allclose(text_classifier(model, tokenizer, ["cat"], templates="single", cache_dir=tmp_path), expected)
    assert torch.load(entry, weights_only=True)["embeddings"].shape == (1, 32)  # rewritten


def test_text_classifier_default_cache_lives_in_maft_cache(tiny_clip, isolated_maft_cache):
    model, _, tokenizer = tiny_clip
    text_classifier(model, tokenizer, ["zebra"], templates="single")
    assert list((isolated_maft_cache / "text").glob("*.pt"))


@pytest.mark.parametrize(
    "names, templates, message",
    [
        ([], "vild", "class_names is empty"),
        (["cat", "dog", "Cat", "sky", "sky"], "vild", r"duplicate class names: \['Cat', 'cat', 'sky'\]"),
        ("cat", "vild", "single string"),
        (["cat", ""], "vild", "empty or non-string names"),
        (["cat"], "nonsense", "unknown template set"),
        (["cat"], ["a photo of a cat."], "exactly one"),
        (["cat"], [], "templates is empty"),
    ],
)
def test_text_classifier_rejects_bad_input(tiny_clip, names, templates, message):
    model, _, tokenizer = tiny_clip
    with pytest.raises(ValueError, match=message):
        text_classifier(model, tokenizer, names, templates=templates, cache=False)


# ---------------------------------------------------------------------------------------------- eq. 1


def test_class_probabilities_hand_computed():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    probs = class_probabilities(embeddings, text, logit_scale=1.0)
    e = math.e
    expected = torch.tensor([[e / (e + 1), 1 / (e + 1)], [1 / (e + 1), e / (e + 1)], [0.5, 0.5]])
    assert torch.allclose(probs, expected, atol=1e-6)
    # The default scale is CLIP's 100: cosine 1 vs 0 gives e^100 odds.
    sharp = class_probabilities(torch.tensor([[0.6, 0.8]]), torch.tensor([[0.6, 0.8], [0.8, -0.6]]))
    assert torch.allclose(sharp, torch.tensor([[1.0, math.exp(-100)]]), atol=1e-30, rtol=1e-4)


def test_class_probabilities_shapes_and_gradients():
    embeddings = torch.randn(5, 8, requires_grad=True)
    probs = class_probabilities(embeddings, torch.randn(3, 8))
    assert probs.shape == (5, 3) and torch.allclose(probs.sum(-1), torch.ones(5))
    probs[:, 0].sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert class_probabilities(torch.zeros(0, 8), torch.randn(3, 8)).shape == (0, 3)
    with pytest.raises(ValueError, match="embedding width 8 differs from text width 4"):
        class_probabilities(torch.randn(2, 8), torch.randn(3, 4))
    with pytest.raises(ValueError, match="\\[N, D\\]"):
        class_probabilities(torch.randn(8), torch.randn(3, 8))


def test_class_probabilities_stay_float32_under_autocast():
    embeddings, text = torch.randn(4, 16), torch.randn(6, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        probs = class_probabilities(embeddings, text)
    assert probs.dtype == torch.float32
    assert torch.allclose(probs, class_probabilities(embeddings, text))


def test_end_to_end_tiny_clip_probabilities(tiny_clip):
    model, _, tokenizer = tiny_clip
    images = preprocess_images(torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8), 32)
    with torch.no_grad():
        embeddings = model.encode_image(images)
    probs = class_probabilities(embeddings, text_classifier(model, tokenizer, ["cat", "dog", "car"], cache=False))
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(-1), torch.ones(2))
