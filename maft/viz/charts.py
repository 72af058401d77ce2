"""Charts of numbers (seaborn): cost against proposals, loss curves, score against IoU, metric bars with
error bars, and the story's Table 4 (a, c, e) with the paper's values printed beside ours.

Like :mod:`maft.viz.figures`, every chart is a ``matplotlib.figure.Figure`` built without pyplot (shown as a
PNG in notebooks through :mod:`maft.notebook.display`, which :func:`maft.notebook.setup` enables).
"""
from __future__ import annotations

from typing import Sequence

import seaborn as sns
from matplotlib.figure import Figure


def plot_benchmark(rows: Sequence[dict]) -> Figure:
    """GFLOPs against the number of proposals, per method and model, log scale."""
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    expanded = []
    ns = sorted({r["n_proposals"] for r in rows if r["method"] != "plain"})
    for r in rows:  # the plain tower does not depend on N: draw it as a flat line
        for n in (ns if r["method"] == "plain" else [r["n_proposals"]]):
            expanded.append({**r, "n_proposals": n, "series": f"{r['method']} · {r['model']}@{r['resolution']}"})
    sns.lineplot(x=[r["n_proposals"] for r in expanded], y=[r["gflops"] for r in expanded],
                 hue=[r["series"] for r in expanded], marker="o", ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("proposals N")
    ax.set_ylabel("GFLOPs per image")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_training_curves(rows: Sequence[dict], keys: Sequence[str] = ("loss", "loss_ma", "loss_dis")) -> Figure:
    """Loss terms against the step, from the fine-tuning metrics (JSON lines)."""
    present = [k for k in keys if any(k in r for r in rows)]
    fig = Figure(figsize=(6.5, 3.2))
    ax = fig.add_subplot(1, 1, 1)
    for key in present:
        points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        sns.lineplot(x=[p[0] for p in points], y=[p[1] for p in points], label=key, ax=ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    fig.tight_layout()
    return fig


def plot_score_vs_iou(points: Sequence[dict], hue: str = "classifier") -> Figure:
    """Scatter of a proposal's score for a region's class against its IoU with the region."""
    groups = sorted({p[hue] for p in points})
    fig = Figure(figsize=(4.2 * len(groups), 3.6))
    for i, group in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        mine = [p for p in points if p[hue] == group]
        sns.scatterplot(x=[p["iou"] for p in mine], y=[p["score"] for p in mine],
                        hue=[p.get("kind", "") for p in mine], s=14, alpha=0.7, ax=ax)
        ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("IoU with the region")
        ax.set_ylabel("A^c of the region's class")
        ax.set_title(str(group))
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot_metric_bars(rows: Sequence[dict], metrics: Sequence[str] = ("miou_seen", "miou_unseen", "hiou"),
                     label: str = "classifier", errors: Sequence[dict] | None = None) -> Figure:
    """Grouped bars: one group per metric, one bar per row (optionally with +-std from ``errors``)."""
    fig = Figure(figsize=(7.5, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    long = [{"metric": m, label: r[label], "value": r[m]} for r in rows for m in metrics if r.get(m) is not None]
    sns.barplot(x=[p["metric"] for p in long], y=[p["value"] for p in long], hue=[p[label] for p in long], ax=ax)
    if errors is not None:
        std = {(e[label], m): e.get(m) for e in errors for m in metrics}
        for bar_group, container in zip([r[label] for r in rows], ax.containers):
            for bar, m in zip(container, metrics):
                s = std.get((bar_group, m))
                if s:
                    ax.errorbar(bar.get_x() + bar.get_width() / 2, bar.get_height(), yerr=s, color="black",
                                capsize=3, lw=1)
    ax.set_xlabel("")
    ax.set_ylabel("%")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


STORY_METRICS = {"miou_seen": "mIoU-s", "miou_unseen": "mIoU-u", "hiou": "hIoU"}
STORY_ROWS = {"crop": "frozen CLIP\n(mask & crop)", "frozen": "frozen\nIP-CLIP", "ma_only": "fine-tuned\nL_ma",
              "maft": "MAFT\nL_ma + L_dis"}


def _error_bars(ax, x, y, err, colour="black") -> None:
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor=colour, capsize=3, lw=1)


def plot_story(story: dict) -> Figure:
    """Three panels: Table 4a (bars per row, mean +- std over seeds, the paper's value as a text label),
    Table 4c (mIoU-s / -u against fine-tuning iterations) and Table 4e (hIoU against the start layer L,
    fine-tuned and frozen)."""
    mean, std, paper = story["mean"], story["std"], story["paper"]
    fig = Figure(figsize=(15, 4.4))
    axes = [fig.add_subplot(1, 3, i + 1) for i in range(3)]
    palette = sns.color_palette("deep", len(STORY_METRICS))

    ax = axes[0]
    width = 0.26
    rows = [r for r in STORY_ROWS if r in mean]
    for j, (key, label) in enumerate(STORY_METRICS.items()):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ys = [mean[r][key] for r in rows]
        ax.bar(xs, ys, width, label=label, color=palette[j])
        _error_bars(ax, xs, ys, [std[r][key] for r in rows])
    for i, r in enumerate(rows):  # the paper's hIoU (COCO-Stuff) above each group, for direction
        value = paper["table_4a"][r]["hiou"]
        ax.annotate(f"paper hIoU {value:.1f}", (i, max(mean[r][k] + std[r][k] for k in STORY_METRICS)),
                    textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7, color="dimgray")
    ax.set_xticks(range(len(rows)), [STORY_ROWS[r] for r in rows], fontsize=8)
    top = max(mean[r][k] + std[r][k] for r in rows for k in STORY_METRICS)
    ax.set_ylim(0, 1.35 * top)  # room for the paper's labels and, above them, the legend
    ax.set_ylabel("% (mean ± std over seeds)")
    ax.set_title("Table 4a: components", fontsize=10)
    ax.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)

    ax = axes[1]
    points, spread = mean["iterations"], std["iterations"]
    for j, key in enumerate(("miou_seen", "miou_unseen")):
        xs, ys = [p["iterations"] for p in points], [p[key] for p in points]
        ax.plot(xs, ys, marker="o", color=palette[j], label=STORY_METRICS[key])
        _error_bars(ax, xs, ys, [p[key] for p in spread], palette[j])
    ax.set_xlabel("fine-tuning iterations")
    ax.set_ylabel("%")
    ax.set_title("Table 4c: iterations (paper: seen rises, unseen falls after 1k)", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[2]
    points, spread = mean["start_layer"], std["start_layer"]
    xs, ys = [p["start_layer"] for p in points], [p["hiou"] for p in points]
    ax.plot(xs, ys, marker="o", color=palette[2], label="fine-tuned (mean ± std)")
    _error_bars(ax, xs, ys, [p["hiou"] for p in spread], palette[2])
    frozen = story.get("frozen_start_layer") or []
    ax.plot([p["start_layer"] for p in frozen], [p["hiou"] for p in frozen], marker="s", ls="--",
            color="gray", label="frozen IP-CLIP")
    ax.plot([p["start_layer"] for p in paper["start_layer"]], [p["hiou"] for p in paper["start_layer"]],
            marker="^", ls=":", color="dimgray", label="paper (COCO-Stuff, fine-tuned)")
    ax.set_xlabel("start layer L of the masked attention")
    ax.set_ylabel("hIoU %")
    ax.set_title("Table 4e: start layer", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
