"""Load the study's HTML report in a real headless browser and check it (``make check-report``).

    python tools/check_report.py results/demo/report.html [--screenshot out.png] [--browser chromium]

Starts Debian's ``chromium`` headless with a throw-away profile and no network services, drives it
over the DevTools protocol (the ``websocket-client`` package, which Jupyter already installs), opens
the report from its ``file://`` URL, and fails (exit status 1) on:

- any console message of level error or warning, uncaught exception, or browser log entry of level
  error (a failed load, a blocked request — the report must open offline);
- any ``<img>`` that did not decode (``complete`` and ``naturalWidth > 0``) or has no alt text;
- a page without images or tables.

It writes a full-page screenshot (default: beside the report, ``report.png``) and prints what it
counted. Why the DevTools protocol and not ``chromium --dump-dom``: the DOM dump shows the ``<img>``
tags but not whether the browser could decode them, and Chromium's stderr logging does not reliably
report console errors in the new headless mode; Playwright would add an npm toolchain for the same
three calls. Chromium is not installed in CI, so this is a script, not a test: ``apt-get install -y
chromium`` (Debian) first.
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-default-apps", "--remote-debugging-port=0",
         "--window-size=1280,900"]
IMAGES_JS = """JSON.stringify({
  images: Array.from(document.images).map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth})),
  tables: document.querySelectorAll('table').length,
  height: document.documentElement.scrollHeight})"""


class DevTools:
    """A minimal DevTools-protocol session on one page target: send commands, collect events."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.socket = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, **params: object) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout:.0f} s")
            self.events.append(json.loads(self.socket.recv()))


def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else BROWSERS):
        path = shutil.which(candidate)
        if path:
            return path
    raise SystemExit("check_report: no Chromium found; install it (Debian: `apt-get install -y chromium`) or pass --browser")


def _devtools_port(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """The port Chromium announces on stderr (``DevTools listening on ws://127.0.0.1:PORT/...``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if "DevTools listening on" in line:
            return int(line.split("ws://")[1].split("/")[0].rsplit(":", 1)[1])
        if not line and process.poll() is not None:
            break
    raise SystemExit(f"check_report: the browser did not start (exit status {process.poll()})")


def problems_in(events: list[dict]) -> list[str]:
    """Console errors/warnings, uncaught exceptions and error log entries among DevTools ``events``."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
            found.append(f"console.{params['type']}: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails', {}).get('text', '')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            entry = params["entry"]
            found.append(f"log {entry['level']}: {entry.get('text', '')} {entry.get('url', '')}".strip())
    return found


def check(report: Path, screenshot: Path, browser: str | None = None) -> list[str]:
    """Load ``report``, write ``screenshot``, and return every problem found (empty: the check passed)."""
    with tempfile.TemporaryDirectory(prefix="check-report-") as profile_dir:
        process = subprocess.Popen([find_browser(browser), *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = _devtools_port(process)
            targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
            page = next(t for t in targets if t.get("type") == "page")
            tools = DevTools(page["webSocketDebuggerUrl"])
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable")
            tools.call("Page.navigate", url=report.resolve().as_uri())
            tools.wait_for("Page.loadEventFired")
            found = json.loads(tools.call("Runtime.evaluate", expression=IMAGES_JS, returnByValue=True)["result"]["value"])
            shot = tools.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                              clip={"x": 0, "y": 0, "width": 1280, "height": min(found["height"], 16000), "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            problems = problems_in(tools.events)
        finally:
            process.terminate()
            process.wait(timeout=30)
    problems += [f"image {i} ({img['alt'][:60]!r}) did not load" for i, img in enumerate(found["images"]) if not img["ok"]]
    problems += [f"image {i} has no alt text" for i, img in enumerate(found["images"]) if not img["alt"].strip()]
    if not found["images"] or not found["tables"]:
        problems.append(f"{len(found['images'])} images and {found['tables']} tables: the report is incomplete")
    print(f"check_report: {report}: {len(found['images'])} images (all decoded: {all(i['ok'] for i in found['images'])}), "
          f"{found['tables']} tables, page {found['height']} px tall; screenshot {screenshot}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshot", type=Path, default=None, help="default: report.png beside the report")
    parser.add_argument("--browser", default=None, help=f"executable (default: the first of {', '.join(BROWSERS)} on PATH)")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        raise SystemExit(f"check_report: {args.report} does not exist; run `make report` first")
    problems = check(args.report, args.screenshot or args.report.with_suffix(".png"), args.browser)
    for problem in problems:
        print(f"  FAIL {problem}", file=sys.stderr)
    print("check_report: " + ("FAILED" if problems else "passed: no console error, every image present"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
