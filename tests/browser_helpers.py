"""Helpers for the browser tests: an example app served from a background thread, Debian's
Chromium driven by Playwright (sync API), and screenshots of failing tests in test-results/.

Playwright's sync API refuses to run inside a running asyncio loop, so the example runs in a
thread with its own loop; ``server.call(coro_fn)`` runs a coroutine there (for instance a
server-side insert) and returns its result.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from examples.common import Options, make_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
RESULTS = Path(__file__).resolve().parents[1] / "test-results"
SECRET = "browser-test-secret-with-enough-bytes"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


class ExampleServer:
    """``create_app(options, **kwargs)`` of an example, running in a thread until ``stop()``."""

    def __init__(self, create_app: Callable[..., Awaitable[Any]], *, dev: bool = True, **kwargs: Any) -> None:
        self.options = Options(
            port=0, host="127.0.0.1", db=f"memory://browser-{uuid.uuid4().hex}", jwt_secret=SECRET,
            dev=dev,  # the pages sign in through the development login, like `make demo`
        )
        self._create_app = create_app
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(),))
        self.db: Any = None
        self.plugin: Any = None

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.db, self.plugin, jobs = await self._create_app(self.options, **self._kwargs)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        tasks = [asyncio.create_task(job()) for job in jobs]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.db.disconnect()

    def start(self) -> ExampleServer:
        self._thread.start()
        if not self._ready.wait(30):
            raise TimeoutError("the example did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        self._loop.close()

    @property
    def port(self) -> int:
        return self.plugin.port

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def token(self, sub: str, **claims: Any) -> str:
        return make_token(SECRET, sub, **claims)

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 10) -> Any:
        """Run ``fn()`` on the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)


