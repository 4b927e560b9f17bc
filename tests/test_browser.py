"""The notebooks as a person meets them: JupyterLab in a real, headless Chromium.

JupyterLab is started on a free local port with a token, in a folder holding copies of
``notebooks/00_start_here.ipynb`` and ``notebooks/explore_runs.ipynb`` whose parameters cell points at the smoke
profile and a run store in the test's temporary folder (the way a person edits that cell). Selenium drives
Debian's ``chromium`` through its ``chromedriver`` (``scripts/install_browser.sh`` installs both when missing;
nothing downloads a browser of its own). For each notebook the test opens it, checks the ``greenkd`` kernel is
the one selected, runs all cells from the Run menu and then looks at the page: no error output, progress bars
drawn as widgets (not the ``IProgress not found`` text a kernel without widgets prints), the images there, and
the interactive figure redrawn when a control moves: the tau slider of the first notebook, the run picker of the
second. Screenshots of every step are saved in the test's temporary folder; their paths are printed when it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import nbformat
import pytest

pytestmark = pytest.mark.notebook

REPO = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO / "scripts" / "install_browser.sh"
SERVER_START_TIMEOUT_S = 120
PAGE_TIMEOUT_S = 120
RUN_ALL_TIMEOUT_S = 300
REDRAW_TIMEOUT_S = 60
# JupyterLab's settings for a throw-away user: every cell stays in the page (the default windowing drops cells
# scrolled out of view, and their outputs with them) and no news or update check pops up over the notebook.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}
ERROR_MIME = ("application/vnd.jupyter.error",)
WIDGET_FAILURES = ("IProgress not found", "Error displaying widget", "Failed to display Jupyter Widget")


# -- the browser and the server ------------------------------------------------------------------------------
def installed_browser() -> tuple:
    """(chromium, chromedriver): installed by the project's script when missing; a skip says why it could not."""
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.skip(f"scripts/install_browser.sh could not install Debian's chromium and chromium-driver: "
                    f"{(done.stderr or done.stdout).strip()[-800:]}")
    found = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    return found["browser"].strip(), found["driver"].strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def smoke_copy(name: str, folder: Path, results: Path, output: Path) -> Path:
    """``notebooks/<name>.ipynb`` with its parameters cell set to the smoke profile and the test's folders."""
    nb = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    values = {"profile": "smoke", "results_dir": str(results), "output_dir": str(output)}
    lines = []
    for line in cell.source.splitlines():
        knob = line.split("=", 1)[0].strip()
        lines.append(f"{knob} = {values[knob]!r}" if knob in values else line)
    cell.source = "\n".join(lines)
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free port, its root a folder of smoke copies of the two notebooks."""
    root = tmp_path_factory.mktemp("browser")
    notebooks, results = root / "notebooks", root / "results"
    notebooks.mkdir()
    for name in ("00_start_here", "explore_runs"):
        smoke_copy(name, notebooks, results, root / "figures")
    settings = root / "lab_settings"
    for relative, values in LAB_SETTINGS.items():
        (settings / relative).parent.mkdir(parents=True, exist_ok=True)
        (settings / relative).write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(24)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", JUPYTER_RUNTIME_DIR=str(root / "runtime"))
    # The progress bars are part of what is checked, and an inherited Agg backend would hide the figures.
    env.pop("GREENKD_PROGRESS", None)
    env.pop("MPLBACKEND", None)
    log_path = root / "jupyterlab.log"
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={notebooks}",
               f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={root / 'workspaces'}",
               "--allow-root"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, cwd=notebooks)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_server(url, token, process, log_path)
        yield {"url": url, "token": token, "root": root, "results": results, "figures": root / "figures"}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def wait_for_server(url: str, token: str, process: subprocess.Popen, log_path: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {SERVER_START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")


@pytest.fixture(scope="module")
def driver(lab):
    browser, chromedriver = installed_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1500,1100", "--no-first-run", "--disable-extensions"):
        options.add_argument(argument)
    service = Service(executable_path=chromedriver, log_output=str(lab["root"] / "chromedriver.log"))
    chrome = webdriver.Chrome(service=service, options=options)
    chrome.set_page_load_timeout(PAGE_TIMEOUT_S)
    try:
        yield chrome
    finally:
        chrome.quit()


# -- looking at the page ---------------------------------------------------------------------------------------
class Page:
    """The notebook page of one JupyterLab tab, with a screenshot of every step (kept for failures)."""

    def __init__(self, driver, folder: Path, tag: str):
        self.driver, self.folder, self.tag = driver, folder, tag
        self.screenshots: List[Path] = []

    def shot(self, step: str) -> Path:
        path = self.folder / f"{self.tag}_{len(self.screenshots):02d}_{step}.png"
        self.driver.save_screenshot(str(path))
        self.screenshots.append(path)
        return path

    def wait(self, condition, timeout_s: float, what: str):
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout_s, poll_frequency=0.5).until(lambda d: condition())
        except TimeoutException:
            raise AssertionError(f"{self.tag}: {what} did not happen within {timeout_s:g} s") from None

    def css(self, selector: str, within=None):
        from selenium.webdriver.common.by import By

        return (within or self.driver).find_elements(By.CSS_SELECTOR, selector)

    def notebook(self):
        panels = [p for p in self.css(".jp-NotebookPanel") if p.is_displayed()]
        return panels[0] if panels else None

    def kernel_name(self) -> str:
        names = [e.text for e in self.css(".jp-NotebookPanel .jp-KernelName, .jp-NotebookPanel "
                                          "[data-jp-item-name='kernelName']") if e.text.strip()]
        return names[0].strip() if names else ""

    def prompts(self) -> List[str]:
        return [e.text.strip() for e in self.css(".jp-NotebookPanel .jp-CodeCell .jp-InputPrompt")]

    def outputs_text(self) -> str:
        return "\n".join(e.text for e in self.css(".jp-NotebookPanel .jp-OutputArea-output"))

    def kernel_idle(self) -> bool:
        indicators = self.css(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator")
        return bool(indicators) and all(i.get_attribute("data-status") == "idle" for i in indicators)


def open_notebook(page: Page, lab, name: str) -> None:
    page.driver.get(f"{lab['url']}/lab/tree/{name}.ipynb?reset&token={lab['token']}")
    page.wait(lambda: page.notebook() is not None and page.css(".jp-NotebookPanel .jp-Cell"), PAGE_TIMEOUT_S,
              f"the notebook {name}.ipynb opening")
    select_greenkd_kernel(page)
    page.shot("opened")


def select_greenkd_kernel(page: Page) -> None:
    """The kernel of the notebook's metadata is started; if JupyterLab asks instead, choose ``greenkd``."""
    from selenium.webdriver.support.ui import Select

    def settled():
        dialogs = page.css(".jp-Dialog")
        if dialogs:
            for select in page.css(".jp-Dialog select"):
                options = {o.get_attribute("value"): o for o in Select(select).options}
                match = next((v for v in options if "greenkd" in v), None)
                if match:
                    Select(select).select_by_value(match)
            accept = page.css(".jp-Dialog .jp-mod-accept")
            if accept:
                accept[0].click()
            return False
        return page.kernel_name() not in ("", "No Kernel", "Kernel")

    page.wait(settled, PAGE_TIMEOUT_S, "a kernel being selected")
    assert page.kernel_name() == "Python (greenkd)", f"kernel shown: {page.kernel_name()!r}"
    page.wait(page.kernel_idle, PAGE_TIMEOUT_S, "the kernel becoming idle")


