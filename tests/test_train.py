"""Mask-aware fine-tuning on the shared VOC sample with the tiny random CLIP (CPU, seconds per run)."""
import argparse
import copy
import json

import pytest
import torch

import maft.losses as losses_module
import maft.train as train_module
from maft.checkpoints import load_finetuned
from maft.config import load, load_config
from maft.distributed import GlobalBatchSampler
from maft.experiment import build_clip
from maft.train import NonFiniteLossError, finetune
from maft.trainable import set_trainable, trainable_parameter_names


def tiny_config(out_dir, **train):
    """The shipped CPU smoke config, made smaller still: 8 images, few proposals, no progress noise."""
    config = load_config("voc20_tiny_cpu")
    config["data"]["max_images"] = 8
    config["proposals"]["settings"] = {"per_region": 1, "max_proposals": 8, "kinds": ["part", "background", "eroded"]}
    config["train"].update({"iterations": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": None,
                            "out_dir": str(out_dir)})
    config["train"].update(train)
    return config


@pytest.fixture(autouse=True)
def one_thread_and_private_outputs(monkeypatch, tmp_path):
    monkeypatch.setenv("MAFT_OUTPUTS", str(tmp_path / "outputs"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical numbers across runs and a fair share of the shared CPU
    yield
    torch.set_num_threads(threads)


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_run_writes_checkpoint_metrics_and_only_trained_parameters(tmp_path):
    summary = finetune(tiny_config(tmp_path / "run", iterations=3, checkpoint_every=2), progress=False)
    out = tmp_path / "run"
    assert summary["steps"] == 3 and summary["out_dir"] == str(out)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert {"loss", "loss_ma", "loss_dis", "lr", "grad_norm", "ma_images", "step_time_s"} <= set(row)
        assert row["loss"] == pytest.approx(row["loss_ma"] + row["loss_dis"])
    # poly schedule, power 0.9: lr_s = lr * (1 - s / iterations) ** 0.9
    assert [r["lr"] for r in rows] == pytest.approx([1e-3 * (1 - s / 3) ** 0.9 for s in range(3)])
    state = torch.load(summary["checkpoint"], weights_only=True)
    assert (out / "checkpoints" / "step_000002.pt").is_file()
    assert state["step"] == 3 and state["config"]["model"]["name"] == "maft-test-vit"
    names = set(state["params"])
    assert names and all((".attn." in n) or (".ln_" in n) or n.startswith(("ln_pre", "ln_post")) for n in names)
    assert not any(".mlp." in n or n.startswith(("conv1", "class_embedding", "positional_embedding"))
                   or n == "proj" for n in names)
    assert summary["trainable_parameters"] == sum(v.numel() for v in state["params"].values())
    assert json.loads((out / "summary.json").read_text())["checkpoint"] == summary["checkpoint"]

    # The checkpoint applied to a freshly built base model reproduces the trained tower; frozen units untouched.
    model, _, _ = build_clip(state["config"])
    before = {n: p.detach().clone() for n, p in model.visual.named_parameters()}
    load_finetuned(model, summary["checkpoint"], config=state["config"])
    for name, param in model.visual.named_parameters():
        expected = summary["params"][name] if name in names else before[name]
        assert torch.equal(param.detach(), expected), name
    assert any(not torch.equal(before[n], summary["params"][n]) for n in names)


def test_same_seed_same_numbers(tmp_path):
    first = finetune(tiny_config(tmp_path / "a"), progress=False)
    second = finetune(tiny_config(tmp_path / "b"), progress=False)
    assert first["final"]["loss"] == second["final"]["loss"]
    for name, value in first["params"].items():
        assert torch.equal(value, second["params"][name]), name
    other = finetune(tiny_config(tmp_path / "c") | {"seed": 1}, progress=False)
    assert other["final"]["loss"] != first["final"]["loss"]


def test_proposals_built_in_workers_give_the_same_run(tmp_path):
    main_process = finetune(tiny_config(tmp_path / "main"), progress=False)
    in_workers = finetune(tiny_config(tmp_path / "workers", num_workers=2), progress=False)
    assert in_workers["final"]["loss"] == main_process["final"]["loss"]
    for name, value in main_process["params"].items():
        assert torch.equal(value, in_workers["params"][name]), name


def test_resume_reaches_the_uninterrupted_result(tmp_path):
    straight = finetune(tiny_config(tmp_path / "straight", iterations=4), progress=False)
    finetune(tiny_config(tmp_path / "split", iterations=4, checkpoint_every=2), progress=False)
    partial = tmp_path / "split" / "checkpoints" / "step_000002.pt"
    resumed = finetune(None, resume=partial, progress=False)  # the checkpoint's own config and run dir
    assert resumed["steps"] == 4 and resumed["out_dir"] == str(tmp_path / "split")
    for name, value in straight["params"].items():
        assert torch.equal(value, resumed["params"][name]), name
    assert resumed["final"] == straight["final"] | {"grad_norm": resumed["final"]["grad_norm"]}
    assert straight["final"]["grad_norm"] == pytest.approx(resumed["final"]["grad_norm"], rel=0, abs=0)
    rows = read_metrics(tmp_path / "split")
    assert {"event": "resume", "step": 2, "checkpoint": str(partial)} in rows


def test_resume_refuses_a_different_config(tmp_path):
    summary = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False)
    changed = tiny_config(tmp_path / "run", iterations=1, lr=5e-4)
    with pytest.raises(ValueError, match="train.lr"):
        finetune(changed, resume=summary["checkpoint"], progress=False)


def test_micro_batches_give_the_same_step(tmp_path):
    # Without augmentation: its grey-padded 640 px crops make the tiny tower's gradients cancel more,
    # and float32 rounding of 1 vs 4 images per forward then grows past the bounds below by step 2
    # (the augmented path is pinned exactly against DDP in test_train_ddp.py).
    lr = 1e-5
    whole = finetune(tiny_config(tmp_path / "whole", iterations=2, batch_size=4, lr=lr, augmentation=False),
                     progress=False)
    split = finetune(tiny_config(tmp_path / "micro", iterations=2, batch_size=4, lr=lr, micro_batch_size=1,
                                 augmentation=False), progress=False)
    for key in ("loss", "loss_ma", "loss_dis"):
        assert split["final"][key] == pytest.approx(whole["final"][key], abs=1e-6)
    # Summing 4 per-image gradients instead of one batched backward rounds differently in float32 (the
    # norm is ~1e-3 with cancelling terms); a missing 1/num_micro_batches would be off by a factor of 4.
    assert split["final"]["grad_norm"] == pytest.approx(whole["final"]["grad_norm"], rel=2e-3)
    # Forwarding 1 image instead of 4 rounds differently in the last bits; AdamW's normalised update can
    # turn that into differences of up to ~lr in elements whose true gradient is ~0 (see test_train_ddp).
    worst = max((whole["params"][n] - split["params"][n]).abs().max().item() for n in whole["params"])
    assert worst < 0.5 * lr


def test_existing_run_dir_is_never_overwritten_silently(tmp_path):
    first = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False)
    second = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False)
    assert second["out_dir"] == str(tmp_path / "run-2")
    assert len(read_metrics(tmp_path / "run")) == 1
    third = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False, overwrite=True)
    assert third["out_dir"] == first["out_dir"] and len(read_metrics(tmp_path / "run")) == 1


