"""Headless Chromium for the report's browser tests, driven by Selenium through Debian's chromedriver.

    with Chromium(tmp_path / "profile") as browser:
        page = browser.open(Path("report.html"))
        page.evaluate("document.title")
        page.screenshot(Path("shot.png"))
        page.console_errors, page.requests

Selenium is told where chromedriver is, so it never looks for (or downloads) a driver of its own.
Console messages come from chromedriver's browser log, requests from its performance log.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
INSTALL_HINT = "apt-get install -y --no-install-recommends chromium chromium-driver"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
]


class Chromium:
    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        self.profile = profile
        self.timeout = timeout
        self.driver: Any = None

    def __enter__(self) -> Chromium:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={self.profile}", "--window-size=1400,900"]:
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        self.driver.set_page_load_timeout(self.timeout)
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()  # ends chromedriver and the browser it started
            self.driver = None

    def open(self, path: Path, width: int = 1400, height: int = 900, fragment: str = "") -> Page:
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        page = Page(self, path.resolve().as_uri() + (f"#{fragment}" if fragment else ""))
        self.driver.get("about:blank")  # a real load, even when only the fragment differs from the page before
        self.driver.get_log("browser")  # drop what an earlier page logged
        self.driver.get_log("performance")
        self.driver.get(page.url)  # returns once the page has loaded
        return page


class Page:
    def __init__(self, browser: Chromium, url: str) -> None:
        self.browser = browser
        self.url = url
        self._browser_log: list[dict[str, Any]] = []
        self._network: list[str] = []

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (statements allowed: the last one's value), as DevTools gives it."""
        r = self.browser.driver.execute_cdp_cmd("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"evaluating {expression!r}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    def _drain(self) -> None:
        driver = self.browser.driver
        self._browser_log += driver.get_log("browser")
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self._network.append(message["params"]["request"]["url"])

    @property
    def console_errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser errors (e.g. CSP violations)."""
        self._drain()
        return [f"{e.get('level')}: {e.get('message')}" for e in self._browser_log if e.get("level") in ("SEVERE", "WARNING")]

    @property
    def console_messages(self) -> list[dict[str, Any]]:
        self._drain()
        return list(self._browser_log)

    @property
    def requests(self) -> list[str]:
        """Every URL the page asked for, except the page itself."""
        self._drain()
        return [u for u in self._network if u != self.url.partition("#")[0]]

    def screenshot(self, path: Path, y: int = 0, height: int | None = None, width: int = 1400) -> None:
        """A PNG of the page from ``y`` (CSS pixels), ``height`` tall (default: the viewport)."""
        params: dict[str, Any] = {"format": "png"}
        if height or y:
            params["clip"] = {"x": 0, "y": y, "width": width, "height": height or 900, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.browser.driver.execute_cdp_cmd("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))
