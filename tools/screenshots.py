"""The README's screenshots, from a `make demo` run: the page on the demo's model, TensorBoard's scalars of its job.

Run: .venv/bin/python -m tools.screenshots [--demo demo-output] [--out docs]
Both are taken in Debian's headless chromium (tools/browser.py), against servers on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gluonseg.util import free_port
from tools.browser import Browser

BIN = Path(sys.executable).parent


def wait_http(url: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited ({process.returncode}) before {url} answered")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer in {timeout} s")


def page_shot(demo: Path, out: Path) -> Path:
    port = free_port()
    command = [str(BIN / "gluonseg"), "serve", "--model-dir", str(demo / "model"), "--port", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", server)
        picture = sorted((demo / "data" / "validation").glob("*.jpg"))[0]
        with Browser(width=1100, height=620) as browser:
            browser.open(f"http://127.0.0.1:{port}/")
            browser.choose_file("#file", picture)
            browser.wait_for("document.getElementById('status').dataset.state === 'done'", 120)
            return browser.screenshot(out / "page.png")
    finally:
        server.terminate()
        server.wait(timeout=60)


def tensorboard_shot(demo: Path, out: Path) -> Path:
    port = free_port()
    logdir = demo / "model" / "output" / "tensorboard"
    command = [str(BIN / "tensorboard"), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)]
    board = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/", board)
        with Browser(width=1500, height=1000) as browser:
            browser.open(f"http://127.0.0.1:{port}/?tagFilter=validation#timeseries")
            browser.wait_for("document.querySelectorAll('canvas, svg').length > 4", 60)
            # the settings pane opens by default and hides a column of charts
            close = "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Settings')?.click()"
            browser.evaluate(close)
            time.sleep(4)  # the charts and pictures draw after their data arrives
            return browser.screenshot(out / "tensorboard.png")
    finally:
        board.terminate()
        board.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo-output"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    for shot in (page_shot(args.demo, args.out), tensorboard_shot(args.demo, args.out)):
        print(f"wrote {shot}")


if __name__ == "__main__":
    main()
