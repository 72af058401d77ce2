"""Every notebook's closing sentence is true of the numbers: each interpreter gets a result where the
paper's effect is there and one where it is reversed (and, with seeds, one within the seed spread), and
the sentence must say which."""
from maft.notebook import captions, checklist


def test_setup_and_data_names_the_rarest_class_and_an_unseen_class_without_images():
    metrics = {"dataset": "world", "classes": 4, "seen": 2, "unseen": ["cat", "dog"], "eval_images": 10,
               "images_per_class": {"sky": 9, "grass": 5, "cat": 3, "dog": 4}}
    text = captions.setup_and_data(metrics)
    assert "the rarest class, cat, appears in 3 of them" in text and "No evaluation image" not in text
    metrics["images_per_class"]["dog"] = 0
    text = captions.setup_and_data(metrics)
    assert "No evaluation image shows dog" in text


def _insensitivity_rows(rho):
    return [{"classifier": "frozen IP-CLIP", "mask_awareness": rho, "regions": 40, "confused_rate": 0.25}]


def test_insensitivity_says_whether_frozen_clip_is_insensitive():
    low = captions.insensitivity({"classifiers": _insensitivity_rows(0.21)})
    assert "rho = 0.21" in low and "frozen IP-CLIP is insensitive to the proposal here" in low
    assert "does not appear" not in low
    high = captions.insensitivity({"classifiers": _insensitivity_rows(0.83)})
    assert "already follows the IoU fairly well" in high and "does not appear this strongly" in high
    assert "is insensitive" not in high


def test_ip_clip_cost_says_when_the_equivalence_or_the_saving_fails():
    ratios = [{"model": "m", "resolution": 32, "n_proposals": 10, "ip_clip/plain GFLOPs": 1.1, "crop/ip_clip GFLOPs": 4.0}]
    good = captions.ip_clip_cost({"max_abs_diff_batched_vs_one_by_one": 2e-7}, ratios)
    assert "gives the same embeddings" in good and "IP-CLIP is the cheaper of the two" in good
    ratios[0]["crop/ip_clip GFLOPs"] = 0.5
    bad = captions.ip_clip_cost({"max_abs_diff_batched_vs_one_by_one": 3e-2}, ratios)
    assert "does NOT give the embeddings" in bad and "3.0e-02" in bad
    assert "IP-CLIP is not cheaper than crop-and-classify" in bad


def _finetuning(first, last):
    log = [{"step": 1, "loss_ma": first, "loss_dis": 0.0}, {"step": 2, "loss_ma": last, "loss_dis": 0.01}]
    return captions.finetuning({"steps": 2, "trainable_parameters": 1000,
                                 "final_losses": {"loss_ma": last, "loss_dis": 0.01}}, log)


def test_finetuning_says_when_the_loss_rose_instead_of_fell():
    fell = _finetuning(0.0466, 0.0346)
    assert "lower by 0.0120" in fell and "moved towards the proposals' normalised IoUs" in fell
    # the smoke run: the loss rose, and the old sentence still claimed the scores moved
    rose = _finetuning(0.0346, 0.0466)
    assert "higher by 0.0120" in rose and "did not move towards" in rose and "did not take effect" in rose
    assert "moved towards" not in rose
    assert "did not change" in _finetuning(0.0346, 0.0346)


def _zero_shot_rows(maft_unseen, maft_hiou):
    return [{"classifier": "frozen CLIP, mask & crop", "hiou": 20.0, "miou_unseen": 10.0, "mask_awareness": 0.2},
            {"classifier": "frozen IP-CLIP", "hiou": 25.0, "miou_unseen": 12.0, "mask_awareness": 0.3},
            {"classifier": "MAFT IP-CLIP", "hiou": maft_hiou, "miou_unseen": maft_unseen, "mask_awareness": 0.5}]


def test_zero_shot_says_whether_mafts_gain_appeared():
    up = captions.zero_shot({"clip_only": _zero_shot_rows(18.0, 30.0)})
    assert "The paper's effect appears" in up and "higher by 5.0 points" in up and ", as in the paper." in up
    down = captions.zero_shot({"clip_only": _zero_shot_rows(8.0, 15.0)})
    assert "does not appear here: the unseen classes got worse" in down
    assert "lower by 5.0 points, the reverse of the paper's Table 4a" in down
    assert "The paper's effect appears" not in down
    level = captions.zero_shot({"clip_only": _zero_shot_rows(12.0, 25.0)})
    assert "left the unseen classes where they were" in level


def _ablation(maft_hiou, variant_hiou, std, seeds=(0, 1, 2)):
    return {"seeds": list(seeds), "summary": [
        {"variant": "maft", "hiou": maft_hiou, "hiou_std": std, "miou_unseen": 10.0},
        {"variant": "no_distill", "hiou": variant_hiou, "hiou_std": std, "miou_unseen": 9.0}]}


def test_ablations_judge_each_variant_against_the_seed_spread():
    below = captions.ablations(_ablation(30.0, 25.0, 1.0))
    assert "-5.0, below MAFT, as in the paper's Table 4" in below
    above = captions.ablations(_ablation(25.0, 30.0, 1.0))
    assert "+5.0, above MAFT, unlike the paper's Table 4" in above
    within = captions.ablations(_ablation(30.0, 28.0, 3.0))
    assert "within the seed spread" in within and "below MAFT" not in within
    one_seed = captions.ablations(_ablation(30.0, 28.0, 0.0, seeds=[0]))
    assert "With one seed there is no spread" in one_seed and "below MAFT" in one_seed


