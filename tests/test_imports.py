"""Importing the client or the pytest plugin loads none of the server (checked in a fresh
interpreter): every pytest session in an environment with s3db installed loads the pytest
plugin, and a client process has no use for aiohttp's web server, prometheus_client or the
handlers. The package's public names stay importable, loaded on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a client needs from the package: the wire protocol's codes and the measured uses of
# aiohttp's client internals. Every other module of s3db_ws_plugin is the server.
CLIENT_SIDE = {
    "s3db_ws_plugin",
    "s3db_ws_plugin.client",
    "s3db_ws_plugin.client.channel",
    "s3db_ws_plugin.client.client",
    "s3db_ws_plugin.client.errors",
    "s3db_ws_plugin.client.subscription",
    "s3db_ws_plugin.internals",
    "s3db_ws_plugin.protocol",
    "s3db_ws_plugin.pytest_plugin",
}
FORBIDDEN_DEPENDENCIES = ("aiohttp.web", "prometheus_client")


def loaded_after(code: str) -> list[str]:
    """The modules a fresh interpreter holds after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_client_and_the_pytest_plugin_load_no_server_module():
    modules = loaded_after("import s3db_ws_plugin.client, s3db_ws_plugin.pytest_plugin")
    server = [m for m in modules if m.startswith("s3db_ws_plugin") and m not in CLIENT_SIDE]
    assert server == [], f"importing the client or the pytest plugin loaded the server: {server}"
    heavy = [m for m in modules if m.startswith(FORBIDDEN_DEPENDENCIES)]
    assert heavy == [], f"importing the client or the pytest plugin loaded {heavy}"


def test_the_package_public_names_are_still_importable():
    modules = loaded_after(
        "from s3db_ws_plugin import CloseCode, ErrorCode, RecheckOnAccessChange, WebSocketPlugin\n"
        "import s3db_ws_plugin\n"
        "assert WebSocketPlugin.__module__ == 's3db_ws_plugin.plugin'\n"
        "assert s3db_ws_plugin.CloseCode is CloseCode and ErrorCode.__name__ == 'ErrorCode'\n"
        "assert RecheckOnAccessChange.__module__ == 's3db_ws_plugin.recheck'\n"
        "assert set(s3db_ws_plugin.__all__) <= set(dir(s3db_ws_plugin))\n"
        "try:\n"
        "    s3db_ws_plugin.NoSuchName\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('an unknown name must raise AttributeError')"
    )
    assert "s3db_ws_plugin.plugin" in modules  # loaded on use
