"""Headless Chromium driven over its DevTools protocol: open a page, read what it renders, click, screenshot.

Used by ``ui_check.py`` to look at the MLflow UI and optuna-dashboard as a person does. The
browser is Debian's ``chromium`` package (a browser download from a tool's own site does not
work offline); the protocol is spoken with ``websocket-client``, so no driver binary is needed.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Chromium found: apt-get install -y chromium")


class Browser:
    """One headless Chromium with one tab; every method waits for its answer."""

    def __init__(self, width: int = 1600, height: int = 1000, timeout: float = 60) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="kd-chromium-"))
        cmd = [
            find_chromium(),
            "--headless=new",
            "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
            f"--user-data-dir={self.profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        self.log = open(self.profile / "chromium.log", "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self._ids = itertools.count(1)
        try:
            port = self._wait_port(timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
                pages = [t for t in json.load(reply) if t.get("type") == "page"]
            self.ws = websocket.create_connection(
                pages[0]["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True
            )
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
        except BaseException:
            self.close()
            raise

    def _wait_port(self, timeout: float) -> int:
        marker = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited ({self.proc.returncode}): {self._log_tail()}")
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise RuntimeError(f"chromium did not open its DevTools port in {timeout}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        self.log.flush()
        return (self.profile / "chromium.log").read_text(errors="replace")[-2000:]

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send one DevTools command and return its result (events arriving meanwhile are dropped)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params or {}}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises awaited) and return its JSON value."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')} in {expression[:200]}")
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        """Load ``url`` afresh: single-page apps read some routes (an artifact's path) only when they start."""
        self.call("Page.navigate", {"url": "about:blank"})
        self.call("Page.navigate", {"url": url})
        self.wait_for(lambda: self.js("document.readyState") == "complete", 120, f"page {url} to load")

    def text(self) -> str:
        """What a person can read on the page (``innerText``: hidden elements excluded)."""
        return str(self.js("document.body ? document.body.innerText : ''") or "")

    def wait_for(self, condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {timeout:.0f}s for {what}")
            time.sleep(0.3)

    def wait_for_text(self, needles: list[str], timeout: float = 30) -> str:
        """Wait until every needle is visible; raise naming the missing ones (and what the page shows)."""
        deadline = time.monotonic() + timeout
        while True:
            page = self.text()
            missing = [n for n in needles if n not in page]
            if not missing:
                return page
            if time.monotonic() > deadline:
                shown = " | ".join(page.split("\n")[:60])[:1500]
                raise TimeoutError(f"not shown after {timeout:.0f}s: {missing}; the page shows: {shown}")
            time.sleep(0.5)

    def click(self, selector_js: str) -> int:
        """Click every element the JS expression (an array of elements) returns; returns how many."""
        return int(
            self.js(f"(() => {{ const els = {selector_js}; els.forEach(e => e.click()); return els.length; }})()")
        )

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                if self.proc.poll() is None:
                    os.killpg(self.proc.pid, 9)
        self.log.close()
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
