"""The paper's numbers as data: every transcribed cell is checked against the paper text itself (the
tables are parsed here from maft-paper.txt, so a typo in paper_results.yaml fails), and the
"paper | measured | difference" arithmetic."""
from __future__ import annotations

import re

import pytest

from maft.studies.paper_results import compare, comparison_markdown, load_paper_results, paper_rows, paper_value, tables
from maft.utils.paths import REPO_ROOT

PAPER_DIR = REPO_ROOT.parent / "shared" / "paper"
# where each table's rows start in the paper text
ANCHORS = {"1": "Table 1:", "2": "Table 2:", "3": "Table 3:", "5a": "(a) Results in zero-shot segmentation.",
           "5b": "(b) Results in open-vocabulary segmentation."}
NUMBER = re.compile(r"\d+\.\d+")


def _paper_text(name: str) -> str:
    path = PAPER_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (the shared paper folder of the project)")
    return path.read_text()


def _is_row(cells: list[str]) -> bool:
    values = [c.strip() for c in cells[1:] if c.strip()]
    return bool(cells[0].strip()) and bool(values) and all(v == "-" or NUMBER.search(v) for v in values)


def printed_table(key: str) -> list[tuple[str, list[float | None], list[float | None]]]:
    """(row name without spaces, values, printed gains) of a table as the paper text prints it."""
    lines = _paper_text("maft-paper.txt").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(ANCHORS[key]))
    rows, started = [], False
    for line in lines[start + 1:]:
        cells = line.split("\t")
        if not line.strip():
            if started:
                break
            continue
        if _is_row(cells):
            started = True
            numbers = [NUMBER.findall(c) if c.strip() != "-" else [] for c in cells[1:] if c.strip()]
            rows.append((cells[0].replace(" ", ""), [float(n[0]) if n else None for n in numbers],
                         [float(n[1]) if len(n) > 1 else None for n in numbers]))
    return rows


def _printed_name(row: dict) -> str:
    return (row["method"] + (f"[{row['cite']}]" if row.get("cite") else "")).replace(" ", "")


@pytest.mark.parametrize("key", ["1", "2", "3", "5a", "5b"])
def test_transcription_matches_the_paper_text(key):
    spec = load_paper_results()["tables"][key]
    printed = printed_table(key)
    assert [name for name, _, _ in printed] == [_printed_name(r) for r in spec["rows"]]
    for (name, values, _), row in zip(printed, spec["rows"]):
        assert row["values"] == values, name


# Table 4's sub-tables share one block of the text; each row starts with its name (the text writes
# "+ $ft (\mathcal{L}_{ma})$" for "+ ft (L_ma)", "500 iters", "8" ...), values follow in column order.
TABLE4_ROW_STARTS = {"FreeSeg": "FreeSeg\t", "+ IP-CLIP": "+ IP-CLIP\t", "+ ft (L_ma)": "+ $ft (\\mathcal{L}_{ma})$",
                     "+ ft (L_ma + L_dis)": "+ $ft \\left(\\mathcal{L}_{ma} + \\mathcal{L}_{dis}\\right)$"}


@pytest.mark.parametrize("key", ["4a", "4c", "4e"])
def test_table4_transcription_matches_the_paper_text(key):
    lines = _paper_text("maft-paper.txt").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Table 4:"))
    block = lines[start:start + 70]
    spec = load_paper_results()["tables"][key]
    for row in spec["rows"]:
        prefix = TABLE4_ROW_STARTS.get(row["method"], row["method"] + "\t")
        # 4a's "FreeSeg" row and the L rows "0".."10" are unique at the start of a line in this block
        found = [line for line in block if line.startswith(prefix)]
        if key == "4e":  # the start-layer rows follow the "(e)" caption; "0".."10" appear nowhere else first
            tail = block[next(i for i, line in enumerate(block) if line.startswith("(e)")):]
            found = [line for line in tail if line.split("\t")[0] == row["method"]]
        assert found, f"{key}: row {row['method']!r} not found"
        printed = [float(n) for n in NUMBER.findall(found[0].split("\t", 1)[1])][::2] if key == "4a" and \
            row["method"] != "FreeSeg" else [float(n) for n in NUMBER.findall(found[0].split("\t", 1)[1])]
        assert printed[:len(row["values"])] == row["values"], (key, row["method"], printed)


