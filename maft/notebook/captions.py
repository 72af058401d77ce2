"""What a run's numbers mean, in a few sentences: the closing cell of each notebook and its report section.

Each function takes the metrics a notebook wrote (``report.write_metrics``) and returns Markdown. The
sentences are generated from the numbers, comparisons included ("higher", "lower", "within the seed
spread"), so they stay true for any profile: the demo, the smoke run (whose random model means nothing,
which the text then says as numbers) or the paper profiles.
"""
from __future__ import annotations

from typing import Sequence

from ..studies.variants import format_mean_std


def _pct(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def _rho(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def printed_gap(a: float, b: float, digits: int = 1) -> float:
    """a - b as a reader works it out from the printed values: both rounded first, so a stated gap always
    equals the difference of the two numbers printed beside it (38.74 and 38.36 print as 38.7 and 38.4:
    the gap is 0.3, not 0.4)."""
    return round(round(a, digits) - round(b, digits), digits)


def _compare(a, b, unit: str = "", digits: int = 1) -> str:
    """"higher by 2.3" / "lower by 0.4" / "equal" for a against b."""
    if a is None or b is None:
        return "not comparable"
    diff = printed_gap(a, b, digits)
    if round(diff, digits) == 0:
        return "equal"
    return f"{'higher' if diff > 0 else 'lower'} by {abs(diff):.{digits}f}{unit}"


def _points(a: float, b: float) -> str:
    """"2.3 points above" / "0.4 points below" / "level with" for a against b."""
    diff = printed_gap(a, b)
    if diff == 0:
        return "level with"
    return f"{abs(diff):.1f} points {'above' if diff > 0 else 'below'}"


def _row(rows: Sequence[dict], key: str, name: str) -> dict | None:
    return next((r for r in rows if r.get(key) == name), None)


def setup_and_data(metrics: dict) -> str:
    counts = metrics["images_per_class"]
    rarest = min(counts, key=counts.get)
    unseen = metrics["unseen"]
    absent = [name for name in unseen if counts.get(name, 0) == 0]
    text = (f"**What this means.** `{metrics['dataset']}` has {metrics['classes']} classes: {metrics['seen']} are "
            f"seen during fine-tuning and {len(unseen)} ({', '.join(unseen)}) only appear at evaluation, so every "
            f"unseen-class pixel that is segmented correctly later is zero-shot. The evaluation split has "
            f"{metrics['eval_images']} images; the rarest class, {rarest}, appears in {counts[rarest]} of them, "
            "which bounds how precisely its IoU can be measured.")
    if absent:  # an unseen class with no evaluation image cannot be measured at all
        text += (f" No evaluation image shows {', '.join(absent)}: its unseen IoU is not measured in this run, so "
                 "the unseen mIoU later averages over fewer classes than the split names.")
    return text


# Below this Spearman rho a classifier is called insensitive to the proposal: its scores follow IoU
# less than half-way (the paper's Fig. 1 shows frozen CLIP far below it). The checklist uses it too.
INSENSITIVE_RHO = 0.5


def insensitivity(metrics: dict) -> str:
    parts, insensitive, aware = [], [], []
    for row in metrics["classifiers"]:
        rate = row.get("confused_rate")
        rho = row["mask_awareness"]
        parts.append(f"{row['classifier']} ranks proposals with rho = {_rho(rho)}, and in "
                     f"{'n/a' if rate is None else f'{100 * rate:.0f}%'} of {row['regions']} regions a proposal "
                     "with IoU < 0.5 scores at least as high as the whole object")
        if rho is not None:
            (insensitive if rho < INSENSITIVE_RHO else aware).append(row["classifier"])
    text = ("**What this means.** Mask-awareness rho is 1 when a classifier's score for a region's class "
            "follows the proposals' IoU exactly and 0 when it ignores it. " + "; ".join(parts) + ".")
    if insensitive:
        text += (f" {' and '.join(insensitive)} {'is' if len(insensitive) == 1 else 'are'} insensitive to the "
                 f"proposal here (rho < {INSENSITIVE_RHO}), as the paper reports for frozen CLIP: such a classifier "
                 "turns parts and object-plus-background proposals into false positives, which mask-aware "
                 "fine-tuning targets.")
    if aware:
        text += (f" {' and '.join(aware)} already follow{'s' if len(aware) == 1 else ''} the IoU fairly well "
                 f"(rho >= {INSENSITIVE_RHO}): the insensitivity the paper reports for frozen CLIP does not appear "
                 "this strongly in this run.")
    return text


# Batched and one-by-one embeddings agree to float precision when the attention mask is right.
EQUIVALENCE_TOLERANCE = 1e-4


def ip_clip_cost(equivalence: dict, ratios: Sequence[dict]) -> str:
    diff = equivalence["max_abs_diff_batched_vs_one_by_one"]
    if diff < EQUIVALENCE_TOLERANCE:
        text = [f"**What this means.** Classifying all proposals in one pass gives the same embeddings as one "
                f"pass per proposal (max |difference| {diff:.1e}), because class queries never attend to each "
                "other."]
    else:
        text = [f"**What this means.** Classifying all proposals in one pass does NOT give the embeddings of one "
                f"pass per proposal: they differ by up to {diff:.1e}, beyond float precision "
                f"({EQUIVALENCE_TOLERANCE:.0e}), so class queries see each other and eq. 2's mask is not applied."]
    for r in ratios:
        ip, crop = r.get("ip_clip/plain GFLOPs"), r.get("crop/ip_clip GFLOPs")
        if ip is None or crop is None:
            continue
        verdict = ("so IP-CLIP is the cheaper of the two" if crop > 1 else
                   "so here IP-CLIP is not cheaper than crop-and-classify, unlike the paper's Table 4a (GFLOPs)")
        text.append(f"With N = {r['n_proposals']} proposals on {r['model']} at {r['resolution']} px, IP-CLIP costs "
                    f"{ip:.2f}x the plain tower, and crop-and-classify costs {crop:.1f}x IP-CLIP, {verdict}.")
    return " ".join(text)


def finetuning(metrics: dict, log: Sequence[dict]) -> str:
    steps = [row for row in log if "step" in row and "loss_ma" in row]
    final = metrics["final_losses"]
    if not steps:
        return "**What this means.** No step was logged."
    first = steps[0]
    change = _compare(final["loss_ma"], first["loss_ma"], digits=4)
    if change.startswith("lower"):
        effect = ("the scores of the seen classes moved towards the proposals' normalised IoUs, which is what the "
                  "loss asks for")
    elif change.startswith("higher"):
        effect = ("the loss rose, so over these steps the scores of the seen classes did not move towards the "
                  "proposals' normalised IoUs; the fine-tuning the paper describes did not take effect in this run")
    else:
        effect = "the loss did not change, so fine-tuning left the scores where frozen CLIP put them"
    return (f"**What this means.** Over {metrics['steps']} steps of {metrics['trainable_parameters']:,} trained "
            f"parameters, the mask-aware loss went from {first['loss_ma']:.4f} to {final['loss_ma']:.4f} "
            f"({change}): {effect}. The self-distillation loss went from {first['loss_dis']:.4f} "
            f"to {final['loss_dis']:.4f}: it measures how far IP-CLIP's whole-image prediction drifts from frozen "
            "CLIP's" + (" (0 at the first step, before any update, when the two towers are the same)"
                        if first["loss_dis"] == 0 else "") + ".")


def _direction(a, b, better: str, worse: str, same: str = "level with it") -> str:
    """``better`` when a > b by at least 0.05 (one printed digit), ``worse`` when below, else ``same``."""
    if a is None or b is None:
        return "not comparable"
    if printed_gap(a, b) == 0:
        return same
    return better if a > b else worse


def zero_shot(metrics: dict) -> str:
    rows = metrics["clip_only"]
    crop = _row(rows, "classifier", "frozen CLIP, mask & crop")
    frozen = _row(rows, "classifier", "frozen IP-CLIP")
    maft = _row(rows, "classifier", "MAFT IP-CLIP")
    bound = _row(rows, "classifier", "upper bound (S_IoU)")
    text = ["**What this means.**"]
    if frozen and maft:
        text.append(f"After mask-aware fine-tuning, IP-CLIP's hIoU is {_pct(maft['hiou'])} against {_pct(frozen['hiou'])} "
                    f"frozen ({_compare(maft['hiou'], frozen['hiou'], ' points')}); on the unseen classes alone, "
                    f"{_pct(maft['miou_unseen'])} against {_pct(frozen['miou_unseen'])} "
                    f"({_compare(maft['miou_unseen'], frozen['miou_unseen'], ' points')}), although no unseen label "
                    "was used in training.")
        text.append(_direction(
            maft["miou_unseen"], frozen["miou_unseen"],
            "The paper's effect appears: fine-tuning on seen classes also improved the unseen ones.",
            "The paper's effect does not appear here: the unseen classes got worse after fine-tuning, the "
            "opposite of the paper's Tables 1 and 2.",
            "Fine-tuning left the unseen classes where they were: the paper's gain on them does not appear."))
    if crop and maft:
        text.append(f"The frozen crop-and-classify pipeline MAFT replaces reaches hIoU {_pct(crop['hiou'])}; MAFT is "
                    f"{_compare(maft['hiou'], crop['hiou'], ' points')}"
                    + _direction(maft["hiou"], crop["hiou"], ", as in the paper.",
                                 ", the reverse of the paper's Table 4a.", "."))
    if bound:
        text.append(f"Scoring every proposal by its true IoU would give hIoU {_pct(bound['hiou'])}: the ceiling these "
                    "proposals allow.")
    return " ".join(text)


def ablations(metrics: dict) -> str:
    rows = {r["variant"]: r for r in metrics["summary"]}
    seeds = list(metrics["seeds"])
    base = rows.get("maft")
    spread_note = "" if len(seeds) > 1 else " With one seed there is no spread to judge a difference by."
    text = [f"**What this means.** Means over {len(seeds)} seed(s) {seeds}.{spread_note}"]
    if base is None or base.get("hiou") is None:
        return " ".join(text)
    for name, row in rows.items():
        if name == "maft" or row.get("hiou") is None:
            continue
        diff = printed_gap(row["hiou"], base["hiou"])
        spread = max(row.get("hiou_std") or 0.0, base.get("hiou_std") or 0.0)
        if diff == 0:
            verdict = "equal"
        elif len(seeds) > 1 and abs(diff) <= spread:
            verdict = "within the seed spread"
        else:
            verdict = ("above MAFT, unlike the paper's Table 4, where MAFT's setting is best" if diff > 0 else
                       "below MAFT, as in the paper's Table 4")
        text.append(f"`{name}`: hIoU {_pct(row['hiou'])} vs {_pct(base['hiou'])} for MAFT "
                    f"({diff:+.1f}, {verdict}; unseen {_pct(row['miou_unseen'])} vs {_pct(base['miou_unseen'])}).")
    return " ".join(text)


def visualizations(stats: dict) -> str:
    gap_frozen = printed_gap(stats["frozen_whole"], stats["frozen_poor"], 2)
    gap_maft = printed_gap(stats["maft_whole"], stats["maft_poor"], 2)
    text = (f"**What this means.** Over the {stats['proposals']} proposals drawn above, the true class is the "
            f"top-1 class of {stats['frozen_top1']} of them with frozen CLIP and of {stats['maft_top1']} after "
            f"MAFT. For the region's class, frozen CLIP gives the whole object {stats['frozen_whole']:.2f} and the "
            f"poorer proposals (parts, background, merges) {stats['frozen_poor']:.2f} on average, a gap of "
            f"{gap_frozen:+.2f}; MAFT gives {stats['maft_whole']:.2f} and {stats['maft_poor']:.2f}, a gap of "
            f"{gap_maft:+.2f}.")
    if gap_maft != gap_maft or gap_frozen != gap_frozen:  # NaN: no whole or no poorer proposal was drawn
        return text + " Without both kinds among the drawn proposals, the gap cannot be compared."
    if gap_maft > gap_frozen:  # judged on the gaps as printed above
        return text + (" MAFT widened the gap in favour of the whole object, as the paper's Fig. 7 shows: the "
                       "whole object wins more clearly after mask-aware fine-tuning.")
    return text + (" MAFT did not widen the gap in favour of the whole object here (the paper's Fig. 7 shows it "
                   "widening): on these proposals, fine-tuning did not make the classifier more mask-aware.")


def sam_proposals(metrics: dict | None, message: str | None = None) -> str:
    if metrics is None:
        return f"**What this means.** Nothing was measured here: {message}"
    rows = metrics["rows"]
    lines = [f"{r['classifier']}: hIoU {_pct(r['hiou'])} (unseen {_pct(r['miou_unseen'])})" for r in rows]
    text = ("**What this means.** With Segment Anything's class-agnostic proposals, " + "; ".join(lines)
            + ". SAM never saw the dataset's labels, so this tests the classifier on proposals of unknown quality.")
    frozen, maft = _row(rows, "classifier", "SAM + frozen IP-CLIP"), _row(rows, "classifier", "SAM + MAFT")
    if frozen and maft:
        text += " " + _direction(
            maft["hiou"], frozen["hiou"],
            "The mask-aware CLIP also helps on SAM's proposals, as in the paper's Table 5.",
            "On SAM's proposals the mask-aware CLIP is worse than frozen IP-CLIP, unlike the paper's Table 5.",
            "On SAM's proposals the mask-aware CLIP is level with frozen IP-CLIP: the paper's gain does not appear.")
    return text


def story(result: dict) -> str:
    """The world story: does the paper's Table 4a order hold, and what the start-layer sweep says."""
    mean, std = result["mean"], result["std"]
    seeds = len(result["per_seed"])

    def h(name):
        return mean[name]["hiou"], std[name]["hiou"]

    (crop, crop_s), (frozen, frozen_s), (maft, maft_s) = h("crop"), h("frozen"), h("maft")

    def gap(a, sa, b, sb):  # "a > b" beyond the seed spread?
        return a - b > max(sa, sb) if seeds > 1 else a > b

    order = gap(frozen, frozen_s, crop, crop_s) and gap(maft, maft_s, frozen, frozen_s)
    text = [f"**What this means.** On test proposals that never saw a label ({result['proposals']['test']}), "
            f"over {seeds} seed(s): crop-and-classify {crop:.1f} hIoU, frozen IP-CLIP {frozen:.1f}, MAFT "
            f"{format_mean_std(maft, maft_s)} (fine-tuned with L_ma only: "
            f"{format_mean_std(mean['ma_only']['hiou'], std['ma_only']['hiou'])})."]
    if order:
        text.append("The paper's order holds: crop < frozen IP-CLIP < MAFT, each gap larger than the seed spread.")
    else:
        text.append(f"The paper's order (crop < frozen IP-CLIP < MAFT, Table 4a) does not hold here: MAFT is "
                    f"{_points(maft, frozen)} frozen IP-CLIP and {_points(maft, crop)} crop-and-classify.")
    layers = sorted(mean["start_layer"], key=lambda p: p["hiou"])
    if layers:
        best, default = layers[-1], next((p for p in mean["start_layer"] if p["hiou"] == maft), None)
        text.append(f"Over the start layer L, fine-tuned IP-CLIP is best at L = {best['start_layer']} "
                    f"({best['hiou']:.1f} hIoU)" + (f", against {maft:.1f} at the default L = {default['start_layer']}"
                                                   if default and default is not best else "") + ".")
    context = result.get("context") or []
    if len(context) > 1:
        text.append(_cosine_sentence(context))
    return " ".join(text)


def _cosine_sentence(context: list[dict], flat: float = 0.02) -> str:
    """How the proposal-to-image cosine moves with L: a leading stretch where it stays put is named, and
    "rises" / "falls" is said only when the rest moves one way; otherwise its range is given."""
    first, last = context[0], context[-1]
    level = first["cosine_to_image"]
    steady = 0
    while steady + 1 < len(context) and abs(context[steady + 1]["cosine_to_image"] - level) <= flat:
        steady += 1
    plateau = context[steady]
    where = "The cosine between a proposal's embedding and the whole image's"
    if plateau is last:
        return (f"{where} stays at {level:.2f} (within {flat}) from L = {first['start_layer']} to L = "
                f"{last['start_layer']}: where the masks start does not change how much a proposal is described "
                "as the whole scene.")
    rest = [p["cosine_to_image"] for p in context[steady:]]
    steps = [b - a for a, b in zip(rest, rest[1:])]
    if not (all(s >= 0 for s in steps) or all(s <= 0 for s in steps)):
        return (f"{where} moves up and down with L, between {min(rest):.2f} and {max(rest):.2f} for L = "
                f"{plateau['start_layer']} to {last['start_layer']} (at L = {first['start_layer']}: {level:.2f}).")
    moves = "rises" if last["cosine_to_image"] > plateau["cosine_to_image"] else "falls"
    meaning = ("the more every proposal is described as the whole scene" if moves == "rises"
               else "the less every proposal is described as the whole scene")
    start = (f"stays at {level:.2f} (within {flat}) from L = {first['start_layer']} to L = {plateau['start_layer']}, "
             f"then {moves} to" if plateau is not first else f"{moves} from {level:.2f} at L = {first['start_layer']} to")
    later = f"the later the masks start after L = {plateau['start_layer']}" if plateau is not first else \
        "the later the masks start"
    return f"{where} {start} {last['cosine_to_image']:.2f} at L = {last['start_layer']}: {later}, {meaning}."
