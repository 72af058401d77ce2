"""The paper's numbers beside ours: Tables 1, 2, 3 and 5 and the authors' released models, as data.

The numbers live in ``maft/assets/paper_results.yaml`` (transcribed from the paper; sources there).
:func:`compare` takes measured rows (``maft eval`` metrics plus which paper row they reproduce) and
returns one "paper | measured | difference" row per metric; :func:`comparison_markdown` renders them.

A measured row is a mapping with ``table`` ("1", "2", "3", "5a", "5b" or "released"), ``method`` (the
paper's row name, e.g. "FreeSeg + MAFT"), ``dataset`` (a paper column such as "Pascal-VOC" or the maft
dataset that reproduces it, e.g. "voc20"), and metrics under maft's keys (``miou``, ``miou_seen``,
``miou_unseen``, ``hiou``; percentages), e.g. ``{**metrics_json, "table": "2", "method": "FreeSeg + MAFT"}``.
An optional ``label`` says what was measured (e.g. "ViT-B/16, GT proposals").
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..notebook.report import markdown_table
from ..utils.paths import ASSETS_DIR

RESULTS_FILE = ASSETS_DIR / "paper_results.yaml"
COLUMNS = ("table", "method", "dataset", "metric", "paper", "measured", "difference")

__all__ = ["RESULTS_FILE", "load_paper_results", "tables", "paper_rows", "paper_value", "compare",
           "comparison_markdown"]


@functools.lru_cache(maxsize=None)
def _load(path: str) -> dict:
    with open(path) as handle:
        data = yaml.safe_load(handle)
    metric_keys = data.get("metrics") or {}
    for key, table in (data.get("tables") or {}).items():
        where = f"{path}: table {key}"
        columns = [tuple(c) for c in table["columns"]]
        for dataset, metric in columns:
            if dataset not in table["datasets"]:
                raise ValueError(f"{where}: column dataset {dataset!r} has no entry in 'datasets'")
            if metric not in metric_keys:
                raise ValueError(f"{where}: metric {metric!r} is not one of {sorted(metric_keys)}")
        names = [row["method"] for row in table["rows"]]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: a method is listed twice ({names})")
        for row in table["rows"]:
            if len(row["values"]) != len(columns):
                raise ValueError(f"{where}: row {row['method']!r} has {len(row['values'])} values for "
                                 f"{len(columns)} columns")
            bad = [v for v in row["values"] if v is not None and not isinstance(v, (int, float))]
            if bad:
                raise ValueError(f"{where}: row {row['method']!r} has non-numbers {bad}")
    return data


def load_paper_results(path: str | Path | None = None) -> dict:
    """The parsed and checked YAML (``metrics``, ``tables``); cached per file."""
    return _load(str(Path(path or RESULTS_FILE).resolve()))


def tables() -> list[str]:
    """Keys of the transcribed tables: '1', '2', '3', '4a', '4c', '4e', '5a', '5b', 'released'."""
    return list(load_paper_results()["tables"])


def _table(key: str) -> dict:
    known = load_paper_results()["tables"]
    key = str(key).removeprefix("Table ").strip()
    if key not in known:
        raise ValueError(f"unknown paper table {key!r}; transcribed: {', '.join(known)}")
    return known[key]


def paper_rows(table: str) -> list[dict[str, Any]]:
    """One dict per row of ``table``: ``method`` and ``"<dataset> <metric>"`` -> value (None for '-')."""
    spec = _table(table)
    return [{"method": row["method"], **{f"{d} {m}": v for (d, m), v in zip(spec["columns"], row["values"])}}
            for row in spec["rows"]]


def _column_dataset(spec: dict, dataset: str, table: str) -> str:
    if dataset in spec["datasets"]:
        return dataset
    matches = [paper for paper, ours in spec["datasets"].items() if ours == dataset]
    if not matches:
        raise ValueError(f"dataset {dataset!r} is not in paper table {table}; its datasets: "
                         + ", ".join(f"{p} ({o})" for p, o in spec["datasets"].items()))
    return matches[0]


def _row(spec: dict, method: str, table: str) -> dict:
    for row in spec["rows"]:
        if row["method"] == method:
            return row
    raise ValueError(f"paper table {table} has no row {method!r}; rows: "
                     + ", ".join(repr(r["method"]) for r in spec["rows"]))


def paper_value(table: str, method: str, dataset: str, metric: str) -> float | None:
    """One cell: e.g. ``paper_value("2", "FreeSeg + MAFT", "voc20", "mIoU^u")`` -> 84.7 (None for '-')."""
    spec = _table(table)
    column = (_column_dataset(spec, dataset, table), metric)
    columns = [tuple(c) for c in spec["columns"]]
    if column not in columns:
        raise ValueError(f"paper table {table} has no column {column[0]} {metric}; columns: "
                         + ", ".join(f"{d} {m}" for d, m in columns))
    return _row(spec, method, table)["values"][columns.index(column)]


def compare(measured: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """"paper | measured | difference" rows: one per metric of each measured row that the paper's table
    has for that dataset. ``difference`` = measured - paper (None where the paper prints '-' or the
    measured value is None). Errors name the unknown table, row or dataset."""
    metric_keys = load_paper_results()["metrics"]
    out = []
    for index, entry in enumerate(measured):
        missing = [k for k in ("table", "method", "dataset") if k not in entry]
        if missing:
            raise ValueError(f"measured[{index}] needs {missing} (which paper row and dataset it reproduces)")
        table = str(entry["table"]).removeprefix("Table ").strip()
        spec = _table(table)
        row = _row(spec, entry["method"], table)
        dataset = _column_dataset(spec, str(entry["dataset"]), table)
        found = 0
        for (column_dataset, metric), value in zip(spec["columns"], row["values"]):
            key = metric_keys[metric]
            if column_dataset != dataset or key not in entry:
                continue
            found += 1
            ours = entry[key]
            ours = None if ours is None or (isinstance(ours, float) and math.isnan(ours)) else float(ours)
            difference = None if value is None or ours is None else ours - value
            result = {"table": table, "method": row["method"], "dataset": dataset, "metric": metric,
                      "paper": value, "measured": ours, "difference": difference}
            if entry.get("label"):
                result["label"] = str(entry["label"])
            out.append(result)
        if not found:
            wanted = sorted({metric_keys[m] for d, m in spec["columns"] if d == dataset})
            raise ValueError(f"measured[{index}] ({entry['method']!r} on {dataset}) has none of the metrics "
                             f"table {table} reports there: {wanted}")
    return out


def _printed(value: float | None) -> str | None:
    # The paper's own digits (36.4, 10.25), not re-rounded to the table's precision.
    return None if value is None else repr(float(value))


def comparison_markdown(rows: Sequence[Mapping[str, Any]], digits: int = 2) -> str:
    """A Markdown table of :func:`compare`'s rows; the difference carries its sign."""
    shown = []
    for row in rows:
        difference = row.get("difference")
        shown.append({**row, "table": f"Table {row['table']}" if row["table"] != "released" else "released",
                      "paper": _printed(row.get("paper")),
                      "difference": None if difference is None else f"{difference:+.{digits}f}"})
    columns = list(COLUMNS) + (["label"] if any(r.get("label") for r in rows) else [])
    return markdown_table(shown, columns=columns, digits=digits)