# Cells where the paper's own printed numbers disagree with each other (as printed, not our typos).
GAIN_MISPRINTS = {("2", "ZegFormer+MAFT", "COCO-Stuff", "mIoU^u"),  # 31.6 over 23.0 printed +7.6
                  ("2", "ZSSeg+MAFT", "COCO-Stuff", "mIoU^u")}  # 35.9 over 27.4 printed +8.3
HIOU_MISPRINTS = {("1", "STRICT", "Pascal-VOC"),  # 73.3 printed; 82.7 / 35.6 give 49.8
                  ("1", "ZSSeg", "Pascal-VOC")}  # 69.4 printed; 86.6 / 59.7 give 70.7


def test_printed_gains_follow_from_the_transcribed_values():
    """Each "+ MAFT" row prints its gain over the row above; the values reproduce it to the paper's
    rounding (its gains come from unrounded numbers, so within 0.1), except the paper's own misprints.
    The text loses some signs, so magnitudes are compared."""
    mismatches, checked = set(), 0
    for key in ("1", "2", "3", "5a", "5b"):
        spec = load_paper_results()["tables"][key]
        for position, (name, _, gains) in enumerate(printed_table(key)):
            if "+MAFT" not in name:
                assert not any(gains), name
                continue
            ours, base = spec["rows"][position]["values"], spec["rows"][position - 1]["values"]
            for (dataset, metric), gain, value, before in zip(spec["columns"], gains, ours, base):
                if gain is not None:
                    checked += 1
                    if abs(abs(value - before) - gain) > 0.1 + 1e-9:
                        mismatches.add((key, name, dataset, metric))
    assert checked == 3 * 9 + 3 * 9 + 5 + 8 + 5 and mismatches == GAIN_MISPRINTS  # every gain the tables print


def test_hiou_is_the_harmonic_mean_of_the_transcribed_values():
    """A typo in any of mIoU^s, mIoU^u or hIoU breaks hIoU = 2su / (s + u) beyond rounding (0.16 for
    values rounded to 0.1), except where the paper itself prints an inconsistent hIoU."""
    mismatches, checked = set(), 0
    for key, spec in load_paper_results()["tables"].items():
        for row in spec["rows"]:
            cells = dict(zip(map(tuple, spec["columns"]), row["values"]))
            for dataset in spec["datasets"]:
                seen, unseen, hiou = (cells.get((dataset, m)) for m in ("mIoU^s", "mIoU^u", "hIoU"))
                if None not in (seen, unseen, hiou):
                    checked += 1
                    if abs(2 * seen * unseen / (seen + unseen) - hiou) > 0.16:
                        mismatches.add((key, row["method"], dataset))
    assert checked == (10 * 3 - 4) + 6 * 3 + 4 + 6 + 2 * 2 and mismatches == HIOU_MISPRINTS  # Tables 1, 2, 4a, 4e, 5a


def test_released_numbers_match_the_notes():
    notes = _paper_text("notes.md")
    for method, marker in (("MAFT-ViT-B", "ViT-B/16"), ("MAFT-ViT-L", "ViT-L/14")):
        found = re.search(re.escape(marker) + r" ((?:\d+\.\d+ / ){4}\d+\.\d+)", notes)
        printed = [float(v) for v in found.group(1).split(" / ")]
        assert [paper_value("released", method, d, "mIoU") for d in
                ("A-847", "A-150", "PC-459", "PC-59", "PAS-20")] == printed


