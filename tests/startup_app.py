"""Apps for tests/test_startup_errors.py: ``s3db serve tests.startup_app:make_db`` serves the
store in ``S3DB_APP_STORE`` on ``S3DB_APP_PORT``; ``tests.startup_app:plain`` has no plugin."""

from __future__ import annotations

import os

from s3db_core import Database
from s3db_ws_plugin import WebSocketPlugin


async def make_db() -> Database:
    db = Database(os.environ.get("S3DB_APP_STORE", "memory://startup-app"))
    await db.use_plugin(WebSocketPlugin(port=int(os.environ.get("S3DB_APP_PORT", "0"))))
    return db


plain = Database("memory://startup-plain")
