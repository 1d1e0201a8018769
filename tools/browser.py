"""Debian's headless Chromium, driven over the DevTools protocol: the page test and the README screenshots.

No browser is downloaded: `chromium` comes from Debian (installed with apt-get when this runs as root and it
is missing; otherwise the one command to run is said). The browser only ever talks to 127.0.0.1.
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

INSTALL_COMMAND = "apt-get update && apt-get install -y chromium"


class BrowserError(RuntimeError):
    pass


def chromium_binary() -> str:
    """Debian's chromium, installed as root when missing."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0:
        raise BrowserError(f"Debian's chromium is missing and this is not root; run: sudo sh -c '{INSTALL_COMMAND}'")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("chromium")
    if not found:
        raise BrowserError("apt-get installed chromium but it is not on the PATH")
    return found


class Browser:
    """One headless Chromium with one page; `with Browser() as b:` closes it (and its profile) at the end."""

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        import websocket

        self._profile = Path(tempfile.mkdtemp(prefix="gluonseg-chromium-"))
        command = [
            chromium_binary(),
            "--headless=new",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",  # the browser picks a free port and writes it into the profile
            "--remote-allow-origins=*",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        if os.geteuid() == 0:
            command.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self._process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._ids = itertools.count(1)
        try:
            port = self._port(timeout)
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout)
        except Exception:
            self.close()
            raise
        self.call("Page.enable")
        self.call("Runtime.enable")
        # The window's own frame takes part of --window-size: the page gets exactly width x height.
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _port(self, timeout: float) -> int:
        marker = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(
                    f"chromium exited ({self._process.returncode}): {self._process.stderr.read()[-2000:]!r}"
                )
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise BrowserError(f"chromium opened no DevTools port in {timeout} s")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events that arrive meanwhile are skipped)."""
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._socket.recv())
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise BrowserError(f"{method}: {message['error']}")
            return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60.0) -> Any:
        """Until `expression` is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.1)
        raise BrowserError(f"{expression!r} still false after {timeout} s")

    def open(self, url: str, timeout: float = 60.0) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'", timeout)

    def choose_file(self, selector: str, path: Path) -> None:
        """As a user picking `path` in the file input `selector` (the page gets its change event)."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise BrowserError(f"no {selector} in the page")
        self.call("DOM.setFileInputFiles", files=[str(Path(path).resolve())], nodeId=node)

    def screenshot(self, path: Path) -> Path:
        shot = self.call("Page.captureScreenshot", format="png")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(base64.b64decode(shot["data"]))
        return Path(path)

    def close(self) -> None:
        socket = getattr(self, "_socket", None)
        if socket is not None:
            socket.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
