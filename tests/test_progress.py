"""The one progress-bar policy (maft.utils.progress): bars on a terminal, sparse redraws in a log, env override."""
from __future__ import annotations

import io
import re

import pytest
from tqdm import std

from maft.utils import progress
from maft.utils.progress import LOG_INTERVAL, progress_bar, progress_mode


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    """tqdm reads the time through ``tqdm.std.time``; each call advances one second."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def redraws(stream: io.StringIO) -> int:
    return len(re.findall(r"\r", stream.getvalue()))


def run_loop(stream, monkeypatch, steps: int = 600, postfix: bool = False) -> io.StringIO:
    monkeypatch.setattr(std, "time", FakeClock())
    bar = progress_bar(total=steps, file=stream, desc="work")
    for _ in range(steps):  # 600 fake seconds of work, one step a second
        bar.update(1)
        if postfix:
            bar.set_postfix(loss="0.1", refresh=False)
    bar.close()
    return stream


def test_outside_a_kernel_there_is_no_notebook_bar():
    assert progress.in_notebook() is False  # pytest is no Jupyter kernel: a log must get the sparse bar


@pytest.fixture(autouse=True)
def auto_mode(monkeypatch):
    monkeypatch.delenv(progress.ENV_VAR, raising=False)
    monkeypatch.setattr(progress, "IN_NOTEBOOK", False)


def test_a_log_gets_a_few_redraws_a_terminal_gets_a_bar(monkeypatch):
    log = run_loop(io.StringIO(), monkeypatch, postfix=True)
    terminal = run_loop(Terminal(), monkeypatch)
    # one redraw per LOG_INTERVAL fake seconds, plus the first and the last
    assert redraws(log) <= 600 / LOG_INTERVAL + 3
    assert redraws(terminal) >= 500  # every second exceeds the terminal's 0.1 s interval
    assert "600/600" in log.getvalue() and "600/600" in terminal.getvalue()


def test_environment_variable_forces_or_hides_the_bar(monkeypatch):
    monkeypatch.setenv(progress.ENV_VAR, "bar")
    assert redraws(run_loop(io.StringIO(), monkeypatch)) >= 500
    monkeypatch.setenv(progress.ENV_VAR, "log")
    assert redraws(run_loop(Terminal(), monkeypatch)) <= 600 / LOG_INTERVAL + 3
    monkeypatch.setenv(progress.ENV_VAR, "off")
    assert run_loop(Terminal(), monkeypatch).getvalue() == ""
    monkeypatch.setenv(progress.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match="MAFT_PROGRESS='sometimes'"):
        progress_bar(range(3), file=io.StringIO())


def test_mode_follows_the_stream_and_the_caller_can_still_disable(monkeypatch):
    assert progress_mode(Terminal()) == "bar" and progress_mode(io.StringIO()) == "log"
    assert progress_mode(object()) == "log"  # no isatty: not a terminal
    monkeypatch.setattr(progress, "IN_NOTEBOOK", True)
    assert progress_mode(io.StringIO()) == "bar"  # the notebook widget, not a log
    stream = Terminal()
    bar = progress_bar(range(3), file=stream, disable=True)
    list(bar)
    assert stream.getvalue() == ""


def test_every_bar_in_the_package_goes_through_the_policy():
    from pathlib import Path

    import maft

    package = Path(maft.__file__).parent
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if path.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", path.read_text(), re.M)]
    assert offenders == []
