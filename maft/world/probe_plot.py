"""The probe of :mod:`maft.world.probe` as one figure: the world's numbers with the literature's finding
and the real-data measurement drawn beside them (built without pyplot, like :mod:`maft.plots`)."""
from __future__ import annotations

from matplotlib.figure import Figure


def plot_probe(result: dict) -> Figure:
    """Four panels: direct-effect ablation curve, class-token cosine to the final embedding, patch
    linear probe by layer, class-context MI above shuffled."""
    fig = Figure(figsize=(13, 3.4))
    axes = [fig.add_subplot(1, 4, i + 1) for i in range(4)]
    readout = result["readout"]
    depth, full = readout["depth"], readout["full_accuracy"]

    ax = axes[0]
    ks = [p["k"] for p in readout["ablation"]]
    ax.axvspan(0, depth - 4, color="tab:green", alpha=0.08)
    ax.text(0.02, 0.5, "literature (real CLIP):\nkeep-late ≈ full here", fontsize=7, color="tab:green",
            transform=ax.transAxes)
    ax.plot(ks, [100 * p["keep_late"] for p in readout["ablation"]], "o-", color="tab:blue",
            label="keep late (blocks < K ablated)")
    ax.plot(ks, [100 * p["keep_early"] for p in readout["ablation"]], "s-", color="tab:orange",
            label="keep early (blocks ≥ K ablated)")
    ax.axhline(100 * full, color="grey", lw=0.8)
    ax.axhline(100 * readout["chance"], color="grey", lw=0.8, ls=":")
    ax.set(xlabel="split block K", ylabel="single-thing zero-shot (%)", title="direct-effect mean ablation",
           ylim=(0, 100))
    ax.legend(fontsize=6)

    ax = axes[1]
    ax.plot(range(depth + 1), readout["cosine_to_final"], "o-", label="this CLIP")
    ax.set(xlabel="entering block (12 = final)", ylabel="cosine to final embedding", title="class token commits at",
           ylim=(-0.1, 1.05))
    ax.legend(fontsize=7)

    ax = axes[2]
    patch = result["patch_probe"]
    ax.plot(range(len(patch["accuracy_by_layer"])), [100 * a for a in patch["accuracy_by_layer"]], "o-")
    ax.axhline(100 * patch["majority_baseline"], color="grey", ls=":", lw=0.8)
    ax.set(xlabel="layer (0 = embedding)", ylabel="patch-class linear probe (%)", title="patch tokens stay local",
           ylim=(0, 100))

    ax = axes[3]
    context = result["context"]
    short = {"voc20": "VOC", "coco_stuff171": "COCO128"}
    bars = [("world\nthing-stuff", context["world_surroundings"]),
            ("world\nthing-thing", context["world_cooccurrence"])]
    bars += [(f"{short.get(r['dataset'], r['dataset'])}\n{r['split']}", r) for r in context["real"] if "excess_bits" in r]
    colours = ["tab:blue", "tab:blue"] + ["tab:red"] * (len(bars) - 2)
    ax.bar(range(len(bars)), [b["excess_bits"] for _, b in bars], color=colours)
    ax.axhline(0.3, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(bars)), [name for name, _ in bars], fontsize=6)
    ax.set(ylabel="MI above shuffled (bits)", title="context: world (blue), real (red)")
    fig.tight_layout()
    return fig
