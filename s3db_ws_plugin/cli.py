"""The ``s3db`` command line.

    s3db serve myapp:make_db [--log-format json|console] [--trusted-proxies 127.0.0.1]
    s3db tail ws://127.0.0.1:3001/ --resource notes [--filter '{"roomId": "r1"}'] [--token T]
    s3db tail ws://127.0.0.1:3001/ --channel room:lobby [--info '{"name": "tail"}'] [--token T]
    s3db repair STORE_URL [--grace SECONDS] [--dry-run] [--progress-every KEYS]
    s3db watch STORE_URL --broker BROKER_URL --feed FEED_URL [--state PATH] [--grace SECONDS]

``serve`` imports ``MODULE:ATTR`` (a Database, or a function or coroutine function returning
one, with its plugins registered), connects it if needed, and runs until SIGINT or SIGTERM,
then disconnects it (the WebSocket plugin closes every socket with 1001). ``tail`` subscribes
with the Python client and prints every event as one JSON line on stdout (with ``--channel``
it joins channels and prints their messages and presence events). Logs go to stderr:
JSON when stderr is not a terminal, a console renderer when it is.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

import orjson
import structlog
import structlog.tracebacks

from s3db_core.options import number_in
from s3db_core.redact import Verbatim, redact

from .startup import StartupProblem, report

log = structlog.get_logger("s3db.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")
PORT_OPTION = "WebSocketPlugin(port=...)"


# Bounds on one log line: every string value, the traceback frames kept, the rendered line.
MAX_LOG_STRING = 1000
MAX_TRACEBACK_FRAMES = 12
MAX_LOG_LINE = 8192


def _scrub(value: Any) -> Any:
    """``value`` with credentials masked and strings truncated, recursively (lists, dicts)."""
    if isinstance(value, str):
        value = redact(value)
        if len(value) > MAX_LOG_STRING:
            value = f"{value[:MAX_LOG_STRING]}... [{len(value) - MAX_LOG_STRING} more chars]"
        return value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def scrub(logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Mapping[str, Any]:
    """structlog processor: no credential (URL user-info, ``?token=``...) and no unbounded string
    in any value, the exception's text and traceback included (it runs after they are built).
    A plain-text traceback keeps its end, where the exception raised is named."""
    text = event_dict.get("exception")
    if isinstance(text, str):
        text = redact(text)
        budget = MAX_LOG_LINE - MAX_LOG_STRING
        event_dict["exception"] = text if len(text) <= budget else "..." + text[-budget:]
    return {
        key: value if key == "exception" and isinstance(value, str) else _scrub(value)
        for key, value in event_dict.items()
    }


def _bounded(render: Any) -> Any:
    """Wrap a renderer so a line never exceeds ``MAX_LOG_LINE`` characters: an oversized line
    is rendered again with its exception reduced to its last frames' summary, then cut."""

    def renderer(logger: Any, method: str, event_dict: dict[str, Any]) -> Any:
        line = render(logger, method, dict(event_dict))
        if len(line) <= MAX_LOG_LINE:
            return line
        slim = {
            k: ("..." + v[-500:] if isinstance(v, str) and k == "exception" else v)
            for k, v in event_dict.items()
        }
        if isinstance(slim.get("exception"), list):  # dict tracebacks: keep type and message
            slim["exception"] = [
                {"exc_type": e.get("exc_type"), "exc_value": e.get("exc_value")}
                for e in slim["exception"]
                if isinstance(e, dict)
            ]
        line = render(logger, method, slim)
        if len(line) <= MAX_LOG_LINE:
            return line
        return line[: MAX_LOG_LINE - 20] + " ...[truncated]"

    return renderer


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Configure structlog once for the process: JSON lines, or a console renderer on a TTY.

    Tracebacks never carry local variables; every line is scrubbed of credentials and bounded
    (``MAX_LOG_STRING`` per value, ``MAX_TRACEBACK_FRAMES`` frames, ``MAX_LOG_LINE`` per line).
    """
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda obj, **kw: orjson.dumps(obj, default=str).decode()
        )
        transformer = structlog.tracebacks.ExceptionDictTransformer(
            show_locals=False, max_frames=MAX_TRACEBACK_FRAMES
        )
        tracebacks: Any = structlog.processors.ExceptionRenderer(transformer)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        tracebacks = structlog.processors.format_exc_info  # plain text: no locals
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            tracebacks,
            scrub,
            _bounded(renderer),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")


# -- serve ------------------------------------------------------------------------------------
def load_target(target: str) -> Any:
    """Import ``MODULE:ATTR`` (ATTR may be dotted) from the current directory or sys.path."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise StartupProblem(
            f"expected the app as MODULE:ATTR, got {target!r}",
            "name the module and the Database (or the function returning it): myapp:make_db",
        )
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StartupProblem(
                f"module {module_name!r} has no attribute {attr!r}",
                "name the Database (or the function returning it) after the colon: myapp:make_db",
            )
        obj = getattr(obj, part)
    return obj


