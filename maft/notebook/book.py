"""The HTML copies of a run as one book: ``index.html`` lists the series in order with each notebook's
header, and every page (the notebooks' HTML, then the report as the last page) gets previous / index /
next links and its own table of contents.

Everything is relative links between files of one folder, with figures already embedded
(:mod:`maft.notebook.html_export`), so ``outputs/<profile>/`` can be zipped and handed out as it is. Navigation is
inserted between markers, so building the book again (after ``maft notebooks --only 03``) replaces it
instead of adding a second one.
"""
from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Sequence

from . import guide

NAV_BEGIN, NAV_END = "<!-- maft-book: navigation -->", "<!-- maft-book: end -->"
_NAV_BLOCK = re.compile(re.escape(NAV_BEGIN) + r".*?" + re.escape(NAV_END), flags=re.S)
_HEADING = re.compile(r"<h([1-3])\b([^>]*)>(.*?)</h\1>", flags=re.S)
_ID = re.compile(r'\bid="([^"]+)"')
_STYLE = """<style>
.maft-book-nav { display: flex; justify-content: space-between; gap: 1em; margin: 0.8em 0; padding: 0.5em 0.8em;
  background: #f3f5f8; border: 1px solid #d8dde5; border-radius: 4px; font: 14px system-ui, sans-serif; }
.maft-book-toc { margin: 0.5em 0 1em; padding: 0.4em 0.8em; border-left: 3px solid #d8dde5;
  font: 14px system-ui, sans-serif; }
.maft-book-toc ul { margin: 0.2em 0; padding-left: 1.2em; }
</style>"""


def _text(fragment: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", fragment)).replace("¶", "").strip()


def _slug(text: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "section"
    slug, n = base, 1
    while slug in taken:
        n += 1
        slug = f"{base}-{n}"
    taken.add(slug)
    return slug


def with_heading_ids(body: str) -> tuple[str, list[tuple[int, str, str]]]:
    """``body`` with an id on every h1-h3 that lacks one, and the headings as (level, id, text)."""
    taken = set(_ID.findall(body))
    headings = []

    def visit(match):
        level, attrs, inner = int(match.group(1)), match.group(2), match.group(3)
        found = _ID.search(attrs)
        ident = found.group(1) if found else _slug(_text(inner), taken)
        headings.append((level, ident, _text(inner)))
        if found:
            return match.group(0)
        return f'<h{level}{attrs} id="{ident}">{inner}</h{level}>'

    return _HEADING.sub(visit, body), headings


def _nav(previous: tuple[str, str] | None, following: tuple[str, str] | None, position: str) -> str:
    left = (f'<a class="maft-book-prev" href="{html.escape(previous[0])}">&larr; {html.escape(previous[1])}</a>'
            if previous else "<span></span>")
    right = (f'<a class="maft-book-next" href="{html.escape(following[0])}">{html.escape(following[1])} &rarr;</a>'
             if following else "<span></span>")
    return (f'<nav class="maft-book-nav" data-position="{position}">{left}'
            f'<a class="maft-book-index" href="index.html">contents</a>{right}</nav>')


def _toc(headings: Sequence[tuple[int, str, str]]) -> str:
    # a class on the links: the report's own links (to the notebooks) stay plain <a href=...>
    items = [f'<li style="margin-left:{(level - 2) * 1.2}em"><a class="maft-book-toc-link" '
             f'href="#{html.escape(ident)}">{html.escape(text)}</a></li>'
             for level, ident, text in headings if level >= 2]
    if not items:
        return ""
    return f'<div class="maft-book-toc"><strong>On this page</strong><ul>{"".join(items)}</ul></div>'


def page_title(page: Path) -> str:
    """The page's first h1 (a notebook's title cell), else its file name."""
    found = re.search(r"<h1\b[^>]*>(.*?)</h1>", page.read_text(encoding="utf-8"), flags=re.S)
    return _text(found.group(1)) if found else page.stem


def add_navigation(page: Path, previous: tuple[str, str] | None, following: tuple[str, str] | None) -> None:
    """Insert (or replace) the navigation bars and the table of contents of one HTML page."""
    text = _NAV_BLOCK.sub("", page.read_text(encoding="utf-8"))
    text, headings = with_heading_ids(text)
    top = f"{NAV_BEGIN}{_STYLE}{_nav(previous, following, 'top')}{_toc(headings)}{NAV_END}"
    bottom = f"{NAV_BEGIN}{_nav(previous, following, 'bottom')}{NAV_END}"
    body = re.search(r"<body\b[^>]*>", text)
    if body is None or "</body>" not in text:
        raise ValueError(f"{page}: not an HTML page with a <body>")
    text = text[:body.end()] + "\n" + top + text[body.end():]
    end = text.rindex("</body>")
    text = text[:end] + bottom + "\n" + text[end:]
    page.write_text(text, encoding="utf-8")


def build_book(output_dir: str | Path, notebooks: Sequence[str], profile: str,
               checklist_summary: str | None = None) -> Path:
    """Link the HTML pages of ``notebooks`` (stems, in series order) found in ``output_dir`` and the
    report into a book; write and return ``index.html``."""
    out = Path(output_dir)
    pages = [out / f"{stem}.html" for stem in notebooks if (out / f"{stem}.html").is_file()]
    if (out / "report.html").is_file():
        pages.append(out / "report.html")
    if not pages:
        raise FileNotFoundError(f"{out}: no notebook HTML and no report.html to make a book of")
    titles = {page: page_title(page) for page in pages}
    for i, page in enumerate(pages):
        previous = (pages[i - 1].name, titles[pages[i - 1]]) if i > 0 else ("index.html", "contents")
        following = (pages[i + 1].name, titles[pages[i + 1]]) if i + 1 < len(pages) else None
        add_navigation(page, previous, following)
    entries = []
    for page in pages:
        if page.name == "report.html":
            about = "All sections, the checklist of the paper's claims and the run's parameters, on one page."
        else:
            about = guide.header_html(page.stem)
        entries.append(f'<li><h2><a href="{html.escape(page.name)}">{html.escape(titles[page])}</a></h2>'
                       f"<div>{about}</div></li>")
    first = pages[0].name
    index = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
             f"<title>MAFT notebook series: {html.escape(profile)}</title>\n{_STYLE}\n<style>"
             "body { max-width: 1000px; margin: 2em auto; padding: 0 1em; font: 15px/1.5 system-ui, sans-serif; }"
             " ol.maft-book-pages > li { margin-bottom: 1.2em; } table { border-collapse: collapse; }"
             " th, td { border: 1px solid #ccc; padding: 2px 8px; }</style>\n</head>\n<body>\n"
             f"<h1>MAFT notebook series: profile <code>{html.escape(profile)}</code></h1>\n"
             "<p><em>Learning Mask-aware CLIP Representations for Zero-Shot Segmentation</em> (Jiao et al., "
             "NeurIPS 2023), notebook by notebook. Read in order; every page links to the previous and the next "
             "one.</p>\n"
             + (f"<p><strong>What you should see:</strong> {html.escape(checklist_summary)} "
                '(table in the <a href="report.html">report</a>).</p>\n' if checklist_summary else "")
             + f'<nav class="maft-book-nav" data-position="top"><span></span><span></span>'
               f'<a class="maft-book-next" href="{html.escape(first)}">{html.escape(titles[pages[0]])} &rarr;</a></nav>\n'
             + f'<ol class="maft-book-pages">\n{"".join(entries)}\n</ol>\n</body>\n</html>\n')
    path = out / "index.html"
    path.write_text(index, encoding="utf-8")
    return path