def run_all_cells(page: Page) -> None:
    """Run > Run All Cells, as a person clicks it; then wait until every code cell has its number."""
    menu = next(m for m in page.css(".lm-MenuBar-item") if m.text.strip() == "Run")
    menu.click()

    def run_all_item():
        return next((i for i in page.css("li.lm-Menu-item") if i.text.strip().startswith("Run All Cells")), None)

    page.wait(run_all_item, 30, "the Run menu opening")
    run_all_item().click()
    page.shot("running")

    def finished():
        prompts = page.prompts()
        return prompts and all(p.startswith("[") and p[1:-2].isdigit() for p in prompts) and page.kernel_idle()

    page.wait(finished, RUN_ALL_TIMEOUT_S, f"every cell running (prompts now: {page.prompts()})")
    page.shot("ran")


def check_outputs(page: Page, min_images: int) -> None:
    errors = page.css(", ".join(f".jp-NotebookPanel .jp-OutputArea-output[data-mime-type='{m}']" for m in ERROR_MIME))
    text = page.outputs_text()
    assert not errors and "Traceback" not in text, f"error output:\n{text[-3000:]}"
    failures = [f for f in WIDGET_FAILURES if f in text]
    assert not failures, f"widgets did not render: {failures}\n{text[-2000:]}"
    images = [i for i in page.css(".jp-NotebookPanel .jp-OutputArea-output img")
              if page.driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
    assert len(images) >= min_images, f"{len(images)} images rendered; expected at least {min_images}"


def widget_image(page: Page):
    images = page.css(".jp-NotebookPanel .jupyter-widgets img, .jp-NotebookPanel img.widget-image")
    assert images, "no image widget in the page"
    return images[-1]


def dropdown(page: Page, label: str):
    """The ``select`` of the dropdown widget described by ``label``."""
    from selenium.webdriver.support.ui import Select

    boxes = [b for b in page.css(".jp-NotebookPanel .widget-dropdown")
             if b.find_element("css selector", ".widget-label").text.strip() == label]
    assert boxes, f"no dropdown labelled {label!r}"
    return Select(boxes[0].find_element("css selector", "select"))


def wait_for_redraw(page: Page, before: str, what: str) -> None:
    page.wait(lambda: widget_image(page).get_attribute("src") != before, REDRAW_TIMEOUT_S, what)


# -- the tests -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def screenshots_on_failure(page: Page):
    """On a failure, one more screenshot, and the paths of all of them printed and added to the message."""
    try:
        yield
    except Exception as failure:
        page.shot("failed")
        (page.folder / f"{page.tag}_failed.html").write_text(page.driver.page_source)
        listing = "\n".join(str(p) for p in page.screenshots)
        print(f"screenshots:\n{listing}")
        raise AssertionError(f"{failure}\nscreenshots:\n{listing}") from failure


def test_start_here_in_jupyterlab(lab, driver, tmp_path):
    page = Page(driver, tmp_path, "start_here")
    with screenshots_on_failure(page):
        open_notebook(page, lab, "00_start_here")
        run_all_cells(page)
        check_outputs(page, min_images=3)
        bars = page.css(".jp-NotebookPanel .jp-OutputArea-output .widget-hprogress")
        assert bars, "no progress bar widget in the outputs (the runs train in this fresh store)"

        image = widget_image(page)
        before = image.get_attribute("src")
        handle = next(s for s in page.css(".jp-NotebookPanel .widget-slider")
                      if "tau" == s.find_element("css selector", ".widget-label").text.strip())
        knob = page.css(".noUi-handle", within=handle)[0]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", knob)
        knob.click()
        from selenium.webdriver.common.keys import Keys

        knob.send_keys(Keys.ARROW_RIGHT)  # one step of 0.5
        wait_for_redraw(page, before, "the figure being redrawn after the tau slider moved")
        page.wait(page.kernel_idle, REDRAW_TIMEOUT_S, "the kernel idle after the redraw")
        readout = handle.find_element("css selector", ".widget-readout").text.strip()
        assert float(readout) == pytest.approx(4.5), f"the tau slider reads {readout}"
        page.shot("tau_moved")
        assert (lab["figures"] / "start_here_tau_explorer.png").stat().st_size > 0


def test_explore_runs_in_jupyterlab(lab, driver, tmp_path):
    page = Page(driver, tmp_path, "explore_runs")
    with screenshots_on_failure(page):
        if not any(lab["results"].glob("runs/*/result.json")):
            pytest.fail("the store is empty: test_start_here_in_jupyterlab trains its two runs first")
        open_notebook(page, lab, "explore_runs")
        run_all_cells(page)
        check_outputs(page, min_images=1)
        listing = page.outputs_text()
        assert "teacher_digits" in listing and "kd_digits" in listing, listing[-2000:]

        image = widget_image(page)
        before = image.get_attribute("src")
        runs = dropdown(page, "run")
        assert len(runs.options) >= 2, [o.text for o in runs.options]
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", runs.first_selected_option)
        runs.select_by_index(1)
        wait_for_redraw(page, before, "the run's views being redrawn after another run was picked")
        page.wait(page.kernel_idle, REDRAW_TIMEOUT_S, "the kernel idle after the redraw")
        page.shot("run_picked")

        # A filter narrows the list and the runs offered to the teacher alone.
        dropdown(page, "method").select_by_visible_text("teacher")
        page.wait(lambda: len(dropdown(page, "run").options) == 1, REDRAW_TIMEOUT_S, "the method filter applying")
        assert dropdown(page, "run").options[0].text.startswith("teacher_digits"), dropdown(page, "run").options[0].text
        page.shot("filtered")
        assert (lab["figures"] / "explore_runs_first_run.png").stat().st_size > 0