def measured_beside_paper(paper: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]],
                          transfer_rows: Sequence[Mapping[str, Any]] = (), dataset: str | None = None
                          ) -> list[dict[str, Any]]:
    """:func:`compare`'s rows for notebook 04's results. ``paper`` maps one of our rows, by its
    ``classifier`` label (a transfer row: ``"<transfer name> / <label>"``), to the paper row it
    reproduces: ``{table, method, dataset?}`` (``dataset`` defaults to the transfer's or ``dataset``).
    A label the notebook did not produce is an error naming it and the labels there are."""
    ours = {row["classifier"]: (row, dataset) for row in rows}
    ours.update({f"{row['transfer']} / {row['classifier']}": (row, row.get("dataset") or row["transfer"])
                 for row in transfer_rows})
    measured = []
    for label, target in paper.items():
        if label not in ours:
            raise ValueError(f"paper: no measured row {label!r}; rows: {', '.join(ours)}")
        row, row_dataset = ours[label]
        if not isinstance(target, Mapping) or not {"table", "method"} <= set(target):
            raise ValueError(f"paper[{label!r}] must be a mapping with table and method, got {target!r}")
        measured.append({**row, "table": target["table"], "method": target["method"],
                         "dataset": target.get("dataset") or row_dataset, "label": label})
    return compare(measured)
