"""Cost benchmark: FLOP counts pinned to hand counts, rows, ratios, CLI outputs."""
import json

import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch.utils.flop_counter import FlopCounterMode

from maft.ipclip import IPCLIP
from maft.studies import bench
from maft.studies.bench import benchmark, count_flops, parse_model_spec, ratio_rows, results_markdown

REQUIRED = {"method", "model", "resolution", "input_size", "n_proposals", "gflops", "latency_ms_median",
            "latency_runs", "device", "torch"}


def tiny_vit(image_size=32, patch_size=8, layers=6, width=64, mlp_ratio=2.0, output_dim=32):
    torch.manual_seed(0)
    return VisionTransformer(image_size=image_size, patch_size=patch_size, width=width, layers=layers, heads=4,
                             mlp_ratio=mlp_ratio, output_dim=output_dim).eval()


def vit_block_flops(tokens, width, mlp_width, attention):
    """Q/K/V and output projections, the MLP, plus the given attention (QK^T + AV) FLOPs."""
    return 2 * tokens * width * 3 * width + 2 * tokens * width * width + 2 * 2 * tokens * width * mlp_width + attention


def plain_vit_flops(grid, patch=8, width=64, layers=6, mlp_width=128, output_dim=32):
    """Hand count (2 FLOPs per multiply-add) of one image through an open_clip ViT."""
    tokens = grid * grid + 1
    conv = 2 * grid * grid * width * 3 * patch * patch  # patch embedding, no bias
    block = vit_block_flops(tokens, width, mlp_width, attention=2 * 2 * tokens * tokens * width)
    return conv + layers * block + 2 * width * output_dim


@pytest.mark.parametrize("grad", [False, True])  # no_grad takes nn.MultiheadAttention's fused fast path
def test_plain_tower_flops_equal_hand_count(grad):
    tower = tiny_vit()
    images = torch.randn(1, 3, 32, 32)
    with torch.set_grad_enabled(grad):
        assert count_flops(lambda: tower(images)) == plain_vit_flops(grid=4) == 7_525_888
        assert count_flops(lambda: tower(torch.randn(2, 3, 32, 32))) == 2 * plain_vit_flops(grid=4)
        # PyTorch's counter alone misses the attention kernels (and, on the fast path, the projections).
        with FlopCounterMode(display=False) as stock:
            tower(images)
        assert stock.get_total_flops() < plain_vit_flops(grid=4)


def test_uncounted_attention_is_an_error(monkeypatch):
    tower = tiny_vit()
    monkeypatch.setattr(bench, "EXTRA_FLOP_FORMULAS", {})
    with torch.no_grad(), pytest.raises(RuntimeError, match="_native_multi_head_attention"):
        count_flops(lambda: tower(torch.randn(1, 3, 32, 32)))


def test_ipclip_flops_equal_hand_count():
    """IP-CLIP = plain blocks before L, then N extra class rows that attend to [N queries; hw patches]."""
    grid, n, start = 8, 5, 4
    hw, width, mlp_width = grid * grid, 64, 128
    tower = tiny_vit(image_size=64)
    images, masks = torch.randn(1, 3, 64, 64), [torch.rand(n, 64, 64)]
    with torch.no_grad():
        flops = count_flops(lambda: IPCLIP(tower, start_layer=start)(images, masks))
    conv = 2 * hw * width * 3 * 64
    plain_blocks = start * vit_block_flops(hw + 1, width, mlp_width, attention=4 * (hw + 1) ** 2 * width)
    masked_attention = 4 * hw * hw * width + 4 * n * (n + hw) * width  # patch rows + class rows
    masked_blocks = (6 - start) * vit_block_flops(n + hw, width, mlp_width, attention=masked_attention)
    assert flops == conv + plain_blocks + masked_blocks + 2 * n * width * 32


