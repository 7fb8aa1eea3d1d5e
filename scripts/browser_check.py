"""Open the switchboard notebook in a real (headless) browser, run it, click, screenshot.

    apt-get install -y chromium chromium-driver        # Debian's browser and its driver
    .venv/bin/pip install -e '.[notebook]' 'selenium>=4.20'
    .venv/bin/python scripts/browser_check.py          # -> docs/dashboard.png

What it does: starts JupyterLab on 127.0.0.1 (a free port, no token, fresh config/data folders,
so no personal settings or kernels leak in), opens notebooks/07_stack_them_all.ipynb in headless
Chromium, runs all cells, then, like a student, clicks the "torch.compile" toggle and the Run
button, waits for the new run to land in the plots, and saves a screenshot of the dashboard.
It fails (exit code 1) if a cell errors or the click does not add a run.

Not part of CI: it needs a browser and takes about a minute. Options: --out PATH, --keep-open.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/07_stack_them_all.ipynb"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1500,1900"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(port: int, scratch: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
               JUPYTER_CONFIG_DIR=str(scratch / "config"), JUPYTER_DATA_DIR=str(scratch / "data"),
               JUPYTER_RUNTIME_DIR=str(scratch / "runtime"), OMP_NUM_THREADS="1")
    env.pop("JUPYTER_PATH", None)
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.allow_root=True",
           f"--ServerApp.root_dir={REPO}", "--LabApp.expose_app_in_browser=True",
           f"--LabApp.workspaces_dir={scratch / 'workspaces'}"]
    log = open(scratch / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"JupyterLab did not start; see {scratch / 'lab.log'}")


def make_driver(scratch: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    for path in (binary, driver_path):
        if not Path(path).exists():
            raise RuntimeError(f"{path} not found: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS + [f"--user-data-dir={scratch / 'chromium'}"]:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path), options=options)   # no driver download


def wait_for(driver, script: str, timeout: float, what: str):
    """Poll a JavaScript expression until it returns something truthy."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


FIND_PANEL = """
let panel = null;
for (const w of window.jupyterapp.shell.widgets('main'))
  if (w.sessionContext && w.content && w.content.model) { panel = w; break; }
"""
NOTEBOOK_STATE = FIND_PANEL + """
const model = panel.content.model, kernel = panel.sessionContext.session?.kernel;
let pending = 0, errors = [];
for (let i = 0; i < model.cells.length; i++) {
  const cell = model.cells.get(i);
  if (cell.type !== 'code') continue;
  if (cell.executionCount === null) pending++;
  for (const out of cell.outputs.toJSON())
    if (out.output_type === 'error') errors.push(out.ename + ': ' + out.evalue);
}
return {pending: pending, errors: errors, kernel: kernel ? kernel.status : 'none'};
"""
STATUS = ("const w = Array.from(document.querySelectorAll('.widget-label'))"
          ".map(e => e.textContent).filter(t => t.startsWith('run ') || t.startsWith('error'));"
          "return w.length ? w[w.length - 1] : '';")


def click_button(driver, text: str) -> None:
    """Click the widget button whose label is `text` (ipywidgets render <button> elements)."""
    found = driver.execute_script(
        "const b = Array.from(document.querySelectorAll('button.jupyter-widgets, button.widget-button, "
        ".widget-toggle-button')).find(e => e.innerText.trim() === arguments[0]);"
        "if (!b) return false; b.scrollIntoView({block: 'center'}); b.click(); return true;", text)
    if not found:
        raise RuntimeError(f"no widget button labelled {text!r} on the page")


def main() -> int:
    from selenium.webdriver.common.by import By
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "dashboard.png"))
    parser.add_argument("--keep-open", action="store_true", help="leave JupyterLab running at the end")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="workbench-browser-"))
    port = free_port()
    lab = start_lab(port, scratch)
    driver = None
    try:
        driver = make_driver(scratch)
        driver.get(f"http://127.0.0.1:{port}/lab/tree/{NOTEBOOK}")
        wait_for(driver, "if (!window.jupyterapp) return false;" + FIND_PANEL + "return panel !== null;",
                 120, "the notebook to open")
        wait_for(driver, f"return (function(){{{NOTEBOOK_STATE}}})().kernel === 'idle'", 120, "the kernel")
        # Headless Chromium has no focused window: click a cell so the notebook becomes "current".
        driver.find_element(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-prompt").click()
        wait_for(driver, "return !!window.jupyterapp.shell.currentWidget", 30, "the notebook to take focus")
        driver.execute_script("window.jupyterapp.commands.execute('notebook:run-all-cells');")
        time.sleep(3)
        state = wait_for(driver, f"const s = (function(){{{NOTEBOOK_STATE}}})();"
                         "return (s.errors.length || (s.pending === 0 && s.kernel === 'idle')) ? s : null;",
                         400, "all cells to run")
        if state["errors"]:
            raise RuntimeError(f"cells raised errors: {state['errors']}")
        print("all cells ran without an error")
        before = wait_for(driver, STATUS, 60, "the dashboard's status line")
        print("after Run All:", before)
        click_button(driver, "torch.compile")     # a toggle, as a student would click it
        click_button(driver, "Run")
        after = wait_for(driver, f"const s = (function(){{{STATUS}}})(); return s !== {before!r} ? s : '';",
                         300, "the clicked run to finish")
        print("after clicking torch.compile + Run:", after)
        if not after.startswith("run "):
            raise RuntimeError(f"the clicked run did not succeed: {after}")
        time.sleep(2)                             # let the new plot image paint
        dashboard = driver.execute_script(
            "const w = document.querySelector('.widget-vbox'); w.scrollIntoView({block: 'start'}); return w;")
        time.sleep(1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        dashboard.screenshot(args.out)
        driver.save_screenshot(str(scratch / "window.png"))
        print(f"saved {args.out} (full window: {scratch / 'window.png'})")
        return 0
    finally:
        if driver is not None:
            driver.quit()
        if args.keep_open:
            print(f"JupyterLab still running at http://127.0.0.1:{port}/lab (pid {lab.pid})")
        else:
            lab.terminate()
            lab.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
