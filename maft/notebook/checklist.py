"""What you should see: the paper's claims each notebook tests, checked against the run's own numbers.

Each ``*_checks`` function takes what a notebook measured and returns :class:`Check` lines: the claim,
whether this run shows it (True / False; None when it could not be measured), and the numbers
("MAFT ranks proposals by IoU better than frozen IP-CLIP: rho 0.64 > 0.53"). A failed check never
stops a run: the notebook shows it with a cross and writes it to ``<output_dir>/checklist/<key>.json``;
the series runner gathers those into ``<output_dir>/checklist.json`` and the report's table.

The thresholds are the interpreters' (:mod:`maft.notebook.captions`), so a checklist line and the closing
sentence never disagree.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from ..utils.paths import write_json
from .captions import EQUIVALENCE_TOLERANCE, INSENSITIVE_RHO, printed_gap

MARK = {True: "✓", False: "✗", None: "–"}


@dataclass
class Check:
    claim: str
    passed: bool | None
    detail: str

    def line(self) -> str:
        return f"{MARK[self.passed]} {self.claim}: {self.detail}"


def _num(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _greater(claim: str, a, b, name_a: str, name_b: str, what: str, digits: int = 1,
             spread: float | None = None) -> Check:
    """``claim`` holds when a > b (by more than ``spread``, the larger seed std, when given)."""
    if a is None or b is None:
        return Check(claim, None, f"{what} not measured")
    margin = spread or 0.0
    passed = a - b > margin
    sign = ">" if a > b else ("<" if a < b else "=")
    while a != b and _num(a, digits) == _num(b, digits) and digits < 6:
        digits += 1  # never print "0.39 < 0.39": show as many digits as tell the two apart
    detail = f"{what} {_num(a, digits)} {sign} {_num(b, digits)} ({name_a} vs {name_b})"
    if spread:
        detail += f", seed spread {_num(spread, digits)}" + ("" if passed or a <= b else ": within it")
    return Check(claim, passed, detail)


def _row(rows: Sequence[dict], name: str, key: str = "classifier") -> dict | None:
    return next((r for r in rows if r.get(key) == name), None)


# ------------------------------------------------------------------------------------------ per notebook
def setup_checks(metrics: dict) -> list[Check]:
    counts = metrics["images_per_class"]
    unseen = metrics["unseen"]
    fewest = min(unseen, key=lambda name: counts.get(name, 0)) if unseen else None
    return [
        Check("some classes are held out of fine-tuning (zero-shot split)", bool(unseen),
              f"{len(unseen)} unseen of {metrics['classes']} classes"),
        Check("every unseen class appears in the evaluation images", None if fewest is None else counts.get(fewest, 0) > 0,
              "no unseen class" if fewest is None else f"rarest unseen class {fewest}: {counts.get(fewest, 0)} images"),
    ]


def insensitivity_checks(rows: Sequence[dict]) -> list[Check]:
    checks = []
    for row in rows:
        rho = row.get("mask_awareness")
        checks.append(Check(f"{row['classifier']} is insensitive to the proposal (Fig. 1)",
                            None if rho is None else rho < INSENSITIVE_RHO,
                            f"rho {_num(rho, 2)} {'<' if rho is not None and rho < INSENSITIVE_RHO else '>='} "
                            f"{INSENSITIVE_RHO}; a poor proposal scores at least as high as the whole object in "
                            f"{_num(None if row.get('confused_rate') is None else 100 * row['confused_rate'], 0)}% "
                            "of regions"))
    return checks


def ip_clip_checks(equivalence: dict, ratios: Sequence[dict]) -> list[Check]:
    diff = equivalence["max_abs_diff_batched_vs_one_by_one"]
    checks = [Check("one IP-CLIP pass equals one pass per proposal (eq. 2)", diff < EQUIVALENCE_TOLERANCE,
                    f"max |difference| {diff:.1e} {'<' if diff < EQUIVALENCE_TOLERANCE else '>='} "
                    f"{EQUIVALENCE_TOLERANCE:.0e}")]
    for r in ratios:
        crop = r.get("crop/ip_clip GFLOPs")
        if crop is not None:
            checks.append(Check(f"IP-CLIP costs fewer FLOPs than crop-and-classify ({r['model']}, "
                                f"N = {r['n_proposals']})", crop > 1, f"crop/IP-CLIP GFLOPs {crop:.2f}"))
    return checks


def finetuning_checks(log: Sequence[dict], final: dict) -> list[Check]:
    steps = [row for row in log if "step" in row and "loss_ma" in row]
    if not steps:
        return [Check("fine-tuning lowers the mask-aware loss", None, "no step logged")]
    first, last = steps[0]["loss_ma"], final["loss_ma"]
    return [Check("fine-tuning lowers the mask-aware loss", last < first,
                  f"L_ma {first:.4f} -> {last:.4f} over {len(steps)} logged steps")]


def zero_shot_checks(rows: Sequence[dict]) -> list[Check]:
    crop = _row(rows, "frozen CLIP, mask & crop") or {}
    frozen = _row(rows, "frozen IP-CLIP") or {}
    maft = _row(rows, "MAFT IP-CLIP") or {}
    return [
        _greater("MAFT ranks proposals by IoU better than frozen IP-CLIP", maft.get("mask_awareness"),
                 frozen.get("mask_awareness"), "MAFT", "frozen", "rho", digits=2),
        _greater("MAFT improves the unseen classes (Tables 1, 2)", maft.get("miou_unseen"),
                 frozen.get("miou_unseen"), "MAFT", "frozen IP-CLIP", "mIoU unseen"),
        _greater("MAFT improves hIoU over frozen IP-CLIP (Table 4a)", maft.get("hiou"), frozen.get("hiou"),
                 "MAFT", "frozen IP-CLIP", "hIoU"),
        _greater("MAFT beats frozen crop-and-classify (Table 4a)", maft.get("hiou"), crop.get("hiou"),
                 "MAFT", "crop", "hIoU"),
    ]


def story_checks(result: dict) -> list[Check]:
    """The world story (Table 4a order), judged against the seed spread when there are several seeds."""
    mean, std = result["mean"], result["std"]
    several = len(result.get("per_seed") or {}) > 1

    def spread(a, b):
        return max(std[a]["hiou"], std[b]["hiou"]) if several else None

    checks = [
        _greater("frozen IP-CLIP beats crop-and-classify (Table 4a)", mean["frozen"]["hiou"], mean["crop"]["hiou"],
                 "frozen IP-CLIP", "crop", "hIoU", spread=spread("frozen", "crop")),
        _greater("MAFT beats frozen IP-CLIP (Table 4a)", mean["maft"]["hiou"], mean["frozen"]["hiou"],
                 "MAFT", "frozen IP-CLIP", "hIoU", spread=spread("maft", "frozen")),
    ]
    if "ma_only" in mean:
        checks.append(_greater("self-distillation helps the unseen classes (Table 4a)", mean["maft"]["miou_unseen"],
                               mean["ma_only"]["miou_unseen"], "MAFT", "L_ma only", "mIoU unseen",
                               spread=max(std["maft"]["miou_unseen"], std["ma_only"]["miou_unseen"])
                               if several else None))
    return checks


def ablation_checks(metrics: dict) -> list[Check]:
    """Each variant of the profile against MAFT's own setting (the paper finds its setting best)."""
    rows = {r["variant"]: r for r in metrics["summary"]}
    base = rows.get("maft")
    if base is None:
        return []
    several = len(metrics["seeds"]) > 1
    return [_greater(f"MAFT's setting beats `{name}` (Table 4)", base.get("hiou"), row.get("hiou"), "MAFT", name,
                     "hIoU", spread=max(base.get("hiou_std") or 0.0, row.get("hiou_std") or 0.0) if several else None)
            for name, row in rows.items() if name != "maft"]


