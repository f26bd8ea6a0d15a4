"""JupyterLab and Chromium for the browser tests (tests/test_browser.py, tests/test_lab_panel.py).

JupyterLab runs on 127.0.0.1 (a free port, token auth, a temporary root and Jupyter dirs, no news
or update checks); Chromium is Debian's (``/usr/bin/chromium``, driven by Playwright for Python;
Playwright's own browser download is never used). Without them the tests skip with the reason,
except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import IN_CI

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("LDW_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
URL_TEXT = re.compile(r"(postgresql|mysql|sqlite)(\+\w+)?://|@127\.0\.0\.1:\d+/")

TIMEOUT_MS = 30_000  # one step (a kernel start, a cell, a widget round trip); the test takes ~20 s


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        unavailable(f"{CHROMIUM} not found: apt-get install chromium")
    for module, package in (("jupyterlab", "jupyterlab"), ("playwright.sync_api", "playwright")):
        try:
            __import__(module)
        except ImportError:
            unavailable(f"{package} is not installed: pip install -e '.[dev]'")
    return CHROMIUM


# -- JupyterLab --------------------------------------------------------------------------------

@dataclass
class Lab:
    url: str
    token: str
    root: Path
    log: Path

    def api(self, path: str, method: str = "GET") -> int:
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:  # loopback
            return response.status


_LAB_SETTINGS = {  # no news, update checks or toasts; the notebook's kernel starts unasked
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False,
                                        "doNotDisturbMode": True},
    "notebook-extension/tracker": {"autoStartDefaultKernel": True},
}


def _lab_settings(config_dir: Path) -> None:
    for name, values in _LAB_SETTINGS.items():
        path = config_dir / "lab" / "user-settings" / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def data_path() -> str | None:
    """JUPYTER_PATH for a venv made with ``--system-site-packages``: its own data folder, then
    its base Python's, whose packages (ipywidgets' lab extension) it also sees. ``None`` for
    a plain venv or no venv, where Jupyter's defaults already say it."""
    base = Path(sys.base_prefix, "share", "jupyter")
    if sys.prefix == sys.base_prefix or not base.is_dir():
        return None
    config = Path(sys.prefix, "pyvenv.cfg")
    if "include-system-site-packages = true" not in config.read_text():
        return None
    return os.pathsep.join([str(Path(sys.prefix, "share", "jupyter")), str(base)])


_LAB_ARGS = ["--LabApp.extension_manager=readonly", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


@contextlib.contextmanager
def jupyterlab(home: Path, env: dict[str, str], *, app: str = "jupyterlab") -> Iterator[Lab]:
    """JupyterLab (or, with ``app="jupyter_server"``, a bare Jupyter server with the same
    server extensions) until the block ends; then it and its kernels are stopped."""
    root, runtime = home / "root", home / "runtime"
    root.mkdir()
    _lab_settings(home / "config")
    token = secrets.token_hex(24)
    env = {**os.environ, **env, "JUPYTER_TOKEN": token, "JUPYTER_RUNTIME_DIR": str(runtime),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PLATFORM_DIRS": "1"}
    env.pop("JUPYTER_PATH", None)
    shared = data_path()
    if shared:
        env["JUPYTER_PATH"] = shared
    log = home / "jupyterlab.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", app, "--no-browser", "--ip=127.0.0.1", "--port=0",
             f"--ServerApp.root_dir={root}", "--ServerApp.port_retries=0",
             "--ServerApp.terminals_enabled=False",
             *(_LAB_ARGS if app == "jupyterlab" else []),
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    lab = Lab("", token, root, log)
    try:
        lab.url = _wait_for_server(process, runtime, log)
        yield lab
    finally:
        if lab.url:
            with contextlib.suppress(OSError, urllib.error.URLError):
                lab.api("/api/shutdown", "POST")  # stops the kernels too
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the server and its kernels
            process.wait()


def _wait_for_server(process: subprocess.Popen, runtime: Path, log: Path) -> str:
    """The base URL once the server answers (its port is read from its runtime file)."""
    deadline = time.monotonic() + 60
    info = runtime / f"jpserver-{process.pid}.json"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        if info.exists():
            with contextlib.suppress(ValueError, OSError):
                url = f"http://127.0.0.1:{json.loads(info.read_text())['port']}"
                with urllib.request.urlopen(f"{url}/api", timeout=2):  # loopback
                    return url
        time.sleep(0.1)
    pytest.fail(f"JupyterLab did not start within 60 s:\n{log.read_text()[-3000:]}")


def run_cell(page, cell, source: str | None = None) -> None:
    """Click into ``cell`` (typing ``source`` if given), Shift+Enter, wait for the kernel."""
    from playwright.sync_api import expect

    cell.locator(".cm-content").click()
    if source is not None:
        page.keyboard.type(source)
    page.keyboard.press("Shift+Enter")
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"))


