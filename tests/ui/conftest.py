"""Browser tests: the pages served by a real server in this process (over the test's
database), driven by Playwright in Debian's chromium (never a downloaded browser).

Every test starts from the demo with its open cases, loaded at a fixed Wednesday morning
(``MORNING`` in tests/conftest.py) so what is due today, at risk or overdue does not depend on when the suite
runs; the server's clock runs on from that moment while the test does.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    # Debian's chromium, with the flags a machine without network needs; Playwright passes
    # --no-sandbox itself (chromiumSandbox defaults to false).
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run"]}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args: dict[str, Any]) -> dict[str, Any]:
    return {**browser_context_args, "locale": "zh-CN", "timezone_id": "Asia/Shanghai",
            "viewport": {"width": 1280, "height": 800}}


@pytest.fixture
def server(app: Any, demo_cases_loaded: dict[str, str]) -> Iterator[str]:
    """The app on a free port of 127.0.0.1, in a thread; yields its base address."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, name="pages-under-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def quiet_page(page: Any, server: str) -> Iterator[None]:
    """Leave the page on about:blank before the server and its database go: the modeler
    keeps asking the server (lint lists, expression checks) after a test's last step, and a
    request served while the database is disposed keeps a connection nobody closes."""
    yield
    page.goto("about:blank")


def sign_in(page: Any, server: str, username: str, password: str = "demo") -> None:
    page.goto(f"{server}/login")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("button[type=submit].primary")
    page.wait_for_url(f"{server}/")


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
