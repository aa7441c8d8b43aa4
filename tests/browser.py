"""Open a page in a real headless Chromium and watch it over the DevTools protocol: every request the page makes,
every console message, exception and log entry, and a screenshot. For tests of documents deployc writes for a
person to open (report.html): they must render, and fetch nothing.

Chromium runs in a process group of its own (its renderer and GPU processes with it), and is stopped by that
group's id, which is the pid this helper started. Every wait has a deadline: a hung browser fails the test.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROBLEM_EVENTS = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown", "Log.entryAdded")


def chromium_binary() -> str | None:
    """/usr/bin/chromium (Debian's package, `make system-deps`), else chromium / chromium-browser on PATH."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageVisit:
    """What one page load did: the requests it sent, its console/exception/log events, and what evaluated."""
    requests: list[str] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    screenshot: bytes = b""
    values: dict[str, Any] = field(default_factory=dict)


class Chromium:
    """A headless Chromium with a DevTools endpoint on a port it picks itself (read from DevToolsActivePort)."""

    def __init__(self, profile: Path, binary: str | None = None, timeout_s: float = 60):
        self.profile = Path(profile)
        self.binary = binary or chromium_binary() or "chromium"
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.profile.parent / f"{self.profile.name}.log"
        self._ws: Any = None
        self._stack = contextlib.ExitStack()
        self._next_id = 0

    def __enter__(self) -> Chromium:
        from websockets.sync.client import connect

        self.profile.mkdir(parents=True, exist_ok=True)
        (self.profile / "DevToolsActivePort").unlink(missing_ok=True)  # a reused profile's, from an earlier run
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={self.profile}",
                 "--remote-debugging-port=0", "--remote-allow-origins=*", "--no-first-run",
                 "--no-default-browser-check", "--disable-extensions", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--mute-audio", "about:blank"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            port, path = self._endpoint()
            self._ws = self._stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None,
                                                         open_timeout=self.timeout_s))
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _endpoint(self) -> tuple[int, str]:
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"chromium exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            lines = active.read_text().split() if active.is_file() else []
            if len(lines) >= 2:
                return int(lines[0]), lines[1]
            time.sleep(0.1)
        raise AssertionError(f"chromium wrote no {active} within {self.timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Close the connection, then end chromium's process group (its id is the pid started here)."""
        self._stack.close()
        self._ws = None
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        except ProcessLookupError:
            pass
        with contextlib.suppress(ProcessLookupError):  # renderers left in the group after the browser exited
            os.killpg(self.proc.pid, signal.SIGKILL)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """One DevTools command; the events that arrive meanwhile are appended to `events`."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._recv(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            if events is not None and "method" in reply:
                events.append(reply)

    def _recv(self, deadline: float, what: str) -> dict[str, Any]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"chromium did not answer {what} within {self.timeout_s} s")
        try:
            return dict(json.loads(self._ws.recv(timeout=left)))
        except TimeoutError:
            raise AssertionError(f"chromium did not answer {what} within {self.timeout_s} s") from None

    def collect(self, events: list[dict[str, Any]], seconds: float) -> None:
        """Events that arrive within `seconds` (late requests of a page that has loaded)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                events.append(dict(json.loads(self._ws.recv(timeout=left))))
            except TimeoutError:
                return

    def visit(self, url: str, width: int = 1200, height: int = 900,
              evaluate: dict[str, str] | None = None) -> PageVisit:
        """Load `url` in a fresh tab with the Network, Runtime, Log and Page domains on; return its requests, any
        console message, exception or log entry, the values of the `evaluate` expressions (evaluated by DevTools
        after the load, not by the page), and a PNG of the whole page at `width` CSS pixels."""
        events: list[dict[str, Any]] = []
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session, events=events)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False}, session=session, events=events)
        events.clear()  # about:blank's own events
        self.send("Page.navigate", {"url": url}, session=session, events=events)
        deadline = time.monotonic() + self.timeout_s
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            events.append(self._recv(deadline, f"the load event of {url}"))
        self.collect(events, 0.5)
        visit = PageVisit()
        for name, expr in (evaluate or {}).items():
            r = self.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=session,
                          events=events)
            visit.values[name] = r.get("result", {}).get("value")
        size = self.send("Page.getLayoutMetrics", session=session, events=events)["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}}, session=session,
            events=events)
        visit.screenshot = base64.b64decode(shot["data"])
        visit.requests = [e["params"]["request"]["url"] for e in events
                          if e.get("method") == "Network.requestWillBeSent"]
        visit.problems = [e for e in events if e.get("method") in PROBLEM_EVENTS]
        self.send("Target.closeTarget", {"targetId": target})
        return visit
