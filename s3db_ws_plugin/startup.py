"""Startup failures as one or two lines that say what is wrong and how to fix it.

``s3db serve`` and the examples turn the errors a misconfigured app raises at startup (a port in
use, an unreachable S3 endpoint, an unknown connection-string scheme, an app path that does not
import) into a short message and a hint instead of a traceback; ``--debug`` shows the traceback.
Credentials in URLs are redacted from every message.
"""

from __future__ import annotations

import errno
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any

import structlog

from s3db_core.errors import StorageError, UnsupportedStoreError
from s3db_core.redact import Verbatim, redact

_BIND_ADDRESS = re.compile(r"\('([^']*)', (\d+)\)")


class StartupProblem(ValueError):
    """A configuration problem found at startup, already worded for the user, with a hint."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class StartupError:
    """What went wrong (``message``) and what to do about it (``hint``, may be empty)."""

    message: str
    hint: str = ""


def explain(exc: BaseException, *, port_option: str = "port=") -> StartupError:
    """A short, secret-free explanation of ``exc`` raised while starting an app.

    ``port_option`` is how the user chooses a port where the failure happened (``--port`` for
    the examples, ``WebSocketPlugin(port=...)`` for ``s3db serve``).
    """
    if isinstance(exc, StartupProblem):
        return StartupError(str(exc), exc.hint)
    if isinstance(exc, OSError) and exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        found = _BIND_ADDRESS.search(str(exc))
        where = f"{found.group(1)}:{found.group(2)}" if found else "the configured address"
        if exc.errno == errno.EADDRINUSE:
            return StartupError(
                f"cannot listen on {where}: the port is already in use",
                f"stop the program using it, or choose another port with {port_option} "
                "(0 picks a free one)",
            )
        if exc.errno == errno.EACCES:
            return StartupError(
                f"cannot listen on {where}: permission denied",
                f"ports below 1024 need privileges; choose a port above 1024 with {port_option}",
            )
        return StartupError(
            f"cannot listen on {where}: this machine has no such address",
            "bind 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
        )
    if isinstance(exc, UnsupportedStoreError):
        return StartupError(
            str(exc),
            "point the connection string at an empty bucket or another prefix; nothing in this "
            "store was changed",
        )
    if isinstance(exc, StorageError):
        return StartupError(
            f"cannot reach the store: {exc}",
            "check the connection string (scheme, host, port, bucket, credentials) and that the "
            "S3 server is running",
        )
    if isinstance(exc, ModuleNotFoundError):
        return StartupError(
            f"cannot import the app: {exc}",
            "run from the directory that holds the module, or install it; the target is "
            "MODULE:ATTR, e.g. myapp:make_db",
        )
    if isinstance(exc, ValueError) and "storage scheme" in str(exc):
        return StartupError(
            str(exc),
            "use memory://name, file://./dir, s3://KEY:SECRET@bucket/prefix or "
            "http(s)://KEY:SECRET@host:port/bucket/prefix",
        )
    if isinstance(exc, ValueError | TypeError):
        return StartupError(f"invalid configuration: {exc}", "")
    return StartupError(f"{type(exc).__name__}: {exc}", "")


def report(
    exc: BaseException, *, debug: bool = False, what: str = "cannot start", port_option: str = "port="
) -> None:
    """Log ``exc`` as one short error line (with the traceback only when ``debug``).

    Goes through structlog, so it is one JSON line with ``--log-format json``. When structlog
    is not configured (an app that did not set up logging), it writes plain lines to stderr.
    """
    error = explain(exc, port_option=port_option)
    message = redact(error.message)
    hint = error.hint or ("run with --debug to see the traceback" if not debug else "")
    if not structlog.is_configured():
        sys.stderr.write(f"error: {message}\n" + (f"hint: {hint}\n" if hint else ""))
        if debug:
            traceback.print_exception(exc)
        return
    fields: dict[str, Any] = {"error": message}
    if hint:  # written here, never from user input: its placeholders are not redacted
        fields["hint"] = Verbatim(hint)
    if debug:
        fields["exc_info"] = exc
    structlog.get_logger("s3db.cli").error(what, **fields)


def report_startup_errors(*, debug: bool = False, port_option: str = "--port") -> None:
    """Make an uncaught exception end the program with ``report``'s short lines and status 1
    instead of a traceback (for ``python -m examples.X``; ``--debug`` keeps tracebacks)."""
    previous = sys.excepthook

    def hook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if debug or not isinstance(exc, Exception):
            previous(kind, exc, tb)
            return
        report(exc.with_traceback(tb), port_option=port_option)

    sys.excepthook = hook
