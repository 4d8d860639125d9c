"""What every example app shares: its command line, the JWT secret, a dev-only login, starting
(``start_app``) and running.

    python -m examples.<name> [--port PORT] [--db CONNECTION_STRING] [--host HOST] [--broker URL] [--dev]

Tokens are signed with ``JWT_SECRET``. ``--dev`` is for trying an example on your own machine:
it signs with a well-known development secret and mounts the passwordless ``/dev/login``, so it
is refused when ``JWT_SECRET`` is set (an operator's deployment never gets either); without
``--dev``, ``JWT_SECRET`` is required.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
import structlog
from aiohttp import web

from s3db_core import Database, Resource, ValidationError
from s3db_ws_plugin import WebSocketPlugin
from s3db_ws_plugin.cli import add_logging_options, configure_logging
from s3db_ws_plugin.recheck import RecheckOnAccessChange
from s3db_ws_plugin.startup import report_startup_errors

__all__ = [
    "DEV_SECRET",
    "Options",
    "RecheckOnAccessChange",  # lives in s3db_ws_plugin.recheck; importable from here too
    "dev_login_route",
    "every",
    "find_record",
    "make_token",
    "parse_options",
    "print_dev_tokens",
    "run_forever",
    "start_app",
    "token_hint",
]

DEV_SECRET = "s3db-examples-dev-secret-change-me"
log = structlog.get_logger("s3db.examples")


@dataclass
class Options:
    port: int
    host: str
    db: str
    jwt_secret: str
    # Development mode: the passwordless /dev/login is mounted. Only ``--dev`` sets it, and
    # only when the operator set no JWT_SECRET.
    dev: bool = False
    broker: str = "local"  # the Database's broker URL (--broker)
    trusted_proxies: str | None = None  # reverse proxies whose X-Forwarded-For is believed


def parse_options(name: str, argv: list[str] | None = None, *, default_db: str = "memory://", port: int = 3001) -> Options:
    parser = argparse.ArgumentParser(
        prog=f"python -m examples.{name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=port, help=f"port to listen on (default {port})")
    parser.add_argument(
        "--broker",
        default="local",
        help="change stream shared by server and writer processes: redis://HOST:6379/0 or "
        "nats://HOST:4222 (default: local, this process only)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--db", default=default_db, help=f"connection string (default {default_db})")
    parser.add_argument(
        "--trusted-proxies",
        metavar="ADDRESSES",
        help="reverse proxies (e.g. 127.0.0.1,10.0.0.0/8) whose X-Forwarded-For gives the "
        "client's address for the per-address limits and logs",
    )
    parser.add_argument(
        "--dev",
        action="store_true",
        help="DEVELOPMENT ONLY: development secret and passwordless /dev/login (refused with JWT_SECRET)",
    )
    add_logging_options(parser)
    args = parser.parse_args(argv)
    secret = os.environ.get("JWT_SECRET")
    if args.dev and secret:
        parser.error(
            "--dev mounts a passwordless login and is refused when JWT_SECRET is set: "
            "unset JWT_SECRET to try the example locally, or drop --dev"
        )
    if not args.dev and not secret:
        parser.error("JWT_SECRET is not set: set it to the secret your tokens are signed with, or pass --dev to try the example locally")
    if args.dev:
        print(f"--dev: using the development secret {DEV_SECRET!r} and the passwordless /dev/login", file=sys.stderr)
        secret = DEV_SECRET
    assert secret
    configure_logging(args.log_format, args.log_level)
    report_startup_errors(debug=args.debug, port_option="--port")
    return Options(port=args.port, host=args.host, db=args.db, jwt_secret=secret, dev=args.dev, broker=args.broker, trusted_proxies=args.trusted_proxies)


def make_token(secret: str, sub: str, *, ttl: float = 3600, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "iat": now, "exp": now + int(ttl), **claims}, secret, algorithm="HS256")


def dev_login_route(
    secret: str,
    *,
    path: str = "/dev/login",
    allowed_roles: tuple[str, ...] = ("user",),
    claims: dict[str, tuple[str, ...]] | None = None,
) -> web.RouteDef:
    """DEVELOPMENT ONLY: trades a name (and a role from ``allowed_roles``) for a JWT, no password.

    ``claims`` names more claims the caller picks, each from a fixed list of values
    (``{"tenantId": ("acme", "globex")}``).

    It exists so the example pages can be tried in a browser; apps mount it only when
    ``Options.dev`` is set (``--dev``, which is refused when ``JWT_SECRET`` is set).
    """

    choices = claims or {}

    async def login(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        name = str(body.get("name") or request.query.get("name") or "").strip()[:40]
        role = str(body.get("role") or request.query.get("role") or allowed_roles[0])
        if not name or role not in allowed_roles:
            return web.json_response({"error": f"name required; role one of {list(allowed_roles)}"}, status=400)
        chosen = {claim: str(body.get(claim) or values[0]) for claim, values in choices.items()}
        for claim, value in chosen.items():
            if value not in choices[claim]:
                return web.json_response({"error": f"{claim} one of {list(choices[claim])}"}, status=400)
        token = make_token(secret, name, name=name, role=role, **chosen)
        return web.json_response({"token": token, "user": {"id": name, "name": name, "role": role, **chosen}})

    return web.post(path, login)


async def start_app(
    options: Options,
    define: Callable[[Database], Awaitable[Any]],
    make_plugin: Callable[[Database], Awaitable[WebSocketPlugin]],
    *,
    before: Callable[[Database], Iterable[object]] = lambda db: (),
    after: Callable[[Database, WebSocketPlugin], Iterable[object]] = lambda db, plugin: (),
) -> tuple[Database, WebSocketPlugin]:
    """Connect ``options.db``, ``define`` its resources, register the ``before`` plugins, the
    WebSocket plugin ``make_plugin`` builds (serving from here on) and the ``after`` plugins.
    If any step fails the database is disconnected again and the error raised."""
    if threading.current_thread() is threading.main_thread():  # not when a test serves it
        _stop_event()  # Ctrl-C/SIGTERM stop cleanly from the moment the example says it runs
    db = Database(options.db, broker=options.broker)
    await db.connect()
    try:
        await define(db)
        for extra in before(db):
            await db.use_plugin(extra)
        plugin = await make_plugin(db)
        if options.trusted_proxies:
            plugin.trusted_proxies = options.trusted_proxies
        await db.use_plugin(plugin)
        for extra in after(db, plugin):
            await db.use_plugin(extra)
    except BaseException:
        await db.disconnect()
        raise
    return db, plugin


_STOP_EVENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Event] = (
    weakref.WeakKeyDictionary()
)


def _stop_event() -> asyncio.Event:
    """The running loop's stop event, set by SIGINT/SIGTERM; the handlers are installed on the
    first call (in ``start_app``, before the example prints that it is running: a signal sent
    right after that line once killed an example before ``run_forever`` installed them)."""
    loop = asyncio.get_running_loop()
    stop = _STOP_EVENTS.get(loop)
    if stop is None:
        stop = _STOP_EVENTS[loop] = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def run_forever(db: Database, background: list[Callable[[], Awaitable[None]]] = ()) -> None:
    """Connect ``db``, run the background jobs, and stop cleanly on Ctrl-C or SIGTERM."""
    stop = _stop_event()
    await db.connect()
    tasks = [asyncio.create_task(job()) for job in background]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.disconnect()


def every(seconds: float, job: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    """A background job that runs ``job`` every ``seconds`` (errors are logged, not fatal)."""

    async def loop() -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception:  # a failing tick must not stop the app
                log.exception("background job failed", job=getattr(job, "__name__", repr(job)))

    return loop


async def find_record(resource: Resource, id: Any) -> dict[str, Any] | None:
    """The record ``id`` of ``resource``, or None when it is missing or ``id`` is not an id.

    Guards use it on ids that come from clients (``filter["documentId"]``, ``data["projectId"]``):
    a filter like ``{"$in": [...]}`` or a malformed id is "no such record", never an error.
    """
    if not isinstance(id, str) or not id:
        return None
    try:
        return await resource.get_or_none(id)
    except ValidationError:
        return None


def token_hint(what: str = "JWT") -> str:
    """Where a client puts its ``what`` (what the examples print beside their socket's URL).

    Browsers send it in the socket's first frame, ``{"type": "auth", "token": ...}`` (they
    cannot set headers on a WebSocket, and a URL ends up in logs and history); services send an
    ``Authorization: Bearer`` header. ``?token=`` in the URL works too, as a last resort.
    """
    return f"{what} in an auth frame from browsers, an Authorization: Bearer header from services"


def print_dev_tokens(options: Options, url: str, users: dict[str, dict[str, Any]]) -> None:
    """DEVELOPMENT ONLY: print a token per demo user (``{sub: claims}``) and how to send one.

    Prints nothing unless the app runs with ``--dev`` (and so the development secret): a real
    ``JWT_SECRET`` never signs tokens into a terminal.
    """
    if not options.dev or options.jwt_secret != DEV_SECRET:
        return
    print("Development tokens (signed with the development secret):", flush=True)
    for sub, claims in users.items():
        print(f"  {sub}: {make_token(options.jwt_secret, sub, **claims)}", flush=True)
    print(
        f"Send a token in the socket's first frame, {{\"type\": \"auth\", \"token\": TOKEN}}, or as an "
        f"Authorization: Bearer header (in Python: Client({url!r}, token=TOKEN))",
        flush=True,
    )
