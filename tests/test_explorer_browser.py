"""The explorer of notebook 06 as a person uses it: JupyterLab on 127.0.0.1 behind a token, the notebook
opened in headless Chromium (Debian's ``chromium``, driven by Playwright through ``executable_path``;
nothing is downloaded), all cells run from the Run menu, then the image slider, the proposal slider,
the box checkbox and the box's rows moved with the keyboard and mouse. Each change must redraw the
explorer's figure (a different PNG in its output area), box mode must disable the proposal slider, and
the browser console must stay free of errors.

Notebook 06 runs with the smoke profile's parameters and the checkpoint of the session's smoke run
(``smoke_run`` in conftest.py), so it takes seconds. Without Chromium or Playwright the test skips and
says what to install; under CI (``CI`` set), where ``.ci/run`` installs both, it fails instead.

The same browser also reads the smoke run's HTML book from disk (index, next to the end, previous back
to the index) and runs notebook 00 as shipped with "Run All", which must run the demo profile.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from maft.notebook import series
from maft.studies.experiment_runs import find_checkpoint
from maft.utils.paths import REPO_ROOT

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("MAFT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# Headless, and quiet on the network: without the background-networking switches Chromium keeps
# dialling out, and this machine's closed network refuses (and logs) every such connection.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
NOTEBOOK = "06_visualizations.ipynb"
FIGURE = ".maft-explorer .maft-explorer-figure img"
TIMEOUT_MS = 240_000  # kernel start and every cell of 06 on a busy 2-core machine


def _require_browser():
    missing = []
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright for Python is not installed (pip install playwright; it is in the test extra)")
    if not Path(CHROMIUM).is_file():
        missing.append(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set MAFT_CHROMIUM)")
    if missing and os.environ.get("CI"):
        pytest.fail("CI runs the browser test and .ci/run installs what it needs, but " + "; ".join(missing))
    if missing:
        pytest.skip("; ".join(missing))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def jupyterlab(tmp_path):
    """(base URL, token, root folder) of a JupyterLab with its own config, data, runtime and settings
    folders under ``tmp_path``, so nothing of the user's Jupyter setup leaks in or is written to."""
    _require_browser()
    root, home = tmp_path / "lab-root", tmp_path / "lab-home"
    root.mkdir()
    folders = {name: home / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    # a person's answer to JupyterLab's "get notified about news?" toast, which would cover the page
    notification = folders["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false"}))
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(folders["config"]), "JUPYTER_DATA_DIR": str(folders["data"]),
           "JUPYTER_RUNTIME_DIR": str(folders["runtime"]), "IPYTHONDIR": str(folders["ipython"]),
           # the kernel imports this checkout's maft, whatever the environment's install points at
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={folders['settings']}",
               f"--LabApp.workspaces_dir={folders['workspaces']}",
               # nothing that asks the internet: no news, no update check, no PyPI extension manager
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.extension_manager=readonly"]
    if os.geteuid() == 0:  # CI and this project's machines run as root; Jupyter refuses unless told
        command.append("--allow-root")
    log = (home / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(base, token, server, home / "jupyterlab.log")
        yield base, token, root
    finally:
        server.send_signal(signal.SIGTERM)  # the server shuts its kernels down on the way out
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)  # our own session: the server and its kernels
            server.wait(10)
        log.close()