async def resolve_database(obj: Any) -> Any:
    """A Database from a Database, or a (coroutine) function returning one."""
    from s3db_core import Database, await_me_maybe

    if not isinstance(obj, Database) and callable(obj):
        obj = await await_me_maybe(obj())
    if not isinstance(obj, Database):
        raise TypeError(f"expected a Database or a factory returning one, got {type(obj).__name__}")
    return obj


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _listening(db: Any) -> list[str]:
    """The WebSocket URL of each plugin that serves ``db`` (each logs where it listens)."""
    return [p.url for p in db.pm.get_plugins() if isinstance(getattr(p, "url", None), str)]


def _trust_proxies(db: Any, proxies: str | None, header: str) -> None:
    """``--trusted-proxies``: every WebSocket plugin of ``db`` reads the client's address from
    these proxies' ``header`` (it replaces what the app configured)."""
    from .connection import TrustedProxies
    from .plugin import WebSocketPlugin

    if proxies:
        for plugin in db.pm.get_plugins():
            if isinstance(plugin, WebSocketPlugin):
                plugin.trusted_proxies = TrustedProxies(proxies, header)


async def _start_app(factory: Any, trusted_proxies: str | None, proxy_header: str) -> Any:
    db = await resolve_database(factory)
    _trust_proxies(db, trusted_proxies, proxy_header)
    if not db.connected:
        await db.connect()
    return db


async def serve(
    target: str,
    debug: bool = False,
    trusted_proxies: str | None = None,
    proxy_header: str = "X-Forwarded-For",
) -> int:
    from .workers import watch_supervisor

    stop = _stop_event()
    watch_supervisor(stop)  # a worker of `--workers N` stops when its supervisor dies
    try:
        factory = load_target(target)
    except Exception as exc:
        report(exc, debug=debug, what="cannot load the app")
        return 2
    starting = asyncio.ensure_future(_start_app(factory, trusted_proxies, proxy_header))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not starting.done():  # asked to stop while the app was still starting
        starting.cancel()
        await asyncio.wait({starting}, timeout=5.0)
        log.info("stopped before the app had started")
        return 0
    try:
        db = starting.result()
    except Exception as exc:
        report(exc, debug=debug, what="the app failed to start", port_option=PORT_OPTION)
        return 1
    listening = _listening(db)
    if not listening:
        report(
            StartupProblem(
                f"{target} has no WebSocketPlugin: nothing would listen",
                "register one in the app: await db.use_plugin(WebSocketPlugin(port=3001, "
                "resources={...}))",
            ),
            what="nothing to serve",
        )
        await db.disconnect()
        return 2
    log.debug("serving", target=target, store=db.storage.describe())
    await stop.wait()
    log.info("shutting down")
    await db.disconnect()
    log.info("stopped")
    return 0


# -- tail -------------------------------------------------------------------------------------
def _write_line(event: Any) -> None:
    line = {"resource": event.resource, "event": event.event, "data": event.data}
    line["timestamp"] = event.timestamp
    if event.offset is not None:  # the stream position: tail resumes after it by itself
        line.update(version=event.version, offset=event.offset, epoch=event.epoch)
    if event.event == "reload":
        log.warning("changes made while disconnected could not be replayed", resource=event.resource)
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


def _write_channel_line(message: Any) -> None:
    line = {"channel": message.channel, "event": message.event, "data": message.data,
            "from": message.sender, "timestamp": message.timestamp}  # fmt: skip
    sys.stdout.write(orjson.dumps(line).decode() + "\n")
    sys.stdout.flush()


