"""Headless Chromium driven over the DevTools protocol (websocket-client), for the review
page's browser test. No WebDriver, no browser download: Debian's `chromium` package
(scripts/install_test_tools.sh links it into $KAKUGO_CACHE/bin).

    with Browser.launch(tmp_path) as browser:
        browser.navigate("file:///.../index.html")
        browser.click("#save")
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import websocket


def find_chromium() -> str | None:
    cache = Path(os.environ.get("KAKUGO_CACHE", Path.home() / ".cache" / "kakugo")) / "bin"
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if (cache / name).exists():
            return str(cache / name)
        if found := shutil.which(name):
            return found
    return None


class CDPError(RuntimeError):
    pass


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], port: int, profile: Path) -> None:
        self.process, self.port, self.profile = process, port, profile
        self._ids = itertools.count(1)
        version = self._http("/json/version")
        self.browser_ws = websocket.create_connection(version["webSocketDebuggerUrl"], timeout=30)
        page = next(t for t in self._http("/json/list") if t["type"] == "page")
        self.page_ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.send("Page.enable")
        self.send("Runtime.enable")

    @classmethod
    def launch(cls, workdir: Path, chromium: str | None = None) -> Browser:
        binary = chromium or find_chromium()
        if binary is None:
            raise CDPError("no chromium on PATH or in $KAKUGO_CACHE/bin")
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise CDPError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        return cls(process, port, profile)

    def _http(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=30) as r:
            return json.load(r)

    def _call(self, ws: websocket.WebSocket, method: str, params: dict[str, Any]) -> Any:
        msg_id = next(self._ids)
        ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            reply = json.loads(ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def send(self, method: str, **params: Any) -> Any:
        """A command on the page's session."""
        return self._call(self.page_ws, method, params)

    def browser(self, method: str, **params: Any) -> Any:
        """A command on the browser's session (Browser.*)."""
        return self._call(self.browser_ws, method, params)

    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expression)
            if value:
                return value
            time.sleep(0.05)
        raise CDPError(f"timed out waiting for {expression}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (scrolled into view first)."""
        box = self.eval(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()"
        )
        if not box:
            raise CDPError(f"no element {selector}")
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def press(self, key: str) -> None:
        """A key press as a keyboard makes it (keyDown with its text, keyUp)."""
        code = f"Key{key.upper()}" if len(key) == 1 and key.isalpha() else key
        vk = ord(key.upper()) if len(key) == 1 else 0
        self.send(
            "Input.dispatchKeyEvent",
            type="keyDown",
            key=key,
            code=code,
            text=key,
            windowsVirtualKeyCode=vk,
        )
        self.send(
            "Input.dispatchKeyEvent", type="keyUp", key=key, code=code, windowsVirtualKeyCode=vk
        )

    def type_text(self, text: str) -> None:
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        for ws in (self.page_ws, self.browser_ws):
            with contextlib.suppress(Exception):  # closing is best effort
                ws.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
