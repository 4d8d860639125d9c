"""A tiny app for tests/test_cli.py: ``s3db serve tests.cli_app:make_db``.

The port comes from ``S3DB_APP_PORT`` (0: a free one, logged as ``listening``),
the store from ``S3DB_APP_STORE`` and the JWT secret from ``S3DB_APP_SECRET``.
"""

from __future__ import annotations

import os

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin


async def make_db() -> Database:
    store_url = os.environ.get("S3DB_APP_STORE", "memory://cli-app")  # a local, as apps keep it
    db = Database(store_url)
    await db.connect()
    await db.create_resource("notes", {"title": "string|required", "roomId": "string|optional"})
    secret = os.environ["S3DB_APP_SECRET"]
    await db.use_plugin(
        WebSocketPlugin(
            port=int(os.environ.get("S3DB_APP_PORT", "3001")),
            auth={"required": True, "drivers": [{"driver": "jwt", "config": {"secret": secret}}]},
            resources={"notes": True},
            channels={"room:*": {"presence": True}},  # for `s3db tail --channel`
        )
    )
    return db
