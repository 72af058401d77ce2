"""Progress bars: one policy for every bar in ``maft``.

On a terminal a bar is tqdm's usual bar, redrawn every 0.1 s; in a Jupyter kernel it is tqdm's notebook
widget (what ``tqdm.auto`` picks). Anywhere else (stderr redirected to a log file or a pipe, CI, a
background story run) it redraws at most every :data:`LOG_INTERVAL` seconds, so a long run's log holds
a few lines per bar instead of a carriage-return update ten times a second.

``MAFT_PROGRESS`` overrides the choice: ``auto`` (default, as above), ``bar`` (the terminal behaviour
even when stderr is not a terminal), ``log`` (the sparse behaviour even on a terminal) or ``off`` (no
bars at all).

Postfix updates must not force a redraw either: call ``bar.set_postfix(..., refresh=False)`` so the
interval alone decides when the bar is written.
"""
from __future__ import annotations

import os
import sys

from tqdm import std
from tqdm.auto import tqdm as auto_tqdm

ENV_VAR = "MAFT_PROGRESS"
MODES = ("auto", "bar", "log", "off")
LOG_INTERVAL = 30.0  # seconds between redraws when the bar goes to a log: ~120 lines per hour of work


def in_notebook() -> bool:
    """Whether ``tqdm.auto`` chose the notebook widget (only inside a Jupyter kernel with ipywidgets).

    Its class is never ``std.tqdm`` itself (it mixes in asyncio support), so ask whether it derives from
    the widget bar.
    """
    notebook = sys.modules.get("tqdm.notebook")
    return notebook is not None and issubclass(auto_tqdm, notebook.tqdm)


IN_NOTEBOOK = in_notebook()


def progress_mode(stream=None) -> str:
    """``bar``, ``log`` or ``off`` for a bar written to ``stream`` (default ``sys.stderr``)."""
    value = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV_VAR}={value!r}: expected one of {', '.join(MODES)}")
    if value != "auto":
        return value
    if IN_NOTEBOOK:
        return "bar"
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "log"
    except (AttributeError, ValueError):  # no isatty, or a closed stream: not a terminal
        return "log"


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar following the module's policy; takes tqdm's arguments (``desc``, ``total``, ``disable``...)."""
    mode = progress_mode(kwargs.get("file"))
    kwargs["disable"] = bool(kwargs.get("disable", False)) or mode == "off"
    if mode == "log":
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        # tqdm's monitor thread redraws a stalled bar every maxinterval; it must not undercut mininterval.
        kwargs["maxinterval"] = max(kwargs.get("maxinterval", LOG_INTERVAL), kwargs["mininterval"])
        return std.tqdm(iterable, **kwargs)  # plain text, never a widget, in a log
    return auto_tqdm(iterable, **kwargs)