def test_batch_without_any_mask_aware_term_still_distils(tmp_path):
    # min_area larger than any region: no proposals, so no image has an L_ma term.
    config = tiny_config(tmp_path / "run", iterations=2)
    config["proposals"]["settings"] = {"min_area": 10 ** 9}
    summary = finetune(config, progress=False)
    rows = read_metrics(tmp_path / "run")
    assert all(r["ma_images"] == 0 and r["loss_ma"] == 0.0 for r in rows)
    # L_dis is computed every step; with no L_ma the student never leaves the teacher, so L_dis and its
    # gradient stay exactly 0 (the teacher runs the student's kernels, maft.train._frozen_teacher)
    assert all(r["loss_dis"] == 0.0 and r["grad_norm"] == 0.0 for r in rows)
    # and once L_ma has moved the student, L_dis pulls it back
    normal = finetune(tiny_config(tmp_path / "normal", iterations=2), progress=False)
    assert normal["final"]["loss_dis"] > 0 and read_metrics(tmp_path / "normal")[0]["loss_dis"] == 0.0
    # and with the teacher switched off the step still runs (all-zero loss, still attached to the graph)
    config["train"]["distill_weight"] = 0.0
    config["train"]["out_dir"] = str(tmp_path / "nodistill")
    assert finetune(config, progress=False)["final"]["loss"] == 0.0
    assert summary["final"]["ma_images"] == 0


