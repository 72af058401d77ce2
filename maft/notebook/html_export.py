"""Single-file HTML a course can hand out: the executed notebooks (nbconvert) and the run report with
its figures embedded, so a reader without Jupyter opens one file and sees everything.

Figures travel inside the files as base64 ``data:`` URIs. The only outside references left are the
CDN scripts nbconvert's template links for LaTeX (MathJax) and require.js: offline, math in Markdown
cells shows as its TeX source, and everything else, figures included, is unaffected.
"""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import mistune
from nbconvert import HTMLExporter
from traitlets.config import Config

_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                   ".svg": "image/svg+xml"}
_IMG_SRC = re.compile(r'(<img\b[^>]*?\bsrc=")([^"]+)(")')
_LINK_HREF = re.compile(r'(<a\b[^>]*?\bhref=")([^"]+)(")')

_STYLE = """
body { max-width: 1150px; margin: 2em auto; padding: 0 1em; font: 15px/1.5 system-ui, sans-serif; color: #222; }
img { max-width: 100%; height: auto; display: block; margin: 0.8em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
th { background: #f3f3f3; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 13px; }
code { font-size: 13px; }
.missing-figure { color: #b00020; font-weight: bold; }
"""


def notebook_to_html(notebook: str | Path, html_path: str | Path | None = None) -> Path:
    """Write ``notebook`` (executed, outputs inside) as one HTML file (default: beside it, ``.html``)."""
    notebook = Path(notebook)
    html_path = Path(html_path) if html_path else notebook.with_suffix(".html")
    # nbconvert writes an executed notebook's image outputs as data URIs already; embed_images does
    # the same for images that Markdown cells link by path.
    # cells tagged remove_input (the guide's header, checklist and exercises) show only their output
    config = Config({"TagRemovePreprocessor": {"enabled": True, "remove_input_tags": {"remove_input"}}})
    exporter = HTMLExporter(template_name="lab", embed_images=True, config=config)
    body, _ = exporter.from_filename(str(notebook), resources={"metadata": {"path": str(notebook.parent)}})
    html_path.write_text(body, encoding="utf-8")
    return html_path


def data_uri(path: str | Path) -> str:
    """``data:<mime>;base64,...`` of an image file."""
    path = Path(path)
    mime = _MIME_BY_SUFFIX.get(path.suffix.lower())
    if mime is None:
        raise ValueError(f"{path}: not an image type that can be embedded ({', '.join(_MIME_BY_SUFFIX)})")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def markdown_to_html(markdown: str, base_dir: str | Path, title: str = "") -> str:
    """A standalone HTML page of ``markdown``: images given by a path relative to ``base_dir`` are
    embedded (a missing one is named in red in the page), and links to ``X.ipynb`` point at ``X.html``
    where that file exists beside it."""
    base_dir = Path(base_dir)
    body = mistune.create_markdown(plugins=["table", "strikethrough"])(markdown)

    def embed(match):
        src = html.unescape(match.group(2))
        if _is_external(src):
            return match.group(0)
        path = base_dir / src
        if not path.is_file():
            note = f'<span class="missing-figure">figure not found: {html.escape(src)}</span>'
            return note + match.group(1) + match.group(3)
        return match.group(1) + data_uri(path) + match.group(3)

    def relink(match):
        href = html.unescape(match.group(2))
        if _is_external(href) or not href.endswith(".ipynb") or not (base_dir / href).with_suffix(".html").is_file():
            return match.group(0)
        return match.group(1) + html.escape(href[: -len(".ipynb")] + ".html") + match.group(3)

    body = _LINK_HREF.sub(relink, _IMG_SRC.sub(embed, body))
    heading = re.search(r"<h1>(.*?)</h1>", body, flags=re.S)
    title = title or (re.sub(r"<[^>]+>", "", heading.group(1)) if heading else "report")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(html.unescape(title))}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def report_to_html(report: str | Path, html_path: str | Path | None = None) -> Path:
    """Write the Markdown report ``report`` as one HTML file with its figures embedded (default:
    beside it, ``.html``)."""
    report = Path(report)
    html_path = Path(html_path) if html_path else report.with_suffix(".html")
    html_path.write_text(markdown_to_html(report.read_text(encoding="utf-8"), report.parent), encoding="utf-8")
    return html_path


def _is_external(url: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", url, flags=re.I)) or url.startswith(("//", "#"))
