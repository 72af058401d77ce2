"""Cost benchmark: plain tower forward vs IP-CLIP vs frozen-CLIP crop-and-classify (paper Tab. 4a).

For one CLIP vision tower at one input resolution it measures, on the device it runs on:

* ``plain``: the tower's own forward on one image at ``resolution`` (no proposals);
* ``ip_clip``: :class:`maft.ipclip.IPCLIP` with N proposals on the same image, one pass;
* ``crop``: :class:`maft.crop_classifier.FrozenCLIP` (mask & crop) with the same N proposals: N sub-images at the
  tower's pretraining size (224 for ViT-B/16), encoded in chunks of ``crop_batch_size``.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one real forward (2 FLOPs per
multiply-accumulate). Its registry misses two kernels a CPU forward actually runs, which would silently
drop all attention cost: the CPU SDPA kernel (``_scaled_dot_product_flash_attention_for_cpu``) and the
``nn.MultiheadAttention`` inference fast path (``_native_multi_head_attention``, taken under no_grad, which
hides the QKV/output projections too). Formulas for both are added here, and every counted forward is
checked for matmul/attention/convolution ops the counter has no formula for (RuntimeError if any), so a
number printed here never leaves out a kernel. Resizes, masking and norms are not counted (cheap, and
not FLOPs of the tower). Latency is the median wall time (``time.perf_counter``, with
``torch.cuda.synchronize`` on GPU) of up to ``repeats`` timed calls after the warm-up; the counting call
is the first warm-up call (further warm-ups only for calls under a second), and a case stops repeating
once it has used ``max_seconds`` (at least one timed call). A counting call that itself took over
``max_seconds`` (CPU crop with N >= 50 for ViT-B/16: 1.7 to 7 TFLOPs) is used as the single timed sample
(``latency_from_count_call``; the counter adds about 2 ms per transformer block on CPU, far below 0.1% there).

Run time: ``maft bench --device cpu --threads 2`` (ViT-B/16 at 480 plus the tiny tower) takes about
5 minutes on 2 idle CPU cores (60 GFLOP/s), two thirds of it in the crop baseline (12.6 TFLOPs for all N),
and longer on a shared machine; about a minute on one H100; ``--quick`` takes a few seconds.
"""
from __future__ import annotations

import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import open_clip
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ..clip import tower_input_size
from ..crop_classifier import FrozenCLIP
from ..experiment import build_clip, build_ipclip
from ..notebook.report import markdown_table
from ..utils.paths import write_json
from ..utils.progress import progress_bar

DEFAULT_MODELS = ("ViT-B-16:480", "maft-test-vit")
QUICK_MODELS = ("maft-test-vit",)
DEFAULT_N = (10, 50, 100, 200)
QUICK_N = (10, 50)
# MAFT runs the 224-trained ViT-B/16 at 480; a spec without a resolution scales its tower the same way.
MAFT_RESOLUTION_SCALE = 480 / 224
TARGET_IP_OVER_PLAIN = 1.10
LONG_CALL_SECONDS = 1.0
TARGET_CROP_OVER_IP = 20.0
PAPER_SETTING = ("ViT-B-16", 480)

aten = torch.ops.aten


# ----------------------------------------------------------------------------------------------------
# FLOPs


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """CPU SDPA kernel: same count as PyTorch's CUDA SDPA formula (QK^T and AV; a mask saves nothing)."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_heads, *args, out_shape=None,
                      **kwargs) -> int:
    """``nn.MultiheadAttention`` fast path (batch first): Q/K/V projections, attention, output projection."""
    batch, queries, _ = query_shape
    keys = key_shape[1]
    projections = 2 * batch * embed_dim * embed_dim * (queries + 2 * keys + queries)  # q, k, v, out
    attention = 2 * 2 * batch * queries * keys * embed_dim  # QK^T and AV, summed over heads
    return projections + attention


EXTRA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    aten._native_multi_head_attention: _native_mha_flops,
}
# Ops that do the real arithmetic work (matmuls, convolutions, attention kernels); a counted forward must
# have a formula for each one it runs. Resizes such as upsample_bilinear2d are deliberately not matched.
_WORK_OP_PATTERN = re.compile(r"aten\.(\w*attention\w*|\w*conv\w*|\w*mm|matmul|einsum|linear)$")


class _OpRecorder(TorchDispatchMode):
    """Records the op packets a forward dispatches (nested inside FlopCounterMode)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (attention included; RuntimeError if a work op has no formula)."""
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    recorder = _OpRecorder()
    with counter, recorder:
        fn()
    uncounted = sorted(str(op) for op in recorder.ops
                       if op not in counter.flop_registry and _WORK_OP_PATTERN.match(str(op)))
    if uncounted:
        raise RuntimeError(f"FLOP count would miss these ops (no formula): {', '.join(uncounted)}")
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------------
# Latency


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device, repeats: int, warmup: int = 0,
               max_seconds: float = float("inf")) -> list[float]:
    """Wall times in ms of up to ``repeats`` calls after ``warmup`` untimed ones.

    Stops early once the timed calls have used ``max_seconds`` (always at least one timed call).
    """
    device = torch.device(device)
    for _ in range(warmup):
        fn()
    _synchronize(device)
    times, spent = [], 0.0
    while len(times) < max(1, repeats) and (not times or spent < max_seconds):
        start = time.perf_counter()
        fn()
        _synchronize(device)
        elapsed = time.perf_counter() - start
        times.append(elapsed * 1000.0)
        spent += elapsed
    return times


# ----------------------------------------------------------------------------------------------------
# Benchmark


def parse_model_spec(spec: str) -> tuple[str, int | None]:
    """``"ViT-B-16:480"`` -> ("ViT-B-16", 480); ``"maft-test-vit"`` -> ("maft-test-vit", None)."""
    name, sep, size = spec.rpartition(":")
    if not sep:
        return spec, None
    if not size.isdigit() or int(size) <= 0:
        raise ValueError(f"--models: {spec!r} must be NAME or NAME:RESOLUTION with a positive integer resolution")
    return name, int(size)


def default_resolution(visual) -> int:
    """The tower's input size scaled as MAFT scales ViT-B/16 (224 -> 480), on its patch/stride grid."""
    native = tower_input_size(visual)
    step = visual.patch_size[0] if hasattr(visual, "patch_size") else 32  # ModifiedResNet: stride 32
    return max(1, round(native * MAFT_RESOLUTION_SCALE / step)) * step