def visualization_checks(stats: dict) -> list[Check]:
    # the gaps notebook 06's closing paragraph prints (of its printed scores), judged as printed
    gap_frozen = printed_gap(stats["frozen_whole"], stats["frozen_poor"], 2)
    gap_maft = printed_gap(stats["maft_whole"], stats["maft_poor"], 2)
    measured = gap_frozen == gap_frozen and gap_maft == gap_maft  # NaN when a kind was not drawn
    return [
        Check("after MAFT the whole object beats poorer proposals by more (Figs. 3, 7)",
              gap_maft > gap_frozen if measured else None,
              f"whole-minus-poor score gap {gap_maft:+.2f} (MAFT) vs {gap_frozen:+.2f} (frozen)"),
        Check("MAFT names the true class of the drawn proposals at least as often", stats["maft_top1"]
              >= stats["frozen_top1"], f"top-1 correct {stats['maft_top1']} vs {stats['frozen_top1']} "
              f"of {stats['proposals']}"),
    ]


def sam_checks(metrics: dict | None, message: str | None = None) -> list[Check]:
    claim = "MAFT helps on SAM's proposals too (Table 5)"
    if metrics is None:  # skipped (no SAM weights): the claim stays on the list, unmeasured
        return [Check(claim, None, f"not measured: {message or 'SAM did not run'}")]
    rows = metrics["rows"]
    frozen, maft = _row(rows, "SAM + frozen IP-CLIP") or {}, _row(rows, "SAM + MAFT") or {}
    return [_greater(claim, maft.get("hiou"), frozen.get("hiou"), "SAM + MAFT", "SAM + frozen", "hIoU")]


