"""Serving an example's page beside its socket: the app at ``/``, its assets, the shared ones.

Every example keeps its page in its own ``static/`` directory (``index.html`` plus what it
loads). ``serve_page`` returns the routes that serve, on the plugin's port:

* ``GET /``: ``static/index.html`` (WebSocket upgrades on ``/`` still reach the socket),
* ``/static/...``: the example's own assets,
* ``/shared/...``: what every page shares (``examples/static``: ``base.css``, ``app.js``),
* ``/favicon.ico``,
* the example's DEVELOPMENT-ONLY ``/dev/login`` when the app runs with ``--dev``.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from examples.common import Options, dev_login_route

SHARED = Path(__file__).parent / "static"


def serve_page(static: Path, *, login: web.RouteDef | None = None, old_path: str | None = None) -> list[web.AbstractRouteDef]:
    """The routes that serve the page in ``static`` at ``/`` (see the module docstring).

    ``old_path`` (``/chat``) redirects to ``/``, so links to where the page used to be still work.
    """
    index = static / "index.html"

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(index, headers={"Cache-Control": "no-cache"})

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