def _story(crop, frozen, maft, std, seeds=3):
    def entry(h):
        return {"hiou": h, "miou_unseen": h / 2}
    mean = {"crop": entry(crop), "frozen": entry(frozen), "maft": entry(maft), "ma_only": entry(maft - 1),
            "start_layer": []}
    spread = {name: {"hiou": std, "miou_unseen": std} for name in ("crop", "frozen", "maft", "ma_only")}
    return {"mean": mean, "std": spread, "per_seed": {s: {} for s in range(seeds)},
            "proposals": {"test": "segments"}, "context": []}


def test_story_says_whether_the_table_4a_order_holds_beyond_the_spread():
    holds = captions.story(_story(20.0, 25.0, 32.0, 1.0))
    assert "The paper's order holds" in holds
    reversed_ = captions.story(_story(20.0, 25.0, 22.0, 1.0))
    assert "does not hold here: MAFT is 3.0 points below frozen IP-CLIP" in reversed_
    within = captions.story(_story(20.0, 25.0, 26.0, 2.0))  # MAFT above, but by less than the spread
    assert "does not hold here" in within
    checks = checklist.story_checks(_story(20.0, 25.0, 26.0, 2.0))
    maft_check = next(c for c in checks if c.claim.startswith("MAFT beats"))
    assert maft_check.passed is False and "within it" in maft_check.detail


def _stats(maft_whole, maft_poor):
    return {"proposals": 6, "frozen_top1": 3, "maft_top1": 4, "frozen_whole": 0.40, "frozen_poor": 0.35,
            "maft_whole": maft_whole, "maft_poor": maft_poor}


def test_visualizations_say_whether_mafts_gap_widened():
    wider = captions.visualizations(_stats(0.60, 0.20))
    assert "a gap of +0.40" in wider and "MAFT widened the gap" in wider
    narrower = captions.visualizations(_stats(0.30, 0.32))
    assert "a gap of -0.02" in narrower and "did not widen the gap" in narrower
    assert "cannot be compared" in captions.visualizations(_stats(float("nan"), 0.2))


def test_sam_proposals_say_whether_mafts_gain_appeared():
    def rows(maft):
        return {"rows": [{"classifier": "SAM + frozen IP-CLIP", "hiou": 30.0, "miou_unseen": 20.0},
                         {"classifier": "SAM + MAFT", "hiou": maft, "miou_unseen": 25.0}]}
    assert "also helps on SAM's proposals, as in the paper's Table 5" in captions.sam_proposals(rows(35.0))
    assert "worse than frozen IP-CLIP, unlike the paper's Table 5" in captions.sam_proposals(rows(25.0))
    assert "Nothing was measured here: no SAM" in captions.sam_proposals(None, "no SAM")


def test_story_cosine_sentence_names_a_plateau_and_the_direction():
    def rows(*pairs):
        return [{"start_layer": layer, "cosine_to_image": value} for layer, value in pairs]

    plateau = captions._cosine_sentence(rows((0, -0.07), (4, -0.07), (8, -0.06), (12, 1.0)))
    assert plateau == ("The cosine between a proposal's embedding and the whole image's stays at -0.07 (within 0.02) "
                       "from L = 0 to L = 8, then rises to 1.00 at L = 12: the later the masks start after L = 8, "
                       "the more every proposal is described as the whole scene.")
    rising = captions._cosine_sentence(rows((0, 0.2), (4, 0.5), (12, 1.0)))
    assert "rises from 0.20 at L = 0 to 1.00 at L = 12: the later the masks start, the more" in rising
    flat = captions._cosine_sentence(rows((0, 0.5), (12, 0.51)))
    assert "stays at 0.50 (within 0.02) from L = 0 to L = 12: where the masks start does not change" in flat
    both_ways = captions._cosine_sentence(rows((0, 0.5), (4, 0.9), (8, 0.51)))
    assert "moves up and down with L, between 0.50 and 0.90 for L = 0 to 8" in both_ways and "rises" not in both_ways
    falling = captions._cosine_sentence(rows((0, 0.9), (12, 0.1)))
    assert "falls from 0.90 at L = 0 to 0.10 at L = 12: the later the masks start, the less" in falling


def test_stated_gaps_equal_the_difference_of_the_printed_numbers():
    """38.74 and 38.36 print as 38.7 and 38.4: the caption says 0.3, which a reader can check, not 0.4."""
    assert captions._compare(38.74, 38.36, " points") == "higher by 0.3 points"
    assert captions._points(37.44, 38.36) == "1.0 points below"  # printed 37.4 and 38.4
    text = captions.visualizations({"proposals": 12, "frozen_top1": 10, "maft_top1": 8, "frozen_whole": 0.9004,
                                    "frozen_poor": 0.7451, "maft_whole": 0.6449, "maft_poor": 0.4251})
    assert "0.90 and the poorer proposals (parts, background, merges) 0.75 on average, a gap of +0.15" in text
    assert "0.64 and 0.43, a gap of +0.21" in text  # unrounded: 0.2198, which would print +0.22
    check = checklist.visualization_checks({"proposals": 12, "frozen_top1": 10, "maft_top1": 8, "frozen_whole": 0.9004,
                                            "frozen_poor": 0.7451, "maft_whole": 0.6449, "maft_poor": 0.4251})[0]
    assert check.detail == "whole-minus-poor score gap +0.21 (MAFT) vs +0.15 (frozen)"  # the caption's gaps
