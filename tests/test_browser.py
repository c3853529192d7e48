"""JupyterLab in a real browser: open 00_tour, run it, move the template slider, see the figure change.

Skipped, with the reason, where Debian's ``chromium`` and ``chromium-driver`` (or selenium) are missing:
``apt-get install chromium chromium-driver``. A screenshot of the notebook after the move is saved in
the test's temporary folder (printed on failure, and kept by pytest under its basetemp).
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_tour.ipynb"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs a headless browser: apt-get install chromium chromium-driver")

# The notebook panel's model, through the app object that --LabApp.expose_app_in_browser puts on window.
PANEL = "const panel = window.jupyterapp.shell.currentWidget;"
OUTPUTS = PANEL + "return panel.content.model.cells.get(arguments[0]).toJSON().outputs;"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, step: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise TimeoutError(f"waited {timeout:.0f} s for {what}")


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A JupyterLab server on a free local port, serving a copy of the notebook (the repository stays clean)."""
    monkeypatch.delenv("FSLIB_CACHE")  # the project's feature cache: the tour then runs in about a minute
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    port, token = _free_port(), "fslib-browser-test"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", f"--ServerApp.token={token}",
               f"--ServerApp.root_dir={tmp_path}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
               "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else [])
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "FSLIB_PROGRESS": "text"})
    try:
        _wait(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 60, "JupyterLab to listen")
        yield f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK.name}?token={token}"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    yield driver
    driver.quit()


def _figure(driver, cell: int) -> str | None:
    pngs = [o["data"]["image/png"] for o in driver.execute_script(OUTPUTS, cell) if "image/png" in o.get("data", {})]
    return pngs[-1] if pngs else None


def test_run_the_tour_and_move_a_slider(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(lab)
    _wait(lambda: browser.execute_script(PANEL + "return panel && panel.sessionContext && "
                                         "panel.sessionContext.session && panel.sessionContext.session.kernel && "
                                         "panel.sessionContext.session.kernel.status === 'idle';"), 120, "the kernel")
    sources = browser.execute_script(PANEL + "return panel.content.model.toJSON().cells.map(c => [].concat(c.source).join(''));")
    explorer = next(i for i, s in enumerate(sources) if s.startswith("explore_templates("))
    browser.execute_script(PANEL + "window.jupyterapp.commands.execute('notebook:run-all-cells');")
    last = len(sources) - 1
    _wait(lambda: any("✓" in "".join(o.get("text", "")) for o in browser.execute_script(OUTPUTS, last)), 900,
          "every cell to run (the exercise's check prints ✓)", step=5)
    before = _figure(browser, explorer)
    assert before, "the template explorer drew no first view"

    browser.execute_script(PANEL + "panel.content.activeCellIndex = arguments[0]; "
                           "panel.content.scrollToItem(arguments[0], 'center');", explorer)
    handle = _wait(lambda: [h for h in browser.find_elements(By.CSS_SELECTOR, ".noUi-handle") if h.is_displayed()],
                   30, "the slider to render")[0]
    handle.click()
    handle.send_keys(Keys.ARROW_LEFT)  # fewer templates averaged
    after = _wait(lambda: (lambda png: png if png and png != before else None)(_figure(browser, explorer)), 60,
                  "the figure to redraw")
    browser.save_screenshot(str(tmp_path / "tour_after_slider.png"))
    assert after != before
    assert (tmp_path / "tour_after_slider.png").stat().st_size > 10_000
