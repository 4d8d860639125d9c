"""The scale-out test app, slow to start: ``S3DB_APP_START_DELAY`` seconds pass before it
connects and listens (an app whose start-up waits on a slow store or broker); with
``S3DB_APP_START_BLOCKS=1`` the wait blocks the event loop (an app stuck in a blocking call).

    s3db serve workers_app:make --workers N        # cwd: tests/
"""

from __future__ import annotations

import asyncio
import os
import time

from scaleout_app import make as make_app

from s3db_core import Database


async def make() -> Database:
    delay = float(os.environ.get("S3DB_APP_START_DELAY", "0"))
    if os.environ.get("S3DB_APP_START_BLOCKS") == "1":
        time.sleep(delay)  # noqa: ASYNC251 - the point: nothing else runs meanwhile
    else:
        await asyncio.sleep(delay)
    return await make_app()
