"""Serving an example's page beside its socket: the app at ``/``, its assets, the shared ones.

Every example keeps its page in its own ``static/`` directory (``index.html`` plus what it
loads). ``serve_page`` returns the routes that serve, on the plugin's port:

* ``GET /``: ``static/index.html`` inside the shared head and top bar (``render_page``;
  WebSocket upgrades on ``/`` still reach the socket),
* ``/static/...``: the example's own assets,
* ``/shared/...``: what every page shares (``examples/static``: ``base.css``, ``app.js``; the
  head and top bar, ``layout.html``, are filled in on the server),
* ``/favicon.ico``,
* the example's DEVELOPMENT-ONLY ``/dev/login`` when the app runs with ``--dev``.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from aiohttp import web

from examples.common import Options, dev_login_route

SHARED = Path(__file__).parent / "static"
LAYOUT = SHARED / "layout.html"

# A page's own head and top-bar values (the first line of its index.html) and its top-bar items.
_PAGE = re.compile(r"\A<!--page ([^>]*)-->\n")
_ATTRIBUTE = re.compile(r'([a-z]+)="([^"]*)"')
_SLOT = re.compile(r"<!--(topbar-start|topbar-end)-->\n(.*?)<!--/\1-->\n", re.S)
_NOTE = "<!-- The head and the top bar are examples/static/layout.html (examples/pages.py fills them in). -->\n"
DEFAULTS = {"viewport": "width=device-width, initial-scale=1", "whoami": ""}


def render_page(index: Path) -> str:
    """An example's page: ``layout.html`` (the head and the top bar every page shares) filled in
    with the values on the first line of ``index``, ``<!--page title="..." brand="..."
    stylesheet="..." [viewport="..."] [whoami="..."]-->``, and its own top-bar items between
    ``<!--topbar-start-->``/``<!--topbar-end-->`` and their closing comments (before the spacer,
    before the sign-out button), then the rest of ``index``."""
    text = index.read_text()
    header = _PAGE.match(text)
    if header is None:
        raise ValueError(f"{index}: the first line must be <!--page title=... brand=... stylesheet=...-->")
    values = {**DEFAULTS, **dict(_ATTRIBUTE.findall(header.group(1)))}
    body = text[header.end() :].replace(_NOTE, "", 1)
    slots = {"topbar-start": "", "topbar-end": ""}
    for match in _SLOT.finditer(body):
        slots[match.group(1)] = match.group(2)
    body = _SLOT.sub("", body)
    page = LAYOUT.read_text()
    for name, value in values.items():
        page = page.replace("{" + name + "}", html.escape(value, quote=True))
    for name, value in slots.items():
        page = page.replace("{" + name + "}", value)
    return page + body


def serve_page(static: Path, *, login: web.RouteDef | None = None, old_path: str | None = None) -> list[web.AbstractRouteDef]:
    """The routes that serve the page in ``static`` at ``/`` (see the module docstring).

    ``old_path`` (``/chat``) redirects to ``/``, so links to where the page used to be still work.
    """
    index = static / "index.html"

    async def page(request: web.Request) -> web.Response:
        return web.Response(
            text=render_page(index), content_type="text/html", headers={"Cache-Control": "no-cache"}
        )

    async def favicon(request: web.Request) -> web.FileResponse:
        return web.FileResponse(SHARED / "favicon.ico", headers={"Content-Type": "image/x-icon"})

    routes: list[web.AbstractRouteDef] = [
        web.get("/", page),
        web.static("/static", static),
        web.static("/shared", SHARED),
        web.get("/favicon.ico", favicon),
    ]
    if old_path is not None:

        async def moved(request: web.Request) -> web.Response:
            raise web.HTTPFound("/")

        routes.append(web.get(old_path, moved))
    if login is not None:
        routes.append(login)
    return routes


def example_page(
    app_file: str,
    options: Options,
    *,
    roles: tuple[str, ...] = ("user",),
    claims: dict[str, tuple[str, ...]] | None = None,
    old_path: str | None = None,
) -> list[web.AbstractRouteDef]:
    """The page in the ``static/`` directory beside ``app_file`` (an example's ``__file__``) and,
    with ``--dev`` (``options.dev``), ``/dev/login`` offering ``roles`` and the ``claims`` choices."""
    login = dev_login_route(options.jwt_secret, allowed_roles=roles, claims=claims) if options.dev else None
    return serve_page(Path(app_file).parent / "static", login=login, old_path=old_path)