@contextmanager
def served(create_app: Callable[..., Awaitable[Any]], *, dev: bool = True, **kwargs: Any) -> Iterator[ExampleServer]:
    server = ExampleServer(create_app, dev=dev, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def static_files(files: dict[str, Path]) -> Iterator[str]:
    """Serve ``files`` (name -> path) at ``http://127.0.0.1:PORT/<name>``; yields the origin.

    A real loopback server, not Playwright's request interception: Chromium's Local Network
    Access checks treat intercepted documents as public and block their sockets to loopback.
    """

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = files.get(urlparse(self.path).path.lstrip("/"))
            if path is None:
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", mimetypes.guess_type(path.name)[0] or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@contextmanager
def chromium(*extra_args: str) -> Iterator[Any]:
    """Debian's Chromium, headless, through Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=[*CHROMIUM_ARGS, *extra_args]
        )
        try:
            yield browser
        finally:
            browser.close()


class Pages:
    """Browser contexts (one per user) whose pages are screenshotted if the test fails."""

    def __init__(self, browser: Any) -> None:
        self.browser = browser
        self.contexts: list[Any] = []
        self.pages: list[Any] = []
        self.console: list[str] = []

    def new(self, url: str | None = None, *, viewport: dict[str, int] | None = None) -> Any:
        """A page in a fresh context (its own storage: another user); opens ``url`` if given.

        ``viewport``: ``DESKTOP`` (the default) or ``PHONE`` (390 px wide, a touch device).
        """
        phone = viewport is not None and viewport["width"] < 600
        context = self.browser.new_context(
            viewport=viewport or DESKTOP, is_mobile=phone, has_touch=phone, device_scale_factor=1
        )
        context.set_default_timeout(10_000)
        page = context.new_page()
        page.on("console", lambda msg: self.console.append(f"[{msg.type}] {msg.text}"))
        page.on("pageerror", lambda exc: self.console.append(f"[pageerror] {exc}"))
        self.contexts.append(context)
        self.pages.append(page)
        if url is not None:
            page.goto(url)
        return page

    def errors(self) -> list[str]:
        """What the pages logged as errors, or threw, so far."""
        return [line for line in self.console if line.startswith(("[error]", "[pageerror]"))]

    def screenshot(self, name: str) -> list[Path]:
        RESULTS.mkdir(exist_ok=True)
        safe = _safe(name)
        paths = []
        for i, page in enumerate(self.pages):
            path = RESULTS / f"{safe}-{i}.png"
            try:
                page.screenshot(path=str(path), full_page=True)
            except Exception:  # a crashed page: keep the others
                continue
            paths.append(path)
        return paths

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def horizontal_overflow(page: Any) -> int:
    """How many CSS pixels the page scrolls sideways (0 when it fits its viewport's width)."""
    return int(page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth"))


def outside_viewport(locator: Any) -> str | None:
    """Why ``locator``'s element is not wholly inside its page's viewport (below the sticky
    header, which covers what scrolls under it), or None when it is."""
    box = locator.evaluate(
        "(el) => { const r = el.getBoundingClientRect(); const bar = document.querySelector('.topbar');"
        " const top = bar ? Math.max(0, bar.getBoundingClientRect().bottom) : 0;"
        " return {top: r.top, bottom: r.bottom, left: r.left, right: r.right, shown: el.checkVisibility(),"
        " header: top, width: innerWidth, height: innerHeight}; }"
    )
    if not box["shown"]:
        return "not displayed"
    inside = (
        box["top"] >= box["header"] - 0.5
        and box["left"] >= 0
        and box["bottom"] <= box["height"] + 0.5
        and box["right"] <= box["width"] + 0.5
    )
    if inside:
        return None
    return (
        f"spans x {box['left']:.0f}..{box['right']:.0f}, y {box['top']:.0f}..{box['bottom']:.0f}"
        f" in a {box['width']}x{box['height']} viewport whose header ends at y {box['header']:.0f}"
    )


def vertical_overflow(page: Any) -> int:
    """How many CSS pixels the page itself scrolls down (0 when it fits its viewport's height)."""
    return int(page.evaluate("document.documentElement.scrollHeight - document.documentElement.clientHeight"))


# The placeholder's text width against the room its input leaves for text (an input clips its
# placeholder without any scrollWidth to show for it, so the text is measured with the input's font).
_CUT_PLACEHOLDERS = """() => {
  const ctx = document.createElement("canvas").getContext("2d");
  const cut = [];
  for (const input of document.querySelectorAll("input[placeholder]")) {
    if (!input.placeholder || input.value || !input.checkVisibility()) continue;
    const cs = getComputedStyle(input, "::placeholder");
    ctx.font = `${cs.fontStyle} ${cs.fontWeight} ${cs.fontSize} ${cs.fontFamily}`;
    const own = getComputedStyle(input);
    const room = input.clientWidth - parseFloat(own.paddingLeft) - parseFloat(own.paddingRight);
    const text = ctx.measureText(input.placeholder).width;
    if (text > room) cut.push(`#${input.id} "${input.placeholder}": ${Math.ceil(text)} px of text in ${Math.floor(room)} px`);
  }
  return cut;
}"""


def cut_placeholders(page: Any) -> list[str]:
    """The visible, empty inputs whose placeholder does not fit (it would be cut off)."""
    return list(page.evaluate(_CUT_PLACEHOLDERS))


# The phone header every example page shares: the brand and the connection (and any badge) on
# the first row; who is signed in on the left of the second row, "Sign out" on its right.
_HEADER = """() => {
  const box = (sel) => { const el = document.querySelector(sel); return el && el.checkVisibility() ? el.getBoundingClientRect() : null; };
  const bar = document.querySelector(".topbar");
  const padRight = parseFloat(getComputedStyle(bar).paddingRight);
  return { bar: bar.getBoundingClientRect(), padRight, brand: box(".topbar .brand"),
           who: box(".topbar .whoami"), out: box(".topbar #sign-out") };
}"""


def header_problems(page: Any) -> list[str]:
    """What is out of place in a signed-in page's header at phone width: "Sign out" must sit at the right end
    of the row below the brand, on the same row as who is signed in."""
    h = page.evaluate(_HEADER)
    out, who, brand, bar = h["out"], h["who"], h["brand"], h["bar"]
    if out is None or who is None:
        return ["no visible Sign out button or signed-in name"]
    problems = []
    if bar["right"] - h["padRight"] - out["right"] > 2:
        problems.append(f"Sign out is not right-aligned (ends at x={out['right']:.0f} of {bar['right']:.0f})")
    if out["top"] < brand["bottom"]:
        problems.append("Sign out is on the brand's row")
    if who["bottom"] <= out["top"] or out["bottom"] <= who["top"]:
        problems.append("Sign out and the signed-in name are on different rows")
    return problems


def shoot(page: Any, name: str) -> Path | None:
    """With ``S3DB_SCREENSHOTS=1``, a full-page screenshot in test-results/ (to look at a page
    while working on it; tests never compare them)."""
    if os.environ.get("S3DB_SCREENSHOTS") != "1":
        return None
    RESULTS.mkdir(exist_ok=True)
    page.evaluate("Promise.all(document.getAnimations().map((a) => a.finished))")
    path = RESULTS / f"{_safe(name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@contextmanager
def pages_for(request: pytest.FixtureRequest, browser: Any) -> Iterator[Pages]:
    """``Pages`` for the body of one test: if it fails, a screenshot of every page and the
    browser console go to test-results/<test name>-*."""
    pages = Pages(browser)
    try:
        yield pages
    except BaseException:
        name = _safe(request.node.name)
        pages.screenshot(name)
        (RESULTS / f"{name}-console.txt").write_text("\n".join(pages.console) + "\n")
        raise
    finally:
        pages.close()