def test_distill_weight_zero_builds_no_teacher(tmp_path, monkeypatch):
    calls = []
    original = losses_module.self_distillation_loss
    monkeypatch.setattr(losses_module, "self_distillation_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
    summary = finetune(tiny_config(tmp_path / "run", iterations=1, distill_weight=0.0), progress=False)
    assert calls == [] and summary["final"]["loss_dis"] == 0.0
    assert summary["final"]["loss"] == summary["final"]["loss_ma"] > 0


def test_non_finite_loss_stops_with_step_and_term(tmp_path, monkeypatch):
    # the objective (maft.losses.maft_objective) looks L_dis up in its module at call time
    monkeypatch.setattr(losses_module, "self_distillation_loss",
                        lambda student, teacher, kind: student.sum() * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 1/2.*self-distillation loss L_dis is nan"):
        finetune(tiny_config(tmp_path / "run"), progress=False)


def test_trainable_units_select_the_paper_defaults(tiny_clip, tiny_rn_clip):
    visual = copy.deepcopy(tiny_clip[0].visual)
    names = set_trainable(visual, ["attn", "norm"])
    frozen = [n for n, p in visual.named_parameters() if not p.requires_grad]
    assert set(names) == {n for n, p in visual.named_parameters() if p.requires_grad}
    assert "ln_post.bias" in names and "transformer.resblocks.5.ln_2.weight" in names
    # as the authors: the patch-embedding stem, ln_pre included, stays frozen
    assert {"conv1.weight", "class_embedding", "positional_embedding", "proj", "ln_pre.weight"} <= set(frozen)
    assert all(".mlp." not in n for n in names)
    everything = trainable_parameter_names(visual, ["conv", "cls", "pos", "mlp", "attn", "norm", "pre_norm", "proj"])
    assert sorted(everything) == sorted(n for n, _ in visual.named_parameters())
    assert trainable_parameter_names(visual, ["proj"]) == ["proj"]
    rn = trainable_parameter_names(tiny_rn_clip[0].visual, ["attn"])
    assert rn and all(n.startswith("attnpool.") and "c_proj" not in n for n in rn)
    with pytest.raises(ValueError, match="select no parameter"):
        trainable_parameter_names(tiny_rn_clip[0].visual, ["cls"])


@pytest.mark.parametrize("key, value, message", [
    ("trainable", ["attn", "heads"], "unknown units"),
    ("lr", 0, "train.lr"),
    ("loss", "huber", "train.loss"),
    ("iterations", 0, "train.iterations"),
    ("amp", "int8", "train.amp"),
    ("typo_setting", 1, "config key train.typo_setting: unknown key"),
])
def test_bad_train_settings_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        load({"train": {key: value}})


def test_global_batch_shards_are_the_single_process_batch():
    one = GlobalBatchSampler(10, 4, seed=3, start=0, iterations=5)
    two = [GlobalBatchSampler(10, 4, seed=3, start=0, iterations=5, rank=r, world=2) for r in range(2)]
    for single, shard0, shard1 in zip(one, *two):
        assert single == shard0 + shard1
    resumed = list(GlobalBatchSampler(10, 4, seed=3, start=2, iterations=5))
    assert resumed == list(one)[2:]
    assert sorted(sum(list(GlobalBatchSampler(10, 5, seed=0, start=0, iterations=2)), [])) == list(range(10))
    with pytest.raises(ValueError, match="divisible"):
        GlobalBatchSampler(10, 3, seed=0, start=0, iterations=1, world=2)


def test_load_finetuned_rejects_foreign_models(tmp_path, tiny_rn_clip, make_tiny_clip):
    summary = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False)
    checkpoint = summary["checkpoint"]
    config = torch.load(checkpoint, weights_only=True)["config"]
    with pytest.raises(ValueError, match="model name 'maft-test-vit'.*'maft-test-rn'"):
        load_finetuned(make_tiny_clip("maft-test-vit")[0], checkpoint,
                       config=config | {"model": {**config["model"], "name": "maft-test-rn"}})
    with pytest.raises(ValueError, match="does not fit this ModifiedResNet"):
        load_finetuned(copy.deepcopy(tiny_rn_clip[0]), checkpoint)
    with pytest.raises(ValueError, match="frozen base weights differ"):
        load_finetuned(make_tiny_clip("maft-test-vit", seed=7)[0], checkpoint)
    load_finetuned(make_tiny_clip("maft-test-vit", seed=7)[0], checkpoint, check_base=False)
    not_a_checkpoint = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(1)}, not_a_checkpoint)
    with pytest.raises(ValueError, match="not a MAFT fine-tuning checkpoint"):
        load_finetuned(make_tiny_clip("maft-test-vit")[0], not_a_checkpoint)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_finetuned(make_tiny_clip("maft-test-vit")[0], tmp_path / "missing.pt")


def test_cli_train_with_overrides_and_resume(tmp_path, capsys):
    from maft.cli.train import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli"
    args = parser.parse_args(["--config", "voc20_tiny_cpu", "--no-progress", "--set", "train.iterations=2",
                              "--set", "train.checkpoint_every=1", "--set", "data.max_images=4",
                              "--set", "train.batch_size=2", "--set", f"train.out_dir={out}"])
    assert run(args) == 0
    assert "2 steps" in capsys.readouterr().out
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["config"]["name"] == "voc20_tiny_cpu" and state["config"]["train"]["iterations"] == 2
    args = parser.parse_args(["--resume", str(out / "checkpoints" / "step_000001.pt"), "--no-progress"])
    assert run(args) == 0
    assert read_metrics(out)[-1]["step"] == 2