def test_benchmark_rows_and_exact_crop_cost():
    rows = benchmark("maft-test-vit", 48, n_proposals=(3, 7), repeats=1, warmup=1)
    assert [(r["method"], r["n_proposals"]) for r in rows] == [
        ("plain", 0), ("ip_clip", 3), ("ip_clip", 7), ("crop", 3), ("crop", 7)]
    for row in rows:
        assert REQUIRED <= row.keys()
        assert row["gflops"] > 0 and row["latency_ms_median"] > 0 and row["latency_runs"] == 1
        assert row["device"] == "cpu" and row["torch"] == torch.__version__
    # maft-test-vit: width 64, 6 blocks, MLP ratio 4, patch 8, 32-d output; crop runs it at 32 (4x4 grid).
    plain, crop7 = rows[0], rows[4]
    assert plain["gflops"] * 1e9 == pytest.approx(plain_vit_flops(6, mlp_width=256), abs=0.5)
    assert crop7["input_size"] == 32
    assert crop7["gflops"] * 1e9 == pytest.approx(7 * plain_vit_flops(4, mlp_width=256), abs=0.5)
    assert plain["gflops"] < rows[1]["gflops"] < rows[2]["gflops"]


def test_default_resolution_scales_like_maft():
    rows = benchmark("maft-test-vit", None, n_proposals=(1,), repeats=1, warmup=1)
    assert {r["resolution"] for r in rows} == {72}  # 32 * 480 / 224 = 68.6 -> 9 patches of 8


def test_ratios_and_targets_from_paper_numbers():
    base = {"model": "ViT-B-16", "resolution": 480, "latency_ms_median": 1.0}
    rows = [{**base, "method": "plain", "n_proposals": 0, "gflops": 50.0},
            {**base, "method": "ip_clip", "n_proposals": 100, "gflops": 53.4, "latency_ms_median": 2.0},
            {**base, "method": "crop", "n_proposals": 100, "gflops": 1127.0, "latency_ms_median": 30.0}]
    (ratio,) = ratio_rows(rows)
    assert ratio["ip_clip/plain GFLOPs"] == pytest.approx(1.068)
    assert ratio["crop/ip_clip GFLOPs"] == pytest.approx(1127.0 / 53.4)
    assert ratio["crop/ip_clip latency"] == pytest.approx(15.0)
    env = {"device": "cpu", "device_name": "x", "torch": "t", "open_clip": "o", "threads": 2}
    text = results_markdown([{**r, **env, "input_size": 480, "latency_runs": 1} for r in rows])
    assert "ip_clip/plain GFLOPs = 1.068 (target <= 1.1: met)" in text
    assert "crop/ip_clip GFLOPs = 21.1 (target >= 20: met)" in text


def test_parse_model_spec():
    assert parse_model_spec("ViT-B-16:480") == ("ViT-B-16", 480)
    assert parse_model_spec("maft-test-vit") == ("maft-test-vit", None)
    with pytest.raises(ValueError, match="NAME:RESOLUTION"):
        parse_model_spec("ViT-B-16:big")


def test_cli_quick_writes_json_and_markdown(tmp_path, capsys):
    from maft.cli import main

    out = tmp_path / "bench" / "cpu.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--quick", "--out", str(out)])
    assert exit_info.value.code == 0
    rows = json.loads(out.read_text())
    assert {(r["method"], r["n_proposals"]) for r in rows} == {
        ("plain", 0), ("ip_clip", 10), ("ip_clip", 50), ("crop", 10), ("crop", 50)}
    assert all(REQUIRED <= r.keys() and r["gflops"] > 0 for r in rows)
    markdown = out.with_suffix(".md").read_text()
    assert "## Ratios" in markdown and "| maft-test-vit | 72 | crop | 50 |" in markdown
    assert "## Ratios" in capsys.readouterr().out


def test_long_counting_call_is_reused_as_the_timed_sample():
    rows = benchmark("maft-test-vit", 32, n_proposals=(2,), repeats=3, warmup=1, max_seconds=0.0)
    assert all(r["latency_runs"] == 1 and r["latency_from_count_call"] for r in rows)
    rows = benchmark("maft-test-vit", 32, n_proposals=(2,), repeats=3, warmup=1, max_seconds=60.0)
    assert all(r["latency_runs"] == 3 and not r["latency_from_count_call"] for r in rows)