async def tail(
    url: str,
    resources: Sequence[str],
    filter: dict[str, Any] | None,
    events: list[str] | None,
    token: str | None,
    api_key: str | None,
    reconnect: bool,
    wait: float = 30.0,
    channels: Sequence[str] = (),
    info: dict[str, Any] | None = None,
) -> int:
    from .client import Client, ClientError

    stop = _stop_event()
    client = Client(url, token=token, api_key=api_key, reconnect=reconnect)
    joined: list[Any] = []
    try:
        if not await _connect_within(client, wait, stop):
            await client.close()
            return 0
        subs = [await client.subscribe(r, filter=filter, events=events) for r in resources]
        for name in channels:
            joined.append(await client.join(name, info=info))
    except ClientError as exc:
        fields = {"code": exc.code, "error": exc.message}
        if exc.code == "UNAUTHORIZED" and not token and not api_key:
            fields["hint"] = Verbatim("pass --token (or set S3DB_TOKEN), or --api-key (S3DB_API_KEY)")
        log.error("cannot subscribe", url=client.safe_url, **fields)
        await client.close()
        return 1
    for sub in subs:
        log.info("subscribed", resource=sub.resource, filter=sub.effective_filter)
    for channel in joined:
        log.info("joined", channel=channel.name, members=len(channel.members))

    async def pump(source: Any, write: Callable[[Any], None]) -> None:
        try:
            async for event in source:
                write(event)
        except BrokenPipeError:  # `s3db tail ... | head`: the reader is gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            stop.set()

    pumps = [asyncio.create_task(pump(sub, _write_line)) for sub in subs]
    pumps += [asyncio.create_task(pump(channel, _write_channel_line)) for channel in joined]
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopping, *pumps], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    for task in done:
        failure = None if task is stopping else task.exception()
        if failure is not None:
            log.error("stream ended", code=getattr(failure, "code", None), error=str(failure))
            status = 1
    for task in [stopping, *pumps]:
        task.cancel()
    await asyncio.gather(stopping, *pumps, return_exceptions=True)
    await client.close()
    return status


async def _connect_within(client: Any, wait: float, stop: asyncio.Event) -> bool:
    """Connect, retrying with the client's backoff while the server is not up yet, for at
    most ``wait`` seconds (then the last ConnectionLost is raised). False when SIGINT or
    SIGTERM stopped the wait."""
    from .client import ConnectionLost

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    attempt = 0
    while True:
        try:
            await client.connect()
            return True
        except ConnectionLost as exc:
            delay = min(client.backoff.delay(attempt), deadline - loop.time())
            if delay <= 0:
                raise ConnectionLost(f"{exc.message}; gave up after {wait:g} s") from None
            if attempt == 0:
                log.info("waiting for the server", url=client.safe_url, error=exc.message)
            attempt += 1
            try:
                await asyncio.wait_for(stop.wait(), delay)
                return False
            except TimeoutError:
                pass


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def _event_list(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in ("insert", "update", "delete")]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError("a comma-separated list of insert, update, delete")
    return kinds


