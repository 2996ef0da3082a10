"""A minimal headless-Chromium driver over the DevTools protocol, on a pipe (no port, no websocket).

Chromium's ``--remote-debugging-pipe`` reads protocol messages on fd 3 and writes them on fd 4,
each a JSON object followed by a NUL byte. That needs no extra dependency and opens no socket.

    with Chromium(tmp_path / "profile") as browser:
        page = browser.open(Path("report.html"))
        page.evaluate("document.title")
        page.screenshot(Path("shot.png"))
        page.console_errors, page.requests
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
    "--remote-debugging-pipe",
]


class CdpError(RuntimeError):
    pass


class Chromium:
    def __init__(self, profile: Path, timeout: float = 30.0) -> None:
        self.profile = profile
        self.timeout = timeout
        self._next = 0
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._events_cv = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ process

    def __enter__(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def child_fds() -> None:  # runs in the child, before exec: its fds 3 and 4 become the pipe
            a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            # Only fds 3 and 4 (made by dup2, so inheritable) cross the exec: Python opens
            # every other fd close-on-exec.
            preexec_fn=child_fds,
            close_fds=False,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._w = os.fdopen(to_chrome_w, "wb", buffering=0)
        self._r = os.fdopen(from_chrome_r, "rb", buffering=0)
        self._reader = threading.Thread(target=self._read, name="cdp-reader", daemon=True)
        self._reader.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                self.send("Browser.close", timeout=5)
        except (CdpError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            self.proc.wait(timeout=10)
        for f in (self._w, self._r):
            with contextlib.suppress(OSError):
                f.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    # ------------------------------------------------------------------ protocol

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self._r.read(65536)
            except (OSError, ValueError):
                return
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._replies:
                    self._replies[msg["id"]].put(msg)
                else:
                    with self._events_cv:
                        self.events.append(msg)
                        self._events_cv.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float | None = None) -> dict[str, Any]:
        self._next += 1
        mid = self._next
        box: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies[mid] = box
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._w.write(json.dumps(msg).encode() + b"\0")
        try:
            reply = box.get(timeout=timeout or self.timeout)
        except queue.Empty:
            raise CdpError(f"no reply to {method} within {timeout or self.timeout} s") from None
        finally:
            del self._replies[mid]
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    def wait_event(self, method: str, session: str | None, timeout: float | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._events_cv:
            while True:
                for e in self.events:
                    if e.get("method") == method and (session is None or e.get("sessionId") == session):
                        return e
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"no {method} event within {timeout or self.timeout} s")
                self._events_cv.wait(left)

    def open(self, path: Path, width: int = 1400, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        page.url = path.resolve().as_uri()
        self.send("Page.navigate", {"url": page.url}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return page


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session
        self.url = ""

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [e["params"] for e in list(self.browser.events) if e.get("method") == method and e.get("sessionId") == self.session]

    def evaluate(self, expression: str) -> Any:
        r = self.browser.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=self.session)
        if "exceptionDetails" in r:
            raise CdpError(f"evaluating {expression!r}: {r['exceptionDetails']}")
        return r.get("result", {}).get("value")

    @property
    def console_errors(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors (e.g. CSP violations)."""
        calls = [e for e in self._events("Runtime.consoleAPICalled") if e.get("type") in ("error", "warning", "assert")]
        out = [f"console.{e['type']}: {[a.get('value', a.get('description')) for a in e.get('args', [])]}" for e in calls]
        out += [f"exception: {e['exceptionDetails']}" for e in self._events("Runtime.exceptionThrown")]
        out += [f"log {e['entry'].get('level')}: {e['entry'].get('text')} {e['entry'].get('url', '')}" for e in self._events("Log.entryAdded") if e["entry"].get("level") in ("error", "warning")]
        return out

    @property
    def console_messages(self) -> list[dict[str, Any]]:
        return self._events("Runtime.consoleAPICalled")

    @property
    def requests(self) -> list[str]:
        """Every URL the page asked for, except the page itself."""
        return [e["request"]["url"] for e in self._events("Network.requestWillBeSent") if e["request"]["url"] != self.url]

    def screenshot(self, path: Path, y: int = 0, height: int | None = None, width: int = 1400) -> None:
        """A PNG of the page from ``y`` (CSS pixels), ``height`` tall (default: the viewport)."""
        params: dict[str, Any] = {"format": "png"}
        if height or y:
            params["clip"] = {"x": 0, "y": y, "width": width, "height": height or 900, "scale": 1}
            params["captureBeyondViewport"] = True
        data = self.browser.send("Page.captureScreenshot", params, session=self.session)["data"]
        path.write_bytes(base64.b64decode(data))
