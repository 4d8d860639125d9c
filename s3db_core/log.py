"""Library logging that stays silent until the application configures logging.

structlog prints to stdout when nobody configured it, which a library must never do. Every s3db
module logs through ``get_logger(name)`` instead of ``structlog.get_logger(name)``:

* once the application configures structlog (``structlog.configure``, as ``s3db serve`` and the
  examples do), s3db's events go through that configuration like the application's own;
* until then they go to the standard library logger of the same name (``s3db.ws``,
  ``s3db.client``...), under the ``s3db`` logger, which has a ``NullHandler``: nothing is printed
  unless the application configures ``logging`` (``logging.basicConfig(level="INFO")`` shows
  them as ``event key=value`` lines).

A call below the stdlib logger's level costs one ``isEnabledFor`` check.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

logging.getLogger("s3db").addHandler(logging.NullHandler())

_is_configured = structlog.is_configured


class LibraryLogger:
    """A structlog-style logger (``log.info("event", key=value)``) for library code."""

    __slots__ = ("name", "_structlog", "_std", "_bound")

    def __init__(self, name: str, bound: dict[str, Any] | None = None) -> None:
        self.name = name
        # Lazy: resolved against the app's configuration at each call until it caches.
        self._structlog = structlog.get_logger(name, **(bound or {}))
        self._std = logging.getLogger(name)
        self._bound = bound or {}

    def bind(self, **values: Any) -> LibraryLogger:
        """A logger that adds ``values`` to every event (as structlog's ``bind``)."""
        return LibraryLogger(self.name, {**self._bound, **values})

    def _log(self, level: int, method: str, event: str, kw: dict[str, Any]) -> None:
        if _is_configured():
            getattr(self._structlog, method)(event, **kw)
            return
        std = self._std
        if not std.isEnabledFor(level):
            return
        exc_info = kw.pop("exc_info", method == "exception")
        fields = {**structlog.contextvars.get_contextvars(), **self._bound, **kw}
        text = " ".join([event, *(f"{k}={v!r}" for k, v in fields.items())])
        std.log(level, "%s", text, exc_info=exc_info)

    def debug(self, event: str, **kw: Any) -> None:
        self._log(logging.DEBUG, "debug", event, kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log(logging.INFO, "info", event, kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log(logging.WARNING, "warning", event, kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, "error", event, kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._log(logging.ERROR, "exception", event, kw)

    def critical(self, event: str, **kw: Any) -> None:
        self._log(logging.CRITICAL, "critical", event, kw)

    warn = warning
    msg = info


def get_logger(name: str) -> LibraryLogger:
    """The logger library modules use (see the module docstring)."""
    return LibraryLogger(name)
