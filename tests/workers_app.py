"""The scale-out test app, slow to start: ``S3DB_APP_START_DELAY`` seconds pass before it
connects and listens (an app whose start-up waits on a slow store or broker).

    s3db serve workers_app:make --workers N        # cwd: tests/
"""

from __future__ import annotations

import asyncio
import os

from scaleout_app import make as make_app

from s3db_core import Database


async def make() -> Database:
    await asyncio.sleep(float(os.environ.get("S3DB_APP_START_DELAY", "0")))
    return await make_app()