def random_proposals(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[n, size, size]`` binary rectangles, 1/8 to 1/2 of the side, at random places (fixed seed)."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    low, high = max(1, size // 8), max(2, size // 2)
    for i in range(n):
        h, w = torch.randint(low, high + 1, (2,), generator=gen).tolist()
        top = int(torch.randint(0, size - h + 1, (1,), generator=gen))
        left = int(torch.randint(0, size - w + 1, (1,), generator=gen))
        masks[i, top:top + h, left:left + w] = 1
    return masks


def _environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": device.type, "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "open_clip": open_clip.__version__}


def _load_towers(model_name: str, resolution: int | None, device: torch.device, seed: int = 0):
    """(tower at ``resolution``, tower at its own pretraining size, resolution); random weights."""
    def tower(size):
        config = {"seed": seed, "model": {"name": model_name, "pretrained": None, "image_size": size}}
        return build_clip(config, device=device)[0].visual.eval()

    native = tower(None)
    resolution = default_resolution(native) if resolution is None else int(resolution)
    return tower(resolution), native, resolution


def benchmark(model_name: str, resolution: int | None = None, n_proposals: Sequence[int] = DEFAULT_N,
              device: str | torch.device = "cpu", repeats: int = 3, warmup: int = 3,
              crop_batch_size: int = 32, start_layer: int | None = None, max_seconds: float = 20.0,
              seed: int = 0) -> list[dict]:
    """Rows (dicts) for the plain tower, IP-CLIP and crop-and-classify at each N.

    Random weights are fine: cost does not depend on them. ``resolution`` None scales the tower's input
    size by 480/224 (ViT-B/16 -> 480). ``warmup``: untimed calls, the FLOP-counting call included; the
    others are skipped when that call took over ``LONG_CALL_SECONDS``.
    Row fields: method, model, resolution, input_size (what the tower sees), n_proposals, gflops,
    latency_ms_median, latency_runs, latency_from_count_call, start_layer (ip_clip), crop_batch_size
    (crop), and the environment (device, device_name, threads, torch, open_clip).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA GPU is visible to PyTorch; use device='cpu'")
    if any(int(n) < 1 for n in n_proposals):
        raise ValueError(f"n_proposals must be positive, got {list(n_proposals)}")
    warmup = max(1, int(warmup))
    tower, native_tower, resolution = _load_towers(model_name, resolution, device, seed)
    ipclip = build_ipclip({"model": {"start_layer": start_layer}}, tower, max_proposals=max(max(n_proposals), 1))
    crop = FrozenCLIP(native_tower, merge="mask_and_crop", batch_size=crop_batch_size,
                      max_proposals=max(max(n_proposals), 1))
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(1, 3, resolution, resolution, generator=gen).to(device)
    masks = random_proposals(max(n_proposals), resolution, seed).to(device)

    cases = [("plain", 0, lambda: tower(images), resolution)]
    for n in n_proposals:
        cases.append(("ip_clip", n, lambda n=n: ipclip(images, [masks[:n]]), resolution))
    for n in n_proposals:
        cases.append(("crop", n, lambda n=n: crop(images, [masks[:n]]), crop.input_size))

    environment = _environment(device)
    rows = []
    for method, n, fn, input_size in progress_bar(cases, desc=f"bench {model_name}@{resolution}", unit="case"):
        with torch.no_grad():
            start = time.perf_counter()
            flops = count_flops(fn)  # the first warm-up call
            _synchronize(device)
            count_seconds = time.perf_counter() - start
            reuse_count_call = count_seconds >= max_seconds
            if reuse_count_call:
                # A call this long (CPU crop with large N) is its own warm-up, and the counter's overhead
                # (about 2 ms per transformer block on CPU) is far below 0.1% of it: it becomes the one
                # timed sample, which halves the CPU run time.
                times = [count_seconds * 1000.0]
            else:
                # One-time costs (allocator, kernel selection) only matter for short calls.
                extra_warmup = warmup - 1 if count_seconds < LONG_CALL_SECONDS else 0
                times = time_calls(fn, device, repeats, extra_warmup, max_seconds)
        row = {"method": method, "model": model_name, "resolution": resolution, "input_size": input_size,
               "n_proposals": n, "gflops": flops / 1e9, "latency_ms_median": statistics.median(times),
               "latency_runs": len(times), "latency_from_count_call": reuse_count_call}
        if method == "ip_clip":
            row["start_layer"] = ipclip.start_layer
        if method == "crop":
            row["crop_batch_size"] = crop_batch_size
        rows.append({**row, **environment})
    return rows


# ----------------------------------------------------------------------------------------------------
# Results


def ratio_rows(rows: Sequence[dict]) -> list[dict]:
    """Per model and N: ip_clip/plain and crop/ip_clip, for GFLOPs and latency."""
    out = []
    models = list(dict.fromkeys((r["model"], r["resolution"]) for r in rows))
    for model, resolution in models:
        mine = [r for r in rows if (r["model"], r["resolution"]) == (model, resolution)]
        plain = next((r for r in mine if r["method"] == "plain"), None)
        by_n = {(r["method"], r["n_proposals"]): r for r in mine}
        for n in sorted({r["n_proposals"] for r in mine if r["method"] != "plain"}):
            ip, crop = by_n.get(("ip_clip", n)), by_n.get(("crop", n))
            out.append({
                "model": model, "resolution": resolution, "n_proposals": n,
                "ip_clip/plain GFLOPs": _ratio(ip, plain, "gflops"),
                "crop/ip_clip GFLOPs": _ratio(crop, ip, "gflops"),
                "ip_clip/plain latency": _ratio(ip, plain, "latency_ms_median"),
                "crop/ip_clip latency": _ratio(crop, ip, "latency_ms_median"),
            })
    return out


def _ratio(top, bottom, key):
    if top is None or bottom is None or not bottom[key]:
        return None
    return top[key] / bottom[key]


def _target_lines(ratios: Sequence[dict]) -> list[str]:
    lines = []
    for r in ratios:
        # The targets are the paper's setting; a tiny tower's few patches make N=100 queries relatively dear.
        if r["n_proposals"] != 100 or (r["model"], r["resolution"]) != PAPER_SETTING:
            continue
        ip, crop = r["ip_clip/plain GFLOPs"], r["crop/ip_clip GFLOPs"]
        if ip is not None:
            lines.append(f"- {r['model']}@{r['resolution']}, N=100: ip_clip/plain GFLOPs = {ip:.3f} "
                         f"(target <= {TARGET_IP_OVER_PLAIN}: {'met' if ip <= TARGET_IP_OVER_PLAIN else 'NOT met'})")
        if crop is not None:
            verdict = "met" if crop >= TARGET_CROP_OVER_IP else "NOT met"
            lines.append(f"- {r['model']}@{r['resolution']}, N=100: crop/ip_clip GFLOPs = {crop:.1f} "
                         f"(target >= {TARGET_CROP_OVER_IP:.0f}: {verdict})")
    return lines


def results_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "# Cost benchmark\n\n_(no rows)_\n"
    env = rows[0]
    columns = ["model", "resolution", "method", "n_proposals", "input_size", "gflops", "latency_ms_median",
               "latency_runs"]
    ratios = ratio_rows(rows)
    parts = [
        "# Cost benchmark: plain tower vs IP-CLIP vs crop-and-classify\n",
        f"Device: {env['device']} ({env['device_name']}), torch {env['torch']}, open_clip {env['open_clip']}, "
        f"{env['threads']} CPU threads. GFLOPs: torch.utils.flop_counter (2 per multiply-accumulate, attention "
        "included), one image; crop = mask & crop at the tower's pretraining size. Latency: median ms of "
        "`latency_runs` timed calls (CPU timings are noisy when the machine is shared).\n",
        markdown_table(rows, columns, digits=3),
        "\n## Ratios\n",
        markdown_table(ratios, digits=3),
    ]
    targets = _target_lines(ratios)
    if targets:
        parts += ["\n## Targets (paper Tab. 4a: 53.4 vs 1127.0 GFLOPs, 21x)\n", "\n".join(targets) + "\n"]
    return "\n".join(parts)


def write_results(rows: Sequence[dict], out_json: str | Path) -> Path:
    """Write ``rows`` as JSON and a Markdown table beside it (same stem, ``.md``); print the table."""
    out_json = Path(out_json)
    write_json(list(rows), out_json)
    markdown = results_markdown(rows)
    out_json.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {out_json} and {out_json.with_suffix('.md')}")
    return out_json