# ------------------------------------------------------------------------------------------ files and tables
def record(output_dir: str | Path, key: str, checks: Sequence[Check]) -> str:
    """Write ``checklist/<key>.json`` and return the checklist as Markdown (for the notebook to show)."""
    path = Path(output_dir) / "checklist" / f"{key}.json"
    write_json([asdict(c) for c in checks], path, ensure_ascii=False)
    return markdown(checks)


def markdown(checks: Sequence[Check]) -> str:
    if not checks:
        return "**What you should see.** Nothing to check in this run (nothing was measured)."
    return "**What you should see.**\n\n" + "\n".join(f"- {c.line()}" for c in checks)


def gather(output_dir: str | Path, notebooks: Sequence[str]) -> dict[str, list[dict]]:
    """``{notebook stem: [check dicts]}`` in series order, from ``checklist/<NN>.json`` of ``notebooks``."""
    folder = Path(output_dir) / "checklist"
    gathered = {}
    for stem in notebooks:
        path = folder / f"{stem.split('_')[0]}.json"
        if path.is_file():
            gathered[stem] = json.loads(path.read_text(encoding="utf-8"))
    return gathered


def table(gathered: dict[str, list[dict]]) -> str:
    """One Markdown table: notebook, mark, claim, numbers."""
    lines = ["| notebook | | claim | measured |", "|---|---|---|---|"]
    for stem, checks in gathered.items():
        for c in checks:
            lines.append(f"| {stem.split('_')[0]} | {MARK[c['passed']]} | {c['claim']} | "
                         f"{_escape(c['detail'])} |")
    if len(lines) == 2:
        lines.append("| - | | no checks recorded | |")
    return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    """A table cell's text with its pipes escaped (``|`` would end the cell)."""
    return text.replace("|", "\\|")


def summary(gathered: dict[str, list[dict]]) -> str:
    passed = [c["passed"] for checks in gathered.values() for c in checks]
    return (f"{passed.count(True)} of {len(passed)} checks hold, {passed.count(False)} do not"
            + (f", {passed.count(None)} not measured" if None in passed else "") + ".")
