"""The run report: each notebook leaves a Markdown section; the runner joins them in order.

Sections live in ``<output_dir>/report/<key>.md`` so a notebook re-run replaces only its own part,
and metrics JSON in ``<output_dir>/metrics/<key>.json`` (no timings there: a re-run with the same seed
must reproduce them byte for byte).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..utils.paths import write_json


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                   digits: int = 2) -> str:
    """A GitHub Markdown table of ``rows`` (dicts); floats rounded to ``digits``; None shown as '-'."""
    if not rows:
        return "_(no rows)_\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _format_cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_metrics(output_dir: str | Path, key: str, metrics: dict[str, Any]) -> Path:
    """``metrics/<key>.json`` with sorted keys, so identical numbers give identical files."""
    return write_json(metrics, Path(output_dir) / "metrics" / f"{key}.json", sort_keys=True)


def write_section(output_dir: str | Path, key: str, title: str, body: str,
                  figures: Iterable[str | Path] = ()) -> Path:
    """``report/<key>.md``: a heading, Markdown body and figures (paths relative to ``output_dir``)."""
    output_dir = Path(output_dir)
    parts = [f"## {title}\n", body.rstrip() + "\n"]
    for figure in figures:
        rel = Path(figure).resolve().relative_to(output_dir.resolve())
        parts.append(f"![{rel.stem}]({rel.as_posix()})\n")
    path = output_dir / "report" / f"{key}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path


def build_report(output_dir: str | Path, title: str, preamble: str = "") -> Path:
    """Join every ``report/*.md`` section (sorted by key) into ``<output_dir>/report.md``."""
    output_dir = Path(output_dir)
    sections = sorted((output_dir / "report").glob("*.md"))
    text = [f"# {title}\n", preamble.rstrip() + "\n" if preamble else ""]
    text += [section.read_text() for section in sections]
    path = output_dir / "report.md"
    path.write_text("\n".join(t for t in text if t))
    return path