def _proxy_list(text: str) -> str:
    from .connection import TrustedProxies

    try:
        TrustedProxies(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _option(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` from one of the shared validators (s3db_core.options): the same rule
    and wording as the Python option, as a usage error."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _positive(text: str) -> int:
    return int(number_in("the value", text, 1, 2**63 - 1, integer=True, text=True))


def _seconds(text: str) -> float:
    from s3db_core.repair import MAX_GRACE

    return float(number_in("the value", text, 0, MAX_GRACE, text=True))


def _watch_grace(text: str) -> float:
    return float(number_in("the value", text, 0, 60, text=True))


def _worker_count(text: str) -> int:
    from .workers import MAX_WORKERS

    return int(number_in("the value", text, 1, MAX_WORKERS, integer=True, text=True))


async def repair(store: str, grace: float, dry_run: bool, progress_every: int = 10_000) -> int:
    """``s3db repair``: run ``Database.repair`` on a store and print its report (JSON) on
    stdout; its progress goes to stderr (``repair_progress``)."""
    from s3db_core import Database, S3dbError

    from .repair_progress import progress_for

    try:
        db = Database(store)
        await db.connect()
    except (S3dbError, ValueError) as exc:
        log.error("cannot open the store", error=str(exc))
        return 1
    try:
        report = await db.repair(
            grace=grace, dry_run=dry_run, progress=progress_for(sys.stderr, progress_every)
        )
    finally:
        await db.disconnect()
    sys.stdout.write(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0



def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``--log-format``, ``--log-level`` and ``--debug``, as ``s3db`` and the examples take them."""
    parser.add_argument(
        "--log-format",
        choices=("auto", "json", "console"),
        default="auto",
        help="log renderer on stderr (default: console on a terminal, JSON otherwise)",
    )
    parser.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of startup errors")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="s3db", description=__doc__.split("\n")[0])
    add_logging_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="run an app until SIGINT/SIGTERM")
    serve_cmd.add_argument(
        "target", metavar="MODULE:ATTR", help="a Database, or a (coroutine) function returning one"
    )
    serve_cmd.add_argument(
        "--workers",
        type=_option(_worker_count),
        default=1,
        help="server processes sharing the port (SO_REUSEPORT); needs a redis:// or nats:// broker",
    )
    serve_cmd.add_argument(
        "--trusted-proxies",
        type=_proxy_list,
        default=os.environ.get("S3DB_TRUSTED_PROXIES"),
        metavar="ADDRESSES",
        help="reverse proxies (comma-separated addresses or networks, e.g. 127.0.0.1,10.0.0.0/8) "
        "whose forwarding header gives the client's address (default: $S3DB_TRUSTED_PROXIES)",
    )
    serve_cmd.add_argument(
        "--proxy-header",
        choices=("X-Forwarded-For", "Forwarded"),
        default=os.environ.get("S3DB_PROXY_HEADER", "X-Forwarded-For"),
        help="the header those proxies set (default X-Forwarded-For)",
    )

    tail_cmd = commands.add_parser("tail", help="print live events as JSON lines")
    tail_cmd.add_argument("url", help="the server's ws:// or wss:// address")
    tail_cmd.add_argument(
        "--resource",
        "-r",
        action="append",
        default=[],
        help="resource to subscribe to (repeatable)",
    )
    tail_cmd.add_argument(
        "--channel",
        "-c",
        action="append",
        default=[],
        help="channel to join (repeatable): prints its messages and presence events",
    )
    tail_cmd.add_argument(
        "--info", type=_json_object, help="presence info to join the channels with (JSON)"
    )
    tail_cmd.add_argument("--filter", "-f", type=_json_object, help="subscription filter (JSON)")
    tail_cmd.add_argument("--events", "-e", type=_event_list, help="e.g. insert,update")
    tail_cmd.add_argument(
        "--token",
        "-t",
        default=os.environ.get("S3DB_TOKEN"),
        help="bearer token (default: $S3DB_TOKEN, which keeps it out of ps)",
    )
    tail_cmd.add_argument(
        "--api-key", default=os.environ.get("S3DB_API_KEY"), help="API key (default: $S3DB_API_KEY)"
    )
    tail_cmd.add_argument("--no-reconnect", action="store_true", help="exit when the socket drops")
    tail_cmd.add_argument(
        "--wait",
        type=_option(_seconds),
        default=30.0,
        metavar="SECONDS",
        help="how long to keep trying while the server is not up yet (default 30)",
    )
    repair_cmd = commands.add_parser(
        "repair", help="find and fix damage in a store; print what was done as JSON"
    )
    repair_cmd.add_argument("store", help="the store's connection string (e.g. file://./data)")
    repair_cmd.add_argument(
        "--grace",
        type=_option(_seconds),
        default=120.0,
        help="leave what is younger (seconds; default 120)",
    )
    repair_cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    repair_cmd.add_argument(
        "--progress-every",
        type=_option(_positive),
        default=10_000,
        metavar="KEYS",
        help="when stderr is not a terminal, a progress line every KEYS keys (or 10 s); "
        "default 10000",
    )
    watch_cmd = commands.add_parser(
        "watch", help="publish the writes other programs make in the store (its event feed)"
    )
    watch_cmd.add_argument("store", help="the store's connection string (s3://... or http(s)://...)")
    watch_cmd.add_argument(
        "--broker", required=True, help="the servers' shared broker (redis://... or nats://...)"
    )
    watch_cmd.add_argument(
        "--feed", required=True, help="the store's event feed (seaweedfs://HOST:FILER_PORT or sqs://HOST/ACCOUNT/QUEUE)"
    )
    watch_cmd.add_argument(
        "--state",
        default="s3db-watch.json",
        metavar="PATH",
        help="file that keeps the feed position across restarts (default ./s3db-watch.json)",
    )
    watch_cmd.add_argument(
        "--grace",
        type=_option(_watch_grace),
        default=0.5,
        metavar="SECONDS",
        help="how long a feed event waits for the stream to carry the same write (default 0.5)",
    )
    for sub in (serve_cmd, tail_cmd, repair_cmd, watch_cmd):  # also accepted after the command
        sub.add_argument(
            "--log-format", choices=("auto", "json", "console"), default=argparse.SUPPRESS
        )
        sub.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    if args.command == "serve" and args.workers > 1:
        from .workers import run_workers

        options = ["--log-format", args.log_format, "--log-level", args.log_level]
        if args.debug:
            options.append("--debug")
        if args.trusted_proxies:  # the workers read them from their environment
            os.environ["S3DB_TRUSTED_PROXIES"] = args.trusted_proxies
            os.environ["S3DB_PROXY_HEADER"] = args.proxy_header
        coro = run_workers(args.target, args.workers, options)
    elif args.command == "serve":
        coro = serve(args.target, args.debug, args.trusted_proxies, args.proxy_header)
    elif args.command == "watch":
        from .watch import watch

        coro = watch(args.store, args.broker, args.feed, args.state, args.grace)
    elif args.command == "repair":
        coro = repair(args.store, args.grace, args.dry_run, args.progress_every)
    else:
        if not args.resource and not args.channel:
            parser.error("tail: give at least one --resource or --channel")
        coro = tail(
            args.url,
            args.resource,
            args.filter,
            args.events,
            args.token,
            args.api_key,
            reconnect=not args.no_reconnect,
            wait=args.wait,
            channels=args.channel,
            info=args.info,
        )
    return asyncio.run(coro)


if __name__ == "__main__":
    sys.exit(main())
