"""The library prints nothing until the application configures logging (then it logs there)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    """
    import asyncio
    {setup}
    from s3db_core import Database
    from s3db_ws_plugin import WebSocketPlugin
    from s3db_ws_plugin.client import Client

    async def main():
        db = Database("memory://quiet")
        ws = WebSocketPlugin(port=0, resources={{"notes": True}})
        await db.use_plugin(ws)
        await db.connect()
        await db.create_resource("notes", {{"title": "string"}})
        async with Client(ws.url) as client:
            async with client.subscribe("notes") as sub:
                await client.insert("notes", {{"title": "hi"}})
                await sub.next(timeout=5)
        await db.disconnect()

    asyncio.run(main())
    """
)


def run(setup: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", APP.format(setup=setup)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_database_plugin_and_client_print_nothing_by_default() -> None:
    done = run()
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_logs_appear_once_the_app_configures_stdlib_logging() -> None:
    done = run("import logging; logging.basicConfig(level=logging.DEBUG)")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "s3db.core" in done.stderr and "connected store='memory://quiet'" in done.stderr
    assert "s3db.client" in done.stderr


def test_logs_follow_the_apps_structlog_configuration() -> None:
    setup = (
        "import structlog, sys; structlog.configure("
        "processors=[structlog.processors.JSONRenderer()],"
        "logger_factory=structlog.PrintLoggerFactory(sys.stderr))"
    )
    done = run(setup)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert '"event": "listening"' in done.stderr


def test_bound_values_reach_stdlib_logging(caplog, monkeypatch) -> None:
    import logging

    from s3db_core import log as s3db_log
    from s3db_core.log import get_logger

    # As in a program that configured no structlog (other tests of this process may have).
    monkeypatch.setattr(s3db_log, "_is_configured", lambda: False)

    log = get_logger("s3db.test").bind(resource="notes")
    with caplog.at_level(logging.INFO, logger="s3db"):
        log.info("hello", count=2)
        log.debug("hidden")
    assert [r.getMessage() for r in caplog.records] == ["hello resource='notes' count=2"]


def test_library_modules_log_through_the_quiet_logger() -> None:
    """structlog.get_logger in a library module would print when the app configured nothing."""
    allowed = {"cli.py", "startup.py"}  # the command line configures logging before it logs
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("s3db_core", "s3db_ws_plugin", "s3db_auth_drivers")
        for path in (ROOT / package).rglob("*.py")
        if path.name not in allowed and "structlog.get_logger(" in path.read_text()
        and path.name != "log.py"
    ]
    assert not offenders, f"use s3db_core.log.get_logger in {offenders}"


def test_the_readme_first_snippet_prints_nothing(tmp_path) -> None:
    from test_docs import blocks_of

    first = next(b for b in blocks_of(ROOT / "README.md") if b.kind == "program")
    assert "Database(" in first.code
    done = subprocess.run(
        [sys.executable, "-c", first.code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