def _wait_for_server(base: str, token: str, server: subprocess.Popen, log: Path, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"JupyterLab did not answer within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _wait_for_kernel(base: str, token: str, notebook: str, timeout: float = 180.0):
    """Until the server has a session for ``notebook`` whose kernel is idle (started and ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=5) as answer:
            sessions = json.load(answer)
        if any(s.get("path") == notebook and (s.get("kernel") or {}).get("execution_state") == "idle"
               for s in sessions):
            return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for {notebook} after {timeout:.0f} s: {sessions}")


def _run_all_cells(page, base: str, token: str, notebook: str) -> None:
    """Open ``notebook`` in JupyterLab and choose Run > Run All Cells once its kernel is idle."""
    page.goto(f"{base}/lab/tree/{notebook}?token={token}")
    # the notebook is open and its kernel has started: only then is "Run All Cells" heard
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=TIMEOUT_MS)
    _wait_for_kernel(base, token, notebook)
    page.locator(".jp-NotebookPanel-toolbar .jp-Notebook-ExecutionIndicator[data-status='idle']") \
        .wait_for(timeout=TIMEOUT_MS)
    page.locator("#jp-MainMenu").get_by_text("Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile("^Run All Cells")).click()
    # if the page had not yet attached to the kernel, JupyterLab asks which one: take its choice
    choose = page.locator(".jp-Dialog").get_by_role("button", name="Select")
    try:
        choose.wait_for(timeout=3000)
        choose.click()
    except Exception:  # Playwright's TimeoutError: no dialog, the cells are running
        pass


def explorer_notebook(folder: Path, smoke_out: Path) -> Path:
    """Notebook 06 with the smoke profile's parameters injected (papermill's own parameterisation),
    ``interactive=True`` so the widget is built, the smoke run's checkpoint, and its own output folder
    (the smoke run's figures stay untouched)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    source = series.NOTEBOOK_DIR / NOTEBOOK
    declared = series.declared_parameters(source)
    parameters = {k: v for k, v in series.load_profile("smoke").items() if k in declared}
    parameters.update(interactive=True, output_dir=str(folder / "outputs"),
                      checkpoint=find_checkpoint(smoke_out / "train"))
    notebook = parameterize_notebook(load_notebook_node(str(source)), parameters)
    path = folder / NOTEBOOK
    nbformat.write(notebook, path)
    return path


def _figure_src(page) -> str | None:
    image = page.locator(FIGURE)
    return image.first.get_attribute("src") if image.count() else None


def _wait_for_new_figure(page, previous: str | None, what: str, timeout_ms: int = 60_000) -> str:
    try:
        page.wait_for_function(
            """previous => { const img = document.querySelector(arguments_selector);
                             return img !== null && img.src.startsWith('data:image/png') && img.src !== previous; }"""
            .replace("arguments_selector", json.dumps(FIGURE)), arg=previous, timeout=timeout_ms)
    except Exception as error:  # Playwright's TimeoutError: say which interaction drew nothing
        raise AssertionError(f"the explorer's figure did not change after {what}") from error
    return _figure_src(page)


def _slider(page, label: str):
    """The ipywidgets slider whose description is exactly ``label``."""
    description = page.locator(".widget-label", has_text=re.compile(f"^{re.escape(label)}$"))  # inside the slider
    return page.locator(".maft-explorer .widget-slider").filter(has=description)


def _press_on_handle(page, slider, key: str, handle: str = ".noUi-handle"):
    target = slider.locator(handle).first
    target.focus()
    page.keyboard.press(key)


def test_the_explorer_redraws_on_every_control_in_a_real_browser(jupyterlab, smoke_run, tmp_path):
    from playwright.sync_api import sync_playwright

    base, token, root = jupyterlab
    path = explorer_notebook(root, smoke_run[0])
    shots = tmp_path / "screenshots"
    console_errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)  # fresh profile
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(f"uncaught: {e}"))
            _run_all_cells(page, base, token, path.name)
            try:
                page.locator(FIGURE).wait_for(timeout=TIMEOUT_MS)
            except Exception as error:
                page.screenshot(path=shots / "failed.png", full_page=True)
                errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
                raise AssertionError(f"the explorer never showed a figure (see {shots / 'failed.png'}); "
                                     "stderr outputs:\n" + "\n".join(errors.all_inner_texts())[-3000:]) from error
            page.locator(".maft-explorer").scroll_into_view_if_needed()
            page.screenshot(path=shots / "0_explorer.png", full_page=False)
            figure = _figure_src(page)

            image, proposal = _slider(page, "image"), _slider(page, "proposal")
            _press_on_handle(page, image, "ArrowRight")
            figure = _wait_for_new_figure(page, figure, "moving the image slider")
            page.screenshot(path=shots / "1_image.png")

            _press_on_handle(page, proposal, "ArrowRight")
            figure = _wait_for_new_figure(page, figure, "moving the proposal slider")
            page.screenshot(path=shots / "2_proposal.png")

            page.locator(".maft-explorer .widget-checkbox input[type=checkbox]").click()
            figure = _wait_for_new_figure(page, figure, "ticking 'draw a box instead'")
            assert proposal.locator(".noUi-target").get_attribute("disabled") is not None, \
                "box mode leaves the proposal slider enabled"
            page.screenshot(path=shots / "3_box.png")

            _press_on_handle(page, _slider(page, "box rows (of height)"), "ArrowLeft", ".noUi-handle-upper")
            figure = _wait_for_new_figure(page, figure, "moving the box's lower edge up")
            page.screenshot(path=shots / "4_box_rows.png")

            prompts = page.locator(".jp-InputArea-prompt").all_inner_texts()
            assert not any("*" in prompt for prompt in prompts), f"cells still running: {prompts}"
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.all_inner_texts()
        finally:
            browser.close()
    assert not console_errors, "browser console errors:\n" + "\n".join(console_errors)


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def test_the_html_book_is_read_with_next_and_previous_links(smoke_run):
    """outputs/<profile>/index.html opened from disk: following "next" from the index visits every
    notebook in order and ends on the report; "previous" walks back to the index."""
    _require_browser()
    from playwright.sync_api import sync_playwright

    out, runs = smoke_run
    expected = [Path(r.notebook).stem + ".html" for r in runs] + ["report.html"]
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page()
            page.goto((out / "index.html").as_uri())
            listed = page.locator("ol.maft-book-pages > li h2 a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
            assert listed == expected
            assert page.locator("ol.maft-book-pages").get_by_text("From the paper:").count() == len(runs)
            visited = []
            while page.locator("nav[data-position=top] a.maft-book-next").count():
                page.locator("nav[data-position=top] a.maft-book-next").click()
                page.wait_for_load_state()
                visited.append(page.url.rsplit("/", 1)[-1])
                # every page: its own table of contents, whose first link leads to a heading on it
                toc = page.locator(".maft-book-toc a")
                assert toc.count() >= 1, visited[-1]
                target = toc.first.get_attribute("href")
                assert page.locator(f"[id='{target[1:]}']").count() == 1, (visited[-1], target)
            assert visited == expected
            assert page.locator("h2", has_text="What you should see").count() == 1  # the report's checklist
            back = []
            while page.url.rsplit("/", 1)[-1] != "index.html":
                page.locator("nav[data-position=bottom] a.maft-book-prev").click()
                page.wait_for_load_state()
                back.append(page.url.rsplit("/", 1)[-1])
            assert back == expected[-2::-1] + ["index.html"]
        finally:
            browser.close()


def test_run_all_in_jupyterlab_without_papermill_runs_the_demo_profile(jupyterlab, tmp_path):
    """Notebook 00 as shipped, in a fresh kernel: its parameter defaults are the demo profile's, so Run
    All writes the demo's outputs (../outputs/demo beside the notebooks folder) without papermill."""
    from playwright.sync_api import sync_playwright

    base, token, root = jupyterlab
    folder = root / "notebooks"
    folder.mkdir()
    shutil.copy(series.NOTEBOOK_DIR / "00_setup_and_data.ipynb", folder)
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            _run_all_cells(page, base, token, "notebooks/00_setup_and_data.ipynb")
            page.get_by_text("What you should see.").first.wait_for(timeout=TIMEOUT_MS)
            page.get_by_text("From the paper:").first.wait_for(timeout=TIMEOUT_MS)
            errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
            assert errors.count() == 0, errors.all_inner_texts()
        finally:
            browser.close()
    metrics = json.loads((root / "outputs" / "demo" / "metrics" / "00.json").read_text())
    assert metrics["dataset"] == series.load_profile("demo")["config"]  # the demo's config, "world"
    assert (root / "outputs" / "demo" / "checklist" / "00.json").is_file()