@pytest.mark.parametrize("name, dataset, iterations", [
    ("voc20_vitb16_paper", "voc20", 100),
    ("coco_stuff171_vitb16_paper", "coco_stuff171", 1000),
    ("ade847_vitb16_paper", "ade847", 5000),
])
def test_paper_configs_hold_the_paper_settings(name, dataset, iterations):
    config = load(load_config(name))
    assert config["name"] == name and config["data"]["dataset"] == dataset
    assert config["model"] == {"name": "ViT-B-16", "pretrained": "openai", "image_size": 480, "start_layer": 8}
    train = config["train"]
    assert (train["iterations"], train["batch_size"]) == (iterations, 16)
    assert (train["lr"], train["weight_decay"]) == (1e-5, 1e-5)
    assert (train["grad_clip"], train["lr_power"], train["amp"], train["distill_weight"]) == (0.01, 0.9, True, 1.0)
    assert train["trainable"] == ["attn", "norm"] and train["loss"] == "smooth_l1"
    assert config["text"]["templates"] == "vild" and config["proposals"]["kind"] == "file"


def test_tiny_cpu_config_is_valid_and_small():
    config = load(load_config("voc20_tiny_cpu"))
    assert config["model"]["name"] == "maft-test-vit" and config["model"]["pretrained"] is None
    assert config["train"]["device"] == "cpu" and config["train"]["iterations"] <= 10


TINY_TOWER = ["model.name=maft-test-vit", "model.pretrained=null", "model.image_size=32", "model.start_layer=null",
              "text.templates=single", "train.device=cpu", "train.amp=false", "train.num_workers=0"]


def test_open_vocabulary_config_trains_on_every_class(tmp_path, capsys):
    """`maft train --config coco_stuff171_vitb16_openvocab`, with a tiny tower and GT proposals on the shared
    COCO sample: all 171 classes are training classes and none is mapped to ignore."""
    from maft.cli.train import add_arguments, run
    from maft.distributed import Distributed

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "openvocab"
    overrides = TINY_TOWER + ["proposals={kind: gt, settings: {per_region: 1, max_proposals: 8, kinds: [part, background]}}",
                              "data.max_images=4", "train.iterations=2", "train.batch_size=2", "train.log_every=1",
                              "train.checkpoint_every=null", f"train.out_dir={out}"]
    args = parser.parse_args(["--config", "coco_stuff171_vitb16_openvocab", "--no-progress"]
                             + [item for o in overrides for item in ("--set", o)])
    assert run(args) == 0
    assert "2 steps" in capsys.readouterr().out
    config = torch.load(out / "checkpoint.pt", weights_only=True)["config"]
    assert config["name"] == "coco_stuff171_vitb16_openvocab" and config["data"]["protocol"] == "open_vocabulary"
    assert config["train"]["augmentation"] is True
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["loss_dis"] == 0.0 and rows[0]["ma_classes"] > 0
    parts = train_module._build_parts(load(config), torch.device("cpu"), Distributed(torch.device("cpu")))
    assert parts.seen == list(range(171)) and parts.dataset.unseen == [] and parts.text.shape[0] == 171
    zero_shot = train_module._build_parts(load(config, ["data.protocol=zero_shot"]),
                                          torch.device("cpu"), Distributed(torch.device("cpu")))
    assert len(zero_shot.seen) == 156 and zero_shot.text.shape[0] == 156


def test_open_vocabulary_config_refuses_cleanly_without_weights(tmp_path):
    from maft.cli.train import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", "coco_stuff171_vitb16_openvocab", "--no-progress",
                              "--set", f"train.out_dir={tmp_path / 'run'}", "--set", "model.pretrained=/no/such/weights.pt"])
    with pytest.raises((FileNotFoundError, ValueError), match="weights.pt"):
        run(args)
    assert not (tmp_path / "run").exists()


def test_first_logged_step_has_zero_self_distillation_and_norms_get_no_weight_decay(tmp_path):
    from maft.distributed import Distributed

    summary = finetune(tiny_config(tmp_path / "run", iterations=1), progress=False)
    assert read_metrics(tmp_path / "run")[0]["loss_dis"] == 0.0  # the student is still the teacher
    config = torch.load(summary["checkpoint"], weights_only=True)["config"]
    parts = train_module._build_parts(load(config), torch.device("cpu"), Distributed(torch.device("cpu")))
    by_decay = {group["weight_decay"]: group["params"] for group in parts.optimizer.param_groups}
    assert sorted(by_decay) == [0.0, 1e-5]
    names = {id(p): n for n, p in parts.visual.named_parameters()}
    no_decay = {names[id(p)] for p in by_decay[0.0]}
    assert no_decay == {n for n in parts.trained if ".ln_" in n or n.startswith("ln_post")}
    assert all(".attn." in names[id(p)] for p in by_decay[1e-5])
