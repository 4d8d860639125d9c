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