def test_cells_by_paper_name_or_maft_dataset():
    assert tables() == ["1", "2", "3", "4a", "4c", "4e", "5a", "5b", "released"]
    assert paper_value("2", "FreeSeg + MAFT", "Pascal-VOC", "mIoU^u") == 84.7
    assert paper_value("2", "FreeSeg + MAFT", "voc20", "mIoU^u") == 84.7
    assert paper_value("1", "FreeSeg + MAFT", "ade847", "hIoU") == 12.4
    assert paper_value("5a", "SAM + MAFT", "COCO-Stuff", "mIoU") == 44.1
    assert paper_value("3", "SPNet", "A-847", "mIoU") is None
    assert paper_rows("3")[4] == {"method": "OpenSeg*", "A-847 mIoU": 8.8, "A-150 mIoU": 28.6, "PC-459 mIoU": 12.2,
                                  "PC-59 mIoU": 48.2, "PAS-20 mIoU": 72.2}


def test_paper_measured_difference():
    measured = [
        {"table": "2", "method": "FreeSeg + MAFT", "dataset": "voc20", "miou_seen": 88.25, "miou_unseen": 86.0,
         "hiou": None, "miou": 70.0, "n_images": 1449},
        {"table": "released", "method": "MAFT-ViT-B", "dataset": "ade150", "miou": 30.0, "label": "ours, GT"},
        {"table": "Table 3", "method": "SPNet", "dataset": "A-847", "miou": 5.0},
    ]
    rows = compare(measured)
    assert [(r["table"], r["dataset"], r["metric"]) for r in rows] == [
        ("2", "Pascal-VOC", "mIoU^s"), ("2", "Pascal-VOC", "mIoU^u"), ("2", "Pascal-VOC", "hIoU"),
        ("released", "A-150", "mIoU"), ("3", "A-847", "mIoU")]
    assert [r["paper"] for r in rows] == [90.4, 84.7, 87.5, 29.14, None]
    assert rows[0]["difference"] == pytest.approx(-2.15)
    assert rows[1]["difference"] == pytest.approx(1.3)
    assert rows[2]["difference"] is None and rows[2]["measured"] is None  # not measured
    assert rows[3]["difference"] == pytest.approx(0.86) and rows[3]["label"] == "ours, GT"
    assert rows[4]["difference"] is None and rows[4]["measured"] == 5.0  # the paper prints '-'
    text = comparison_markdown(rows)
    assert text.splitlines()[0] == "| table | method | dataset | metric | paper | measured | difference | label |"
    assert "| Table 2 | FreeSeg + MAFT | Pascal-VOC | mIoU^s | 90.4 | 88.25 | -2.15 | - |" in text
    assert "| Table 2 | FreeSeg + MAFT | Pascal-VOC | mIoU^u | 84.7 | 86.00 | +1.30 | - |" in text
    assert "| released | MAFT-ViT-B | A-150 | mIoU | 29.14 | 30.00 | +0.86 | ours, GT |" in text
    assert "| Table 3 | SPNet | A-847 | mIoU | - | 5.00 | - | - |" in text


def test_bad_measured_rows_are_named():
    with pytest.raises(ValueError, match="unknown paper table '4'"):
        compare([{"table": "4", "method": "FreeSeg", "dataset": "voc20", "miou": 1.0}])
    with pytest.raises(ValueError, match="has no row 'FreeSeg\\+MAFT'; rows: 'ZegFormer', 'ZegFormer \\+ MAFT'"):
        compare([{"table": "2", "method": "FreeSeg+MAFT", "dataset": "voc20", "miou_seen": 1.0}])
    with pytest.raises(ValueError, match=r"dataset 'pc59' is not in paper table 2; its datasets: COCO-Stuff"):
        compare([{"table": "2", "method": "FreeSeg", "dataset": "pc59", "miou_seen": 1.0}])
    with pytest.raises(ValueError, match=r"none of the metrics table 2 reports there: \['hiou', 'miou_seen'"):
        compare([{"table": "2", "method": "FreeSeg", "dataset": "voc20", "miou": 1.0}])
    with pytest.raises(ValueError, match=r"needs \['method'\]"):
        compare([{"table": "2", "dataset": "voc20", "miou": 1.0}])
